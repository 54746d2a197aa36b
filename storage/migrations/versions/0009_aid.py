"""aid: categories with their source and date (screening), aid stock and its ledger

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("student_categories", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=50), nullable=False, server_default="roster")
        )
        batch_op.add_column(sa.Column("since", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "aid_stock",
        sa.Column("school_id", sa.Integer(), nullable=False),
        sa.Column("item", sa.String(length=50), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("quantity >= 0", name="ck_aid_stock_quantity"),
        sa.PrimaryKeyConstraint("school_id", "item", name=op.f("pk_aid_stock")),
    )
    op.create_table(
        "aid_ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.Integer(), nullable=False),
        sa.Column("item", sa.String(length=50), nullable=False),
        sa.Column("change", sa.Integer(), nullable=False),
        sa.Column("balance", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aid_ledger")),
    )
    op.create_index("ix_aid_ledger_school_at", "aid_ledger", ["school_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_aid_ledger_school_at", table_name="aid_ledger")
    op.drop_table("aid_ledger")
    op.drop_table("aid_stock")
    with op.batch_alter_table("student_categories", schema=None) as batch_op:
        batch_op.drop_column("since")
        batch_op.drop_column("source")
