"""The outbox: every proactive message is a row first, and is sent from there.

`SqlOutbox` is the `bot.core.ports.Outbox` port over these functions, one transaction per call (on
a DB worker thread); a scheduled job calls `enqueue_many` itself, inside its own transaction.

A row is keyed by an idempotency key (for a reminder: recipient, kind and local date), so writing
the same message twice (a job run twice, or by two instances) stores it once. Delivery claims due
rows under a lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: its single writer), so two workers
never send one row at the same time, and a worker that dies mid-send leaves the row to be retried
when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from bot.core.types import OutboxItem, OutboxMessage
from storage.db import Database, json_dumps
from storage.schema import UtcDateTime, conversations, outbox

PENDING, SENT, FAILED = "pending", "sent", "failed"


def enqueue(
    conn: Connection,
    *,
    key: str,
    channel: str,
    recipient: str,
    kind: str,
    body: str,
    not_before: datetime,
    now: datetime,
    fallbacks: Sequence[tuple[str, str]] = (),
    listing: dict[str, Any] | None = None,
) -> bool:
    """Store a message unless one with `key` exists. True when this call stored it. `listing`:
    the numbered list the message shows, the recipient's current list once it is delivered."""
    values = {
        "idempotency_key": key,
        "channel": channel,
        "recipient": recipient,
        "kind": kind,
        "body": body,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": not_before,
        "created_at": now,
        "fallbacks": [list(f) for f in fallbacks] or None,
        "channel_since": not_before,
        "listing": listing,
    }
    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - the two supported databases
        raise NotImplementedError(dialect)
    make_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        make_insert(outbox)
        .values(values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(outbox.c.id)
    )
    return conn.execute(stmt).first() is not None  # rowcount is -1 with RETURNING on psycopg


_PG_ENQUEUE = text(
    "INSERT INTO outbox (idempotency_key, channel, recipient, kind, body, listing, status,"
    " attempts, next_attempt_at, created_at, fallbacks, channel_since)"
    " SELECT k, c, r, kd, b, l::json, :pending, 0, :not_before, :now, f::json, :not_before"
    " FROM unnest(CAST(:keys AS varchar[]), CAST(:channels AS varchar[]),"
    " CAST(:recipients AS varchar[]), CAST(:kinds AS varchar[]), CAST(:bodies AS text[]),"
    " CAST(:listings AS text[]), CAST(:fallbacks AS text[])) AS t(k, c, r, kd, b, l, f)"
    " ON CONFLICT (idempotency_key) DO NOTHING"
).bindparams(bindparam("not_before", type_=UtcDateTime), bindparam("now", type_=UtcDateTime))


def enqueue_many(
    conn: Connection, messages: Sequence[OutboxMessage], *, not_before: datetime, now: datetime
) -> int:
    """Store every message whose key is new, in bulk; returns how many were new.

    Keys already present are skipped; a key written concurrently by another instance is skipped
    by the database (ON CONFLICT DO NOTHING), so the count may then be a little high, but no
    message is ever stored twice.
    """
    existing: set[str] = set()
    keys = [m.key for m in messages]
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        existing.update(
            conn.execute(
                select(outbox.c.idempotency_key).where(outbox.c.idempotency_key.in_(chunk))
            ).scalars()
        )
    fresh = [m for m in messages if m.key not in existing]
    if fresh and conn.dialect.name == "postgresql":
        # One statement for the lot, the same SQL every time: arrays unnested (a province's
        # job writes a thousand rows a chunk; as an executemany each row was a statement, as
        # a multi-row VALUES the statement was compiled and parsed anew for every batch).
        conn.execute(
            _PG_ENQUEUE,
            {
                "keys": [m.key for m in fresh],
                "channels": [m.channel for m in fresh],
                "recipients": [m.recipient for m in fresh],
                "kinds": [m.kind for m in fresh],
                "bodies": [m.body for m in fresh],
                "listings": [None if m.listing is None else json_dumps(m.listing) for m in fresh],
                "fallbacks": [
                    json_dumps([list(f) for f in m.fallbacks]) if m.fallbacks else None
                    for m in fresh
                ],
                "pending": PENDING,
                "not_before": not_before,
                "now": now,
            },
        )
    elif fresh:
        conn.execute(
            sqlite_insert(outbox).on_conflict_do_nothing(index_elements=["idempotency_key"]),
            [
                {
                    "idempotency_key": m.key,
                    "channel": m.channel,
                    "recipient": m.recipient,
                    "kind": m.kind,
                    "body": m.body,
                    "listing": m.listing,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_at": not_before,
                    "created_at": now,
                    "fallbacks": [list(f) for f in m.fallbacks] or None,
                    "channel_since": not_before,
                }
                for m in fresh
            ],
        )
    return len(fresh)


def claim(conn: Connection, now: datetime, lease: timedelta, limit: int) -> list[OutboxItem]:
    """Take up to `limit` due rows for sending; they are invisible to others for `lease`."""
    rows = conn.execute(
        select(outbox)
        .where(outbox.c.status == PENDING, outbox.c.next_attempt_at <= now)
        .order_by(outbox.c.next_attempt_at, outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return []
    conn.execute(
        update(outbox)
        .where(outbox.c.id.in_([r.id for r in rows]))
        .values(next_attempt_at=now + lease, attempts=outbox.c.attempts + 1)
    )
    return [
        OutboxItem(
            r.id,
            r.idempotency_key,
            r.channel,
            r.recipient,
            r.kind,
            r.body,
            r.attempts + 1,
            r.created_at,
            tuple((str(c), str(u)) for c, u in r.fallbacks or ()),
            r.channel_since,
        )
        for r in rows
    ]


def mark_sent(conn: Connection, item_id: int, now: datetime) -> None:
    """Record the delivery; a numbered list the message shows becomes the recipient's current
    list (their conversation on that channel), so that `1` or `完成 2` refers to it."""
    row = conn.execute(
        update(outbox)
        .where(outbox.c.id == item_id)
        .values(status=SENT, sent_at=now, last_error=None)
        .returning(outbox.c.channel, outbox.c.recipient, outbox.c.listing)
    ).first()
    if row is not None and row.listing is not None:
        show_listing(conn, row.channel, row.recipient, row.listing, now)


def show_listing(
    conn: Connection, channel: str, user_id: str, listing: dict[str, Any], now: datetime
) -> None:
    """Make `listing` the current list of that conversation (a new version of its session)."""
    where = (conversations.c.channel == channel) & (conversations.c.user_id == user_id)
    changed = conn.execute(
        update(conversations)
        .where(where)
        .values(listing=listing, version=conversations.c.version + 1, updated_at=now)
    ).rowcount
    if changed == 0:
        make_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            make_insert(conversations)
            .values(
                channel=channel,
                user_id=user_id,
                state="idle",
                data={},
                listing=listing,
                version=1,
                expires_at=None,
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=["channel", "user_id"],
                set_={"listing": listing, "version": conversations.c.version + 1},
            )
        )


def mark_retry(conn: Connection, item_id: int, error: str, next_attempt_at: datetime) -> None:
    conn.execute(
        update(outbox)
        .where(outbox.c.id == item_id)
        .values(next_attempt_at=next_attempt_at, last_error=error[:500])
    )


def mark_failed(conn: Connection, item_id: int, error: str) -> None:
    conn.execute(
        update(outbox).where(outbox.c.id == item_id).values(status=FAILED, last_error=error[:500])
    )


def reroute(
    conn: Connection,
    item_id: int,
    channel: str,
    recipient: str,
    fallbacks: Sequence[tuple[str, str]],
    error: str,
    now: datetime,
) -> None:
    """Move a row to the next channel (the same row, so it can never go out on both): due now,
    attempts from zero, the first channel kept in `fallback_from`."""
    conn.execute(
        update(outbox)
        .where(outbox.c.id == item_id)
        .values(
            fallback_from=func.coalesce(outbox.c.fallback_from, outbox.c.channel),
            channel=channel,
            recipient=recipient,
            fallbacks=[list(f) for f in fallbacks] or None,
            channel_since=now,
            next_attempt_at=now,
            attempts=0,
            last_error=error[:500],
        )
    )


def ids_of(conn: Connection, keys: Sequence[str]) -> list[int]:
    """The ids of the rows with these keys."""
    return list(
        conn.execute(select(outbox.c.id).where(outbox.c.idempotency_key.in_(keys))).scalars()
    )


class SqlOutbox:
    """The `Outbox` port on the database: each call one transaction on a DB worker thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(
        self, messages: Sequence[OutboxMessage], *, not_before: datetime, now: datetime
    ) -> list[str]:
        def put(conn: Connection) -> list[str]:
            return [
                m.key
                for m in messages
                if enqueue(conn, key=m.key, channel=m.channel, recipient=m.recipient,
                           kind=m.kind, body=m.body, not_before=not_before, now=now,
                           fallbacks=m.fallbacks)
            ]  # fmt: skip

        return await self.db.run(put)

    async def contains(self, key: str) -> bool:
        return bool(await self.db.run(lambda conn: ids_of(conn, [key])))

    async def claim(self, now: datetime, lease: timedelta, limit: int) -> list[OutboxItem]:
        return await self.db.run(lambda conn: claim(conn, now, lease, limit))

    async def mark_sent(self, item_id: int, now: datetime) -> None:
        await self.db.run(lambda conn: mark_sent(conn, item_id, now))

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: datetime) -> None:
        await self.db.run(lambda conn: mark_retry(conn, item_id, error, next_attempt_at))

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self.db.run(lambda conn: mark_failed(conn, item_id, error))

    async def reroute(
        self,
        item_id: int,
        channel: str,
        recipient: str,
        fallbacks: Sequence[tuple[str, str]],
        error: str,
        now: datetime,
    ) -> None:
        await self.db.run(
            lambda conn: reroute(conn, item_id, channel, recipient, fallbacks, error, now)
        )

    async def settle(self, keys: Sequence[str], *, sent: bool, error: str, now: datetime) -> None:
        def update(conn: Connection) -> None:
            for item_id in ids_of(conn, keys):
                if sent:
                    mark_sent(conn, item_id, now)
                else:
                    mark_retry(conn, item_id, error, now)

        await self.db.run(update)


def withdraw(conn: Connection, key_prefix: str) -> int:
    """Delete the pending rows whose key starts with `key_prefix` and that no sender holds (a
    claimed row's lease runs: it may be on its way)."""
    escaped = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return conn.execute(
        delete(outbox).where(
            outbox.c.idempotency_key.like(escaped + "%", escape="\\"),
            outbox.c.status == PENDING,
            outbox.c.attempts == 0,
        )
    ).rowcount


def depth(conn: Connection, now: datetime) -> tuple[list[tuple[str, str, int]], float | None]:
    """Rows waiting or given up, by status and channel, and how long (in seconds) the oldest due
    pending row has been due: what an operator watches. Sent rows are not counted (a province
    keeps millions of them); both queries run on the `ix_outbox_due` index."""
    rows = conn.execute(
        select(outbox.c.status, outbox.c.channel, func.count())
        .where(outbox.c.status.in_([PENDING, FAILED]))
        .group_by(outbox.c.status, outbox.c.channel)
    ).all()
    oldest = conn.execute(
        select(func.min(outbox.c.next_attempt_at)).where(
            outbox.c.status == PENDING, outbox.c.next_attempt_at <= now
        )
    ).scalar()
    age = (now - oldest).total_seconds() if oldest is not None else None
    return [(status, channel, int(count)) for status, channel, count in rows], age
