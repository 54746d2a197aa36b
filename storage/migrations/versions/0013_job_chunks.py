"""job chunks: a scheduled job's run split into chunks of schools, claimed with leases; staff by school

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_chunks",
        sa.Column("job", sa.String(length=30), nullable=False),
        sa.Column("run_date", sa.Date(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("first_school", sa.Integer(), nullable=True),
        sa.Column("last_school", sa.Integer(), nullable=True),
        sa.Column("schools", sa.Integer(), nullable=False),
        sa.Column("students", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("planned", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("unreachable", sa.Integer(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job", "run_date", "chunk", name=op.f("pk_job_chunks")),
    )
    op.create_index("ix_staff_school", "staff", ["school_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_staff_school", table_name="staff")
    op.drop_table("job_chunks")
