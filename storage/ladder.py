"""The escalation ladder's set-based steps (#14): one statement per step, never one per row.

Overdue follow-ups are escalated to the school; escalations nobody acknowledged climb to the
bureau. Each step writes its events (`followup_events`) with INSERT ... SELECT over the rows the
step just changed (they carry this run's time). Who was told of what is an event too, so a run
after a restart tells only those not told yet (and the outbox key stops a second copy anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, insert, literal, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from bot.core.types import FollowUpEvent, FollowUpStatus, followup_step
from storage.schema import UtcDateTime, followup_events, followups, staff, students

ESCALATED = FollowUpStatus.ESCALATED.value


def escalate(conn: Connection, due_before: date, now: datetime) -> int:
    """Open follow-ups due before `due_before` become escalated; how many."""
    changed = conn.execute(
        update(followups)
        .where(followups.c.status == FollowUpStatus.OPEN.value, followups.c.due_date < due_before)
        .values(status=ESCALATED, escalated_at=now)
    ).rowcount
    if changed:
        _events_for(conn, FollowUpEvent.ESCALATED, followups.c.escalated_at, now)
    return changed


def climb(conn: Connection, escalated_before: datetime, now: datetime) -> int:
    """Escalations before `escalated_before` that nobody acknowledged go to the bureau."""
    changed = conn.execute(
        update(followups)
        .where(
            followups.c.status == ESCALATED,
            followups.c.acknowledged_by.is_(None),
            followups.c.climbed_at.is_(None),
            followups.c.escalated_at < escalated_before,
        )
        .values(climbed_at=now)
    ).rowcount
    if changed:
        _events_for(conn, FollowUpEvent.CLIMBED, followups.c.climbed_at, now)
    return changed


# Rows changed by one step beyond which PostgreSQL's statistics of the follow-ups are refreshed
# at once (the job's next queries are planned on them; autovacuum would take a while).
ANALYZE_AFTER = 1000


def refresh_statistics(conn: Connection, changed: int) -> None:
    """After a step changed many follow-ups' status, ANALYZE them (PostgreSQL): planned on the
    old statistics, "escalated follow-ups of these schools" looked rare and took seconds."""
    if changed >= ANALYZE_AFTER and conn.dialect.name == "postgresql":
        conn.execute(text("ANALYZE followups"))
        conn.execute(text("ANALYZE followup_events"))


def _events_for(
    conn: Connection, event: FollowUpEvent, stamp: ColumnElement[datetime], now: datetime
) -> None:
    """`event` for every follow-up whose `stamp` this step just set to `now`."""
    conn.execute(
        insert(followup_events).from_select(
            ["followup_id", "event", "at"],
            select(followups.c.id, literal(event.value), stamp).where(stamp == now),
        )
    )


def _climbed_untold(person_id: int) -> ColumnElement[bool]:
    """Climbed to the bureau, nobody acknowledged it, and `person_id` was not told of it."""
    told = (
        select(followup_events.c.id)
        .where(
            followup_events.c.followup_id == followups.c.id,
            followup_events.c.event == FollowUpEvent.NOTIFIED.value,
            followup_events.c.staff_id == person_id,
        )
        .exists()
    )
    return and_(
        followups.c.status == ESCALATED,
        followups.c.climbed_at.is_not(None),
        followups.c.acknowledged_by.is_(None),
        ~told,
    )


def untold_climbed(
    conn: Connection, person_ids: Iterable[int], limit: int
) -> dict[int, tuple[int, list[int]]]:
    """For each bureau member: how many escalations climbed to the bureau that they were not
    told of, and the first `limit` (earliest due first: what one message lists). Counted in
    the database: a province's first climb is tens of thousands, of which a message lists 20."""
    found: dict[int, tuple[int, list[int]]] = {}
    for person in person_ids:
        count = conn.execute(
            select(func.count()).select_from(followups).where(_climbed_untold(person))
        ).scalar_one()
        if count:
            first = conn.execute(
                select(followups.c.id)
                .where(_climbed_untold(person))
                .order_by(followups.c.due_date, followups.c.id)
                .limit(limit)
            ).scalars()
            found[person] = (int(count), list(first))
    return found


def tell_climbed(conn: Connection, person_id: int, now: datetime) -> None:
    """Record that `person_id` was told of every climbed escalation they had not been told of
    (one INSERT ... SELECT: the message counted them all)."""
    conn.execute(
        insert(followup_events).from_select(
            ["followup_id", "event", "at", "staff_id"],
            select(
                followups.c.id,
                literal(FollowUpEvent.NOTIFIED.value),
                literal(now, UtcDateTime),
                literal(person_id),
            ).where(_climbed_untold(person_id)),
        )
    )


def notified(
    conn: Connection,
    schools: tuple[int, int] | None = None,
    span: tuple[int, int] | None = None,
) -> set[tuple[int, int]]:
    """(follow-up, person) pairs already told of an escalation still open (of students of the
    schools in the inclusive id range `schools`, if given, whose ids lie in `span`: see
    `storage.snapshot.StudentSpan`)."""
    stmt = (
        select(followup_events.c.followup_id, followup_events.c.staff_id)
        .join(followups, followups.c.id == followup_events.c.followup_id)
        .where(
            followup_events.c.event == FollowUpEvent.NOTIFIED.value,
            followups.c.status == ESCALATED,
        )
    )
    if schools is not None:
        stmt = stmt.join(students, students.c.id == followups.c.student_id).where(
            students.c.school_id.between(*schools)
        )
    if span is not None:
        stmt = stmt.where(followups.c.student_id.between(*span))
    rows = conn.execute(stmt)
    return {(r.followup_id, r.staff_id) for r in rows}


def record(
    conn: Connection,
    event: FollowUpEvent,
    rows: Iterable[tuple[int, int | None]],
    now: datetime,
    *,
    actor_id: int | None = None,
    note: str | None = None,
) -> None:
    """Store `event` for each (follow-up, person) in one statement."""
    values = [
        {
            "followup_id": fid,
            "event": event.value,
            "at": now,
            "staff_id": sid,
            "actor_id": actor_id,
            "note": note,
        }
        for fid, sid in rows
    ]
    if values:
        conn.execute(insert(followup_events), values)


def histories(
    conn: Connection, followup_ids: Select[Any], tz: ZoneInfo, *, notes: bool = True
) -> dict[int, str]:
    """Each follow-up's steps as one line ("3月11日 上报学校；3月11日 确认负责 甲协调（备注）；
    3月11日 甲协调 转交给 李示例…"),
    for the follow-ups `followup_ids` selects; one query. `notes=False`: without the notes
    (free text is sensitive: an export without sensitive answers leaves them out)."""
    person, actor = staff.alias("person"), staff.alias("actor")
    rows = conn.execute(
        select(
            followup_events.c.followup_id,
            followup_events.c.event,
            followup_events.c.at,
            followup_events.c.note,
            person.c.name,
            actor.c.name,
        )
        .outerjoin(person, person.c.id == followup_events.c.staff_id)
        .outerjoin(actor, actor.c.id == followup_events.c.actor_id)
        .where(followup_events.c.followup_id.in_(followup_ids.scalar_subquery()))
        .order_by(followup_events.c.followup_id, followup_events.c.id)
    )
    lines: dict[int, list[str]] = {}
    for fid, event, at, note, name, by in rows:
        day = at.astimezone(tz).date()
        text = followup_step(event, day, name, by=by, note=note if notes else None)
        lines.setdefault(fid, []).append(text)
    return {fid: "；".join(steps) for fid, steps in lines.items()}
