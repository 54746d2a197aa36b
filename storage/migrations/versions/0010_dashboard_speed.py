"""dashboard speed: the students' aid categories on their row, kept by triggers

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.schema import BACKFILL_CATEGORIES, CATEGORY_TRIGGERS

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OLD_STATUS = ["school_id", "active", "class_name", "last_reached_at", "last_unreached_at"]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("students", schema=None) as batch_op:
        batch_op.add_column(sa.Column("categories", sa.Text(), server_default="", nullable=False))
    op.drop_index("ix_students_status", table_name="students")
    op.create_index("ix_students_status", "students", [*_OLD_STATUS, "categories"], unique=False)
    op.create_index(
        "ix_students_inactive",
        "students",
        ["id"],
        unique=False,
        sqlite_where=sa.text("active = 0"),
        postgresql_where=sa.text("active = false"),
    )
    op.execute(BACKFILL_CATEGORIES[dialect])
    for statement in CATEGORY_TRIGGERS[dialect]:
        op.execute(statement)
    op.create_table(
        "signin_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signin_attempts")),
    )
    op.create_index(
        "ix_signin_attempts_address_at", "signin_attempts", ["address", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_signin_attempts_address_at", table_name="signin_attempts")
    op.drop_table("signin_attempts")
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS student_categories_{name}")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS student_categories_{name} ON student_categories")
        op.execute("DROP FUNCTION IF EXISTS student_categories_refresh()")
    op.drop_index("ix_students_inactive", table_name="students")
    op.drop_index("ix_students_status", table_name="students")
    op.create_index("ix_students_status", "students", _OLD_STATUS, unique=False)
    # (SQLite 3.35+ drops a column in place: a rebuilt table would break the visit triggers)
    with op.batch_alter_table("students", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("categories")
