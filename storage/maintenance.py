"""Housekeeping: what the database keeps only as long as it serves a purpose.

`inbound_messages` remembers each platform message id with the replies it was given, so that a
retried delivery is answered the same way instead of acting twice. The replies name students and
their families' needs, and platforms stop retrying within hours (WeCom after about 15 seconds,
Feishu after 7 hours), so they are cleared after a day; the id alone stays for a month, which
still recognises a very late retry (it is then answered with a short notice, not the old text).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, null, update
from sqlalchemy.engine import Connection

from storage.schema import inbound_messages

KEEP_REPLIES = timedelta(days=1)
KEEP_MESSAGE_IDS = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Pruned:
    replies_cleared: int
    ids_deleted: int


def prune_inbound(conn: Connection, now: datetime) -> Pruned:
    cleared = conn.execute(
        update(inbound_messages)
        .where(
            inbound_messages.c.received_at < now - KEEP_REPLIES,
            inbound_messages.c.replies.is_not(None),
        )
        .values(replies=null())  # SQL NULL, not the JSON value null
    ).rowcount
    deleted = conn.execute(
        delete(inbound_messages).where(inbound_messages.c.received_at < now - KEEP_MESSAGE_IDS)
    ).rowcount
    return Pruned(cleared, deleted)
