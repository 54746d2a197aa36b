"""Housekeeping: what the database keeps only as long as it serves a purpose.

`inbound_messages` remembers each platform message id with the replies it was given, so that a
retried delivery is answered the same way instead of acting twice. The replies name students and
their families' needs, and platforms stop retrying within hours (WeCom after about 15 seconds,
Feishu after 7 hours), so they are cleared after a day; the id alone stays for a month, which
still recognises a very late retry (it is then answered with a short notice, not the old text).

Retention (`apply_retention`, HOMEVISIT_RETENTION_DAYS): what a visit found out that is sensitive
is kept only as long as it can help the child; the counts stay for the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, null, or_, select, update
from sqlalchemy.engine import Connection

from storage.audit import record
from storage.erasure import ERASED_TEXT, blank_messages, forget_sessions, pseudonym
from storage.schema import (
    aid_reviews,
    assignments,
    followups,
    inbound_messages,
    outbox,
    students,
    visits,
)

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


# ---------------------------------------------------------------------------- retention
KEEP_MESSAGE_BODIES = timedelta(days=30)
RETENTION_BATCH = 500  # visits per transaction: the job loops until nothing is left
ANONYMOUS = "（已删除）"
ERASED_PREFIX = "erased-"


@dataclass(frozen=True, slots=True)
class Retained:
    """What one retention pass erased: visits stripped of their sensitive answers and notes,
    students anonymised, message bodies cleared."""

    visits: int = 0
    students: int = 0
    messages: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.visits or self.students or self.messages)


def apply_retention(
    conn: Connection,
    now: datetime,
    days: int,
    sensitive_keys: frozenset[str],
    redact_detail: Callable[[str, str], str],
) -> Retained:
    """One pass of HOMEVISIT_RETENTION_DAYS (at most RETENTION_BATCH visits; call until nothing
    is left). Visits older than `days`: sensitive answers removed, their follow-ups' notes
    cleared and descriptions passed through `redact_detail`. Students deactivated that long:
    name and 学籍号 replaced, assignments and sessions dropped, sensitive answers and notes
    removed; the rows stay, so the statistics keep their counts. Outbox bodies older than
    30 days are cleared. The pass is recorded in the audit log with its counts."""
    cutoff = now - timedelta(days=days)
    students_done = _anonymise_students(conn, cutoff, sensitive_keys, redact_detail, now)
    aged = conn.execute(
        select(visits.c.id, visits.c.answers)
        .where(
            visits.c.redacted_at.is_(None),
            func.coalesce(visits.c.submitted_at, visits.c.updated_at) < cutoff,
        )
        .order_by(visits.c.id)
        .limit(RETENTION_BATCH)
    ).all()
    _redact_visits(conn, aged, sensitive_keys, redact_detail, now)
    # Aid reviews that old: the teacher's note and the reason go; a reported student never
    # approved (so not on the roster) loses the name too.
    old_review = aid_reviews.c.created_at < cutoff
    conn.execute(
        update(aid_reviews)
        .where(old_review, or_(aid_reviews.c.note.is_not(None), aid_reviews.c.reason.is_not(None)))
        .values(note=null(), reason=null())
    )
    conn.execute(
        update(aid_reviews)
        .where(old_review, aid_reviews.c.name.is_not(None), aid_reviews.c.name != ERASED_TEXT)
        .values(name=ERASED_TEXT)
    )
    messages = conn.execute(
        update(outbox)
        .where(
            outbox.c.created_at < now - KEEP_MESSAGE_BODIES,
            outbox.c.status != "pending",
            outbox.c.body != ERASED_TEXT,
        )
        .values(body=ERASED_TEXT, listing=null())
    ).rowcount
    done = Retained(len(aged), students_done, int(messages))
    if done.anything:
        record(
            conn,
            at=now,
            actor="retention",
            action="retention",
            detail={"days": days, **asdict(done)},
            school_id=None,
        )
    return done


def _redact_visits(
    conn: Connection,
    rows: Sequence[Any],
    keys: frozenset[str],
    redact_detail: Callable[[str, str], str],
    now: datetime,
) -> None:
    for row in rows:
        kept = {k: v for k, v in dict(row.answers).items() if k not in keys}
        conn.execute(
            update(visits)
            .where(visits.c.id == row.id)
            .values(answers=kept, redacted_at=now, revision=visits.c.revision + 1)
        )
    ids = [row.id for row in rows]
    if not ids:
        return
    for f in conn.execute(
        select(followups.c.id, followups.c.kind, followups.c.detail).where(
            followups.c.visit_id.in_(ids)
        )
    ).all():
        conn.execute(
            update(followups)
            .where(followups.c.id == f.id)
            .values(detail=redact_detail(f.kind, f.detail), note=null())
        )


def _anonymise_students(
    conn: Connection,
    cutoff: datetime,
    keys: frozenset[str],
    redact_detail: Callable[[str, str], str],
    now: datetime,
) -> int:
    gone = conn.execute(
        select(students.c.id, students.c.name, students.c.student_no).where(
            students.c.active.is_(False),
            students.c.deactivated_at < cutoff,
            students.c.student_no.not_like(f"{ERASED_PREFIX}%"),
        )
    ).all()
    for s in gone:
        visit_rows = conn.execute(
            select(visits.c.id, visits.c.answers).where(visits.c.student_id == s.id)
        ).all()
        visit_ids = {v.id for v in visit_rows}
        followup_ids = set(
            conn.execute(select(followups.c.id).where(followups.c.student_id == s.id)).scalars()
        )
        forget_sessions(conn, s.id, visit_ids, followup_ids)
        blank_messages(conn, s.name)
        _redact_visits(conn, visit_rows, keys, redact_detail, now)
        conn.execute(delete(assignments).where(assignments.c.student_id == s.id))
        conn.execute(
            update(students)
            .where(students.c.id == s.id)
            .values(
                name=ANONYMOUS,
                student_no=f"{ERASED_PREFIX}{pseudonym(s.student_no)}",
                class_name="-",
            )
        )
    return len(gone)
