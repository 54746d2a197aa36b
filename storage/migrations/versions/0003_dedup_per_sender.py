"""inbound de-duplication per sender, visit answer revisions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

`inbound_messages` is rebuilt keyed by (channel, user_id, message_id), with `replies` nullable
(bodies are pruned after the retry window). The old rows carry no sender, so they are dropped:
a platform retry arriving in the seconds around the upgrade may be handled once more, which is
what any restart risks anyway.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _inbound(replies_nullable: bool, with_user: bool) -> None:
    columns: list[sa.Column[Any]] = [sa.Column("channel", sa.String(length=20), nullable=False)]
    if with_user:
        columns.append(sa.Column("user_id", sa.String(length=128), nullable=False))
    columns += [
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("replies", sa.JSON(), nullable=replies_nullable),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    ]
    key = ("channel", "user_id", "message_id") if with_user else ("channel", "message_id")
    op.create_table(
        "inbound_messages",
        *columns,
        sa.PrimaryKeyConstraint(*key, name=op.f("pk_inbound_messages")),
    )
    op.create_index(
        op.f("ix_inbound_messages_received_at"), "inbound_messages", ["received_at"], unique=False
    )


def upgrade() -> None:
    op.drop_index(op.f("ix_inbound_messages_received_at"), table_name="inbound_messages")
    op.drop_table("inbound_messages")
    _inbound(replies_nullable=True, with_user=True)
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.drop_column("revision")
    op.drop_index(op.f("ix_inbound_messages_received_at"), table_name="inbound_messages")
    op.drop_table("inbound_messages")
    _inbound(replies_nullable=False, with_user=False)
