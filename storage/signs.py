"""DingTalk HTTP mode's used (timestamp, sign) pairs: the `bot.core.ports.OneTimeSigns` port.

The pairs are rows of `inbound_messages` (the table the dispatcher de-duplicates message ids in)
under the channel `DINGTALK_SIGNS` with an empty user id, so every instance on the database
refuses the second use. A row's id starts with the zero-padded timestamp: each check first
deletes the rows whose timestamp is past the window (a key range of the primary key), so the
table holds about as many rows as the window has callbacks.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from bot.core.channels import DINGTALK_SIGNS
from storage.db import Database
from storage.schema import inbound_messages


class SqlOneTimeSigns:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def first_use(
        self, sent_at_ms: int, sign: str, *, forget_before_ms: int, now: datetime
    ) -> bool:
        key = f"{sent_at_ms:016d}:{sign}"
        cutoff = f"{max(forget_before_ms, 0):016d}"

        def remember(conn: Connection) -> bool:
            conn.execute(
                delete(inbound_messages).where(
                    inbound_messages.c.channel == DINGTALK_SIGNS,
                    inbound_messages.c.message_id < cutoff,
                )
            )
            make_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = (
                make_insert(inbound_messages)
                .values(
                    channel=DINGTALK_SIGNS, user_id="", message_id=key, replies=[], received_at=now
                )
                .on_conflict_do_nothing(index_elements=["channel", "user_id", "message_id"])
                .returning(inbound_messages.c.message_id)
            )
            return conn.execute(stmt).first() is not None

        return await self.db.run(remember)
