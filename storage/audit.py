"""The audit log as a hash chain: every entry carries the hash of the one before it.

`record` is the only writer of `audit_log`. Each entry's `hash` is the SHA-256 of a canonical
serialisation of the entry (its id, time, actor, action, detail, school and the previous entry's
hash), so an entry edited in the database no longer matches its hash, and one removed leaves a
gap in the ids and a broken link. Appends are serialised so that two writers never both chain
onto the same entry: on PostgreSQL by a transaction-scoped advisory lock, on SQLite by the write
lock every transaction takes up front (`BEGIN IMMEDIATE`, see `storage.db`).

What a chain cannot show on its own: the newest entries removed together (nothing comes after
them to notice). `homevisit audit verify` prints the count and the last hash, which an operator
can note down elsewhere to cover that too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection

from storage.schema import audit_log

PG_AUDIT_LOCK = 0x61756474  # "audt"
GENESIS = "0" * 64


def detail_text(detail: Mapping[str, Any]) -> str:
    """The stored form of an entry's detail (sorted keys, so it reads the same every time)."""
    return json.dumps(dict(detail), ensure_ascii=False, sort_keys=True)


def entry_hash(
    entry_id: int,
    at: datetime,
    actor: str,
    action: str,
    detail: str,
    school_id: int | None,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical serialisation of one entry."""
    canonical = json.dumps(
        [
            entry_id,
            at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            actor,
            action,
            detail,
            school_id,
            prev_hash,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    detail: Mapping[str, Any],
    school_id: int | None,
) -> int:
    """Append one entry in the caller's transaction; its id. Never put personal data in `detail`
    beyond the 学籍号 / 工号 that say what the entry is about."""
    return _append(conn, at, actor, action, detail_text(detail), school_id)


def _append(
    conn: Connection, at: datetime, actor: str, action: str, body: str, school_id: int | None
) -> int:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_AUDIT_LOCK})
    last = conn.execute(
        select(audit_log.c.id, audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
    ).first()
    entry_id = 1 if last is None else int(last.id) + 1
    prev = GENESIS if last is None else str(last.hash or "")
    at = at.astimezone(UTC)
    conn.execute(
        insert(audit_log).values(
            id=entry_id,
            at=at,
            actor=actor,
            action=action,
            detail=body,
            school_id=school_id,
            prev_hash=prev,
            hash=entry_hash(entry_id, at, actor, action, body, school_id, prev),
        )
    )
    return entry_id


@dataclass(frozen=True, slots=True)
class ChainReport:
    """`entries` checked; `broken_at` the id of the first bad entry (None: intact), `reason`."""

    entries: int
    last_hash: str
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_chain(conn: Connection) -> ChainReport:
    """Walk the log in id order and report the first entry changed, removed or out of place."""
    expected_id, prev, count = 1, GENESIS, 0
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).yield_per(1000)
    for row in rows:
        if row.id != expected_id:
            removed = (
                f"entry {expected_id} removed"
                if row.id == expected_id + 1
                else f"entries {expected_id}-{row.id - 1} removed"
            )
            return ChainReport(count, prev, expected_id, removed)
        if row.prev_hash != prev:
            return ChainReport(count, prev, row.id, "link to the previous entry broken")
        digest = entry_hash(
            row.id, row.at, row.actor, row.action, row.detail, row.school_id, row.prev_hash
        )
        if row.hash != digest:
            return ChainReport(count, prev, row.id, "entry changed")
        expected_id, prev, count = expected_id + 1, digest, count + 1
    return ChainReport(count, prev)


def rechain(conn: Connection) -> int:
    """Compute the chain over the existing entries in id order, renumbering them 1..n (the
    migration that introduced the chain); the number of entries."""
    c = audit_log.c  # (the columns of 0001/0005 only: later migrations may add others)
    rows = conn.execute(
        select(c.id, c.at, c.actor, c.action, c.detail, c.school_id).order_by(c.id)
    ).all()
    conn.execute(audit_log.delete())
    for row in rows:
        _append(conn, row.at, row.actor, row.action, row.detail, row.school_id)
    return len(rows)
