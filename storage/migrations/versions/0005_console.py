"""coordinator console: sign-in tokens, sessions, upload stash, audit entries by school

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.schema import BACKFILL_LAST_VISITS, POSTGRESQL_TRIGGERS, SQLITE_TRIGGERS

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("students", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_reached_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("last_unreached_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_index(
        "ix_students_status",
        "students",
        ["school_id", "active", "class_name", "last_reached_at", "last_unreached_at"],
        unique=False,
    )
    op.create_index(
        "ix_student_categories_category",
        "student_categories",
        ["category", "student_id"],
        unique=False,
    )
    op.create_index("ix_followups_due", "followups", ["due_date", "id"], unique=False)
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.execute(
        BACKFILL_LAST_VISITS.format(yes=1 if sqlite else "true", no=0 if sqlite else "false")
    )
    for statement in SQLITE_TRIGGERS if sqlite else POSTGRESQL_TRIGGERS:
        op.execute(statement)
    op.create_table(
        "console_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_console_tokens_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_console_tokens")),
    )
    op.create_index(
        op.f("ix_console_tokens_staff_id"), "console_tokens", ["staff_id"], unique=False
    )
    op.create_table(
        "console_sessions",
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("school_id", sa.Integer(), nullable=True),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_console_sessions_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_hash", name=op.f("pk_console_sessions")),
    )
    op.create_index(
        op.f("ix_console_sessions_staff_id"), "console_sessions", ["staff_id"], unique=False
    )
    op.create_table(
        "console_uploads",
        sa.Column("upload_hash", sa.String(length=64), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("upload_hash", name=op.f("pk_console_uploads")),
    )
    op.create_index(
        op.f("ix_console_uploads_session_hash"), "console_uploads", ["session_hash"], unique=False
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("school_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_audit_log_school_at", ["school_id", "at"], unique=False)


def downgrade() -> None:
    for name in ("visits_last_insert", "visits_last_update", "visits_last_delete"):
        op.execute(
            f"DROP TRIGGER IF EXISTS {name}"
            + ("" if op.get_bind().dialect.name == "sqlite" else " ON visits")
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS visits_last_refresh()")
    op.drop_index("ix_followups_due", table_name="followups")
    op.drop_index("ix_student_categories_category", table_name="student_categories")
    op.drop_index("ix_students_status", table_name="students")
    with op.batch_alter_table("students", schema=None) as batch_op:
        batch_op.drop_column("last_unreached_at")
        batch_op.drop_column("last_reached_at")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_school_at")
        batch_op.drop_column("school_id")
    op.drop_index(op.f("ix_console_uploads_session_hash"), table_name="console_uploads")
    op.drop_table("console_uploads")
    op.drop_index(op.f("ix_console_sessions_staff_id"), table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_index(op.f("ix_console_tokens_staff_id"), table_name="console_tokens")
    op.drop_table("console_tokens")
