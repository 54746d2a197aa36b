"""binding codes, wrong-code counts, identities bound by code; outbox fallback across channels

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "binding_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("code_hash"),
    )
    op.create_index("ix_binding_codes_staff_id", "binding_codes", ["staff_id"], unique=False)
    op.create_table(
        "bind_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bind_failures_subject_at", "bind_failures", ["subject", "at"], unique=False)
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bound_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fallbacks", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("channel_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("fallback_from", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("fallback_from")
        batch_op.drop_column("channel_since")
        batch_op.drop_column("fallbacks")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("bound_at")
    op.drop_index("ix_bind_failures_subject_at", table_name="bind_failures")
    op.drop_table("bind_failures")
    op.drop_index("ix_binding_codes_staff_id", table_name="binding_codes")
    op.drop_table("binding_codes")
