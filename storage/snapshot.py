"""Set-based reads and writes for the scheduled jobs: a few queries, never one per student."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Set
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from bot.core.types import (
    DeliveryFailure,
    FallbackReach,
    FollowUpEvent,
    FollowUpStatus,
    FollowUpStep,
    RosterStaff,
    RosterStudent,
    Snapshot,
    StaffRole,
    TrackedFollowUp,
)
from storage.schema import (
    assignments,
    distribution_recipients,
    distributions,
    followup_events,
    followups,
    identities,
    inbound_messages,
    job_runs,
    outbox,
    staff,
    students,
)
from storage.schema import schools as schools_t

OPEN = (FollowUpStatus.OPEN.value, FollowUpStatus.ESCALATED.value)
FAILURE_WINDOW = timedelta(days=7)


SchoolRange = tuple[int, int]  # inclusive ids: the schools of one chunk of a job run


def _between(column: ColumnElement[Any], bounds: tuple[int, int] | None) -> ColumnElement[bool]:
    """`column` inside the inclusive `bounds` (a chunk's school ids, or its students' span);
    always true without them."""
    return true() if bounds is None else column.between(*bounds)


def load_snapshot(
    conn: Connection,
    since: datetime,
    now: datetime,
    schools: SchoolRange | None = None,
    *,
    digest: bool = True,
    span: StudentSpan = None,
) -> Snapshot:
    """Active students with their visits, staff with identities, follow-ups, recent failures:
    of every school, or of the schools in `schools` (one chunk of a job run: the staff are
    those schools' and the bureau's, who may hold their follow-ups). `digest=False` (for the
    reminders) leaves out what only a digest shows: delivery failures, fallback reaches and
    the escalations' histories."""
    school_names = {
        r.id: r.name
        for r in conn.execute(
            select(schools_t.c.id, schools_t.c.name).where(_between(schools_t.c.id, schools))
        )
    }
    in_range = _between(students.c.school_id, schools)
    if schools is not None and span is None:
        span = student_span(conn, schools)
    roster = _roster(conn, in_range, span)
    people = or_(staff.c.school_id.is_(None), _between(staff.c.school_id, schools))
    return Snapshot(
        schools=school_names,
        students=roster,
        staff=_staff(conn, people),
        followups=_followups(conn, since, in_range, span),
        failures=_failures(conn, now - FAILURE_WINDOW, people) if digest else [],
        fell_back=_fell_back(conn, now - FAILURE_WINDOW, people) if digest else [],
        steps=_escalation_steps(conn, in_range, span) if digest else {},
        undelivered=_undelivered(conn, in_range, span),
    )


# The lowest and highest id of a chunk's students. Added to every query on a table keyed by
# student (`_within`), it lets PostgreSQL read just that part of the table's index: a roster
# imported school by school keeps a school's students together, and the planner does not carry
# the range on `students.school_id` across a join (it scanned every assignment, every chunk).
StudentSpan = tuple[int, int] | None


def student_span(conn: Connection, schools: SchoolRange | None) -> StudentSpan:
    """The span of the ids of the schools' students (grouped by school: a plain min/max was
    planned as a walk of the primary key until a student of the range turned up)."""
    if schools is None:
        return None
    rows = conn.execute(
        select(func.min(students.c.id), func.max(students.c.id))
        .where(students.c.school_id.between(*schools))
        .group_by(students.c.school_id)
    ).all()
    return (min(r[0] for r in rows), max(r[1] for r in rows)) if rows else None


def _roster(
    conn: Connection, where: ColumnElement[bool], span: StudentSpan = None
) -> list[RosterStudent]:
    """The active students `where` selects, with their categories, teachers and last visits
    (`span`: the span of their ids, if known)."""
    rows = conn.execute(
        select(
            students.c.id,
            students.c.name,
            students.c.class_name,
            students.c.school_id,
            students.c.categories,
            students.c.last_reached_at,
            students.c.last_unreached_at,
        ).where(students.c.active.is_(True), where)
    ).all()
    assigned: dict[int, list[int]] = defaultdict(list)
    for sid, staff_id in conn.execute(
        select(assignments.c.student_id, assignments.c.staff_id)
        .join(students, students.c.id == assignments.c.student_id)
        .where(where, students.c.active.is_(True), _between(assignments.c.student_id, span))
        .order_by(assignments.c.role)
    ).all():
        if staff_id not in assigned[sid]:
            assigned[sid].append(staff_id)
    return [
        RosterStudent(
            sid,
            name,
            class_name,
            school_id,
            tuple(categories.strip(",").split(",")) if categories else (),
            tuple(assigned.get(sid, ())),
            reached,
            unreached,
        )
        for sid, name, class_name, school_id, categories, reached, unreached in rows
    ]


def bureau_ids(conn: Connection) -> list[int]:
    """The active bureau members."""
    return list(
        conn.execute(
            select(staff.c.id)
            .where(staff.c.role == StaffRole.BUREAU.value, staff.c.active.is_(True))
            .order_by(staff.c.id)
        ).scalars()
    )


def load_bureau_snapshot(conn: Connection, since: datetime, followup_ids: Set[int]) -> Snapshot:
    """What the bureau is told of at the end of a job run: the escalations `followup_ids` that
    climbed to it (the first few each member has not been told of: `ladder.untold_climbed`),
    with their students and schools; the bureau's staff and the follow-ups' owners."""
    chosen = followups.c.id.in_(sorted(followup_ids))
    who = students.c.id.in_(select(followups.c.student_id).where(chosen))
    roster = _roster(conn, who) if followup_ids else []
    school_ids = {s.school_id for s in roster}
    school_names = {
        r.id: r.name
        for r in conn.execute(
            select(schools_t.c.id, schools_t.c.name).where(schools_t.c.id.in_(school_ids))
        )
    }
    owners = select(followups.c.owner_staff_id).where(chosen)
    people = or_(staff.c.school_id.is_(None), staff.c.id.in_(owners))
    found = _followups(conn, since, who) if followup_ids else []
    return Snapshot(
        schools=school_names,
        students=roster,
        staff=_staff(conn, people),
        followups=[f for f in found if f.id in followup_ids],
        failures=[],
    )


def _undelivered(
    conn: Connection, in_range: ColumnElement[bool], span: StudentSpan
) -> list[tuple[int, str]]:
    """Recipients of batch distributions not yet marked delivered (active students)."""
    rows = conn.execute(
        select(distribution_recipients.c.student_id, distributions.c.title)
        .join(distributions, distributions.c.id == distribution_recipients.c.distribution_id)
        .join(students, students.c.id == distribution_recipients.c.student_id)
        .where(
            distribution_recipients.c.delivered_at.is_(None),
            students.c.active.is_(True),
            in_range,
            _between(distribution_recipients.c.student_id, span),
        )
        .order_by(distributions.c.id, distribution_recipients.c.student_id)
    )
    return [(int(r.student_id), str(r.title)) for r in rows]


def last_seen(
    conn: Connection, staff_ids: list[int] | Select[Any] | None = None
) -> dict[int, dict[str, datetime]]:
    """When each staff member last wrote from each of their identities (the inbound table keeps
    a message id for a month): the channel they used last is where they are reached first."""
    stmt = (
        select(
            identities.c.staff_id, identities.c.channel, func.max(inbound_messages.c.received_at)
        )
        .join(
            inbound_messages,
            (inbound_messages.c.channel == identities.c.channel)
            & (inbound_messages.c.user_id == identities.c.external_id),
        )
        .group_by(identities.c.staff_id, identities.c.channel)
    )
    if staff_ids is not None:
        stmt = stmt.where(identities.c.staff_id.in_(staff_ids))
    seen: dict[int, dict[str, datetime]] = defaultdict(dict)
    for staff_id, channel, at in conn.execute(stmt):
        if at is not None:
            seen[staff_id][channel] = at
    return seen


def _staff(conn: Connection, people: ColumnElement[bool]) -> dict[int, RosterStaff]:
    ids: dict[int, dict[str, str]] = defaultdict(dict)
    for staff_id, channel, external in conn.execute(
        select(identities.c.staff_id, identities.c.channel, identities.c.external_id)
        .join(staff, staff.c.id == identities.c.staff_id)
        .where(people)
    ):
        ids[staff_id][channel] = external
    seen = last_seen(conn, select(staff.c.id).where(people))
    return {
        r.id: RosterStaff(
            r.id, r.staff_no, r.name, StaffRole(r.role), r.school_id, ids[r.id], seen[r.id]
        )
        for r in conn.execute(
            select(
                staff.c.id, staff.c.staff_no, staff.c.name, staff.c.role, staff.c.school_id
            ).where(staff.c.active.is_(True), people)
        )
    }


def _followups(
    conn: Connection, since: datetime, in_range: ColumnElement[bool], span: StudentSpan = None
) -> list[TrackedFollowUp]:
    handed: dict[int, tuple[int, int | None]] = {}  # follow-up -> (new owner, by whom), latest
    for fid, owner, actor in conn.execute(
        select(
            followup_events.c.followup_id, followup_events.c.staff_id, followup_events.c.actor_id
        )
        .join(followups, followups.c.id == followup_events.c.followup_id)
        .join(students, students.c.id == followups.c.student_id)
        .where(
            followup_events.c.event == FollowUpEvent.REASSIGNED.value,
            followups.c.status.in_(OPEN),
            in_range,
            _between(followups.c.student_id, span),
        )
        .order_by(followup_events.c.id)
    ):
        handed[fid] = (owner, actor)
    rows = conn.execute(
        select(followups)
        .join(students, students.c.id == followups.c.student_id)
        .where(
            students.c.active.is_(True),
            in_range,
            _between(followups.c.student_id, span),
            or_(followups.c.status.in_(OPEN), followups.c.created_at >= since),
        )
        .order_by(followups.c.due_date, followups.c.id)
    )
    return [
        TrackedFollowUp(
            r.id,
            r.student_id,
            r.owner_staff_id,
            r.kind,
            r.detail,
            r.due_date,
            FollowUpStatus(r.status),
            r.created_at,
            r.escalated_at,
            r.acknowledged_by,
            r.climbed_at,
            handed[r.id][1] if handed.get(r.id, (None,))[0] == r.owner_staff_id else None,
        )
        for r in rows
    ]


# the staff member an outbox row went to (through their identity on its channel)
_RECIPIENT = and_(
    identities.c.channel == outbox.c.channel, identities.c.external_id == outbox.c.recipient
)


def _failures(
    conn: Connection, since: datetime, people: ColumnElement[bool]
) -> list[DeliveryFailure]:
    rows = conn.execute(
        select(identities.c.staff_id, outbox.c.channel, outbox.c.last_error)
        .join(identities, _RECIPIENT)
        .join(staff, staff.c.id == identities.c.staff_id)
        .where(outbox.c.status == "failed", outbox.c.created_at >= since, people)
        .order_by(outbox.c.id)
    )
    seen: dict[tuple[int, str], DeliveryFailure] = {}
    for r in rows:
        seen[(r.staff_id, r.channel)] = DeliveryFailure(r.staff_id, r.channel, r.last_error or "")
    return list(seen.values())


def _escalation_steps(
    conn: Connection, in_range: ColumnElement[bool], span: StudentSpan
) -> dict[int, list[FollowUpStep]]:
    """The history of every follow-up still escalated (the digest shows who did what when)."""
    escalated = (
        select(followups.c.id)
        .join(students, students.c.id == followups.c.student_id)
        .where(
            followups.c.status == FollowUpStatus.ESCALATED.value,
            in_range,
            _between(followups.c.student_id, span),
        )
    )
    rows = conn.execute(
        select(
            followup_events.c.followup_id,
            followup_events.c.event,
            followup_events.c.at,
            followup_events.c.staff_id,
        )
        .where(followup_events.c.followup_id.in_(escalated.scalar_subquery()))
        .order_by(followup_events.c.followup_id, followup_events.c.id)
    )
    steps: dict[int, list[FollowUpStep]] = defaultdict(list)
    for r in rows:
        steps[r.followup_id].append(FollowUpStep(r.event, r.at, r.staff_id))
    return dict(steps)


def _fell_back(
    conn: Connection, since: datetime, people: ColumnElement[bool]
) -> list[FallbackReach]:
    """Who was reached only by a fallback channel recently (the digest names them: their first
    channel needs fixing), once per person and pair of channels."""
    rows = conn.execute(
        select(identities.c.staff_id, outbox.c.channel, outbox.c.fallback_from)
        .join(identities, _RECIPIENT)
        .join(staff, staff.c.id == identities.c.staff_id)
        .where(
            outbox.c.status == "sent",
            outbox.c.fallback_from.is_not(None),
            outbox.c.sent_at >= since,
            people,
        )
        .distinct()
        .order_by(identities.c.staff_id)
    )
    return [FallbackReach(r.staff_id, r.channel, r.fallback_from) for r in rows]


def last_run(conn: Connection, job: str, before: date) -> datetime | None:
    return conn.execute(
        select(func.max(job_runs.c.ran_at)).where(
            job_runs.c.job == job, job_runs.c.run_date < before
        )
    ).scalar()


def has_run(conn: Connection, job: str, day: date) -> bool:
    return (
        conn.execute(
            select(job_runs.c.job).where(job_runs.c.job == job, job_runs.c.run_date == day)
        ).first()
        is not None
    )


def record_run(conn: Connection, job: str, day: date, now: datetime) -> None:
    make_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        make_insert(job_runs).values(job=job, run_date=day, ran_at=now).on_conflict_do_nothing()
    )
