"""follow-up ladder: acknowledgement, climbing to the bureau, events of every step

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("followups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_by", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("climbed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reopens", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_followups_acknowledged_by_staff"), "staff", ["acknowledged_by"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_followups_reopens_followups"), "followups", ["reopens"], ["id"]
        )
        batch_op.create_index("ix_followups_status_due", ["status", "due_date"], unique=False)
    op.create_table(
        "followup_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["followup_id"],
            ["followups.id"],
            name=op.f("fk_followup_events_followup_id_followups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["staff.id"], name=op.f("fk_followup_events_staff_id_staff")
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["staff.id"], name=op.f("fk_followup_events_actor_id_staff")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_followup_events")),
    )
    op.create_index(
        "ix_followup_events_followup",
        "followup_events",
        ["followup_id", "event", "staff_id"],
        unique=False,
    )
    # Follow-ups escalated before the ladder existed: their escalation is its first step.
    op.execute(
        "INSERT INTO followup_events (followup_id, event, at) "
        "SELECT id, 'escalated', escalated_at FROM followups "
        "WHERE status = 'escalated' AND escalated_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_followup_events_followup", table_name="followup_events")
    op.drop_table("followup_events")
    with op.batch_alter_table("followups", schema=None) as batch_op:
        batch_op.drop_index("ix_followups_status_due")
        batch_op.drop_constraint("fk_followups_reopens_followups", type_="foreignkey")
        batch_op.drop_constraint("fk_followups_acknowledged_by_staff", type_="foreignkey")
        batch_op.drop_column("reopens")
        batch_op.drop_column("climbed_at")
        batch_op.drop_column("acknowledged_by")
        batch_op.drop_column("acknowledged_at")
