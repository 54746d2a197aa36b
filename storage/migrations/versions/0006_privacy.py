"""privacy: the audit log's hash chain; retention marks on students and visits

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from storage.audit import rechain

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    rechain(op.get_bind())  # the entries written before the chain, chained in id order
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table("students", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=True))
    # Students already inactive: their retention period starts now (when they left is unknown).
    op.get_bind().execute(
        sa.text("UPDATE students SET deactivated_at = :now WHERE NOT active"),
        {"now": _now()},
    )


def _now() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else moment


def downgrade() -> None:
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.drop_column("redacted_at")
    with op.batch_alter_table("students", schema=None) as batch_op:
        batch_op.drop_column("deactivated_at")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
