"""allocation: aid items given to students against their open needs, and their delivery

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aid_allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.Integer(), nullable=False),
        sa.Column("item", sa.String(length=50), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=False),
        sa.Column("active_followup_id", sa.Integer(), nullable=True),
        sa.Column("student_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("tracking", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("allocated_by", sa.String(length=64), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_by", sa.String(length=64), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["followup_id"],
            ["followups.id"],
            name=op.f("fk_aid_allocations_followup_id_followups"),
        ),
        sa.ForeignKeyConstraint(
            ["student_id"],
            ["students.id"],
            name=op.f("fk_aid_allocations_student_id_students"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aid_allocations")),
        sa.UniqueConstraint(
            "active_followup_id", name=op.f("uq_aid_allocations_active_followup_id")
        ),
    )
    op.create_index(
        op.f("ix_aid_allocations_followup_id"), "aid_allocations", ["followup_id"], unique=False
    )
    op.create_index(
        op.f("ix_aid_allocations_student_id"), "aid_allocations", ["student_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_aid_allocations_student_id"), table_name="aid_allocations")
    op.drop_index(op.f("ix_aid_allocations_followup_id"), table_name="aid_allocations")
    op.drop_table("aid_allocations")
