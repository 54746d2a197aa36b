"""Set-based reads and writes for the scheduled jobs: a few queries, never one per student."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

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
    VisitStatus,
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
    schools,
    staff,
    student_categories,
    students,
    visits,
)

OPEN = (FollowUpStatus.OPEN.value, FollowUpStatus.ESCALATED.value)
FAILURE_WINDOW = timedelta(days=7)


def load_snapshot(conn: Connection, since: datetime, now: datetime) -> Snapshot:
    """Active students with their visits, staff with identities, follow-ups, recent failures."""
    school_names = {r.id: r.name for r in conn.execute(select(schools.c.id, schools.c.name))}
    categories: dict[int, list[str]] = defaultdict(list)
    for sid, cat in conn.execute(
        select(student_categories.c.student_id, student_categories.c.category).order_by(
            student_categories.c.student_id, student_categories.c.category
        )
    ).all():
        categories[sid].append(cat)
    assigned: dict[int, list[int]] = defaultdict(list)
    for sid, staff_id in conn.execute(
        select(assignments.c.student_id, assignments.c.staff_id).order_by(assignments.c.role)
    ).all():
        if staff_id not in assigned[sid]:
            assigned[sid].append(staff_id)
    last = _last_visits(conn)
    no_visits = (None, None)
    roster = [
        RosterStudent(
            sid,
            name,
            class_name,
            school_id,
            tuple(categories.get(sid, ())),
            tuple(assigned.get(sid, ())),
            *last.get(sid, no_visits),
        )
        for sid, name, class_name, school_id in conn.execute(
            select(
                students.c.id, students.c.name, students.c.class_name, students.c.school_id
            ).where(students.c.active.is_(True))
        ).all()
    ]
    return Snapshot(
        schools=school_names,
        students=roster,
        staff=_staff(conn),
        followups=_followups(conn, since),
        failures=_failures(conn, now - FAILURE_WINDOW),
        fell_back=_fell_back(conn, now - FAILURE_WINDOW),
        steps=_escalation_steps(conn),
        undelivered=_undelivered(conn),
    )


def _undelivered(conn: Connection) -> list[tuple[int, str]]:
    """Recipients of batch distributions not yet marked delivered (active students)."""
    rows = conn.execute(
        select(distribution_recipients.c.student_id, distributions.c.title)
        .join(distributions, distributions.c.id == distribution_recipients.c.distribution_id)
        .join(students, students.c.id == distribution_recipients.c.student_id)
        .where(distribution_recipients.c.delivered_at.is_(None), students.c.active.is_(True))
        .order_by(distributions.c.id, distribution_recipients.c.student_id)
    )
    return [(int(r.student_id), str(r.title)) for r in rows]


def _last_visits(conn: Connection) -> dict[int, tuple[datetime | None, datetime | None]]:
    reached = func.max(case((visits.c.reached.is_(True), visits.c.submitted_at)))
    unreached = func.max(case((visits.c.reached.is_(False), visits.c.submitted_at)))
    rows = conn.execute(
        select(
            visits.c.student_id,
            reached.label("reached"),
            unreached.label("unreached"),
        )
        .where(visits.c.status == VisitStatus.SUBMITTED.value)
        .group_by(visits.c.student_id)
    )
    return {sid: (reached, unreached) for sid, reached, unreached in rows.all()}


def last_seen(
    conn: Connection, staff_ids: list[int] | None = None
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


def _staff(conn: Connection) -> dict[int, RosterStaff]:
    ids: dict[int, dict[str, str]] = defaultdict(dict)
    for staff_id, channel, external in conn.execute(
        select(identities.c.staff_id, identities.c.channel, identities.c.external_id)
    ):
        ids[staff_id][channel] = external
    seen = last_seen(conn)
    return {
        r.id: RosterStaff(
            r.id, r.staff_no, r.name, StaffRole(r.role), r.school_id, ids[r.id], seen[r.id]
        )
        for r in conn.execute(
            select(
                staff.c.id, staff.c.staff_no, staff.c.name, staff.c.role, staff.c.school_id
            ).where(staff.c.active.is_(True))
        )
    }


def _followups(conn: Connection, since: datetime) -> list[TrackedFollowUp]:
    handed: dict[int, tuple[int, int | None]] = {}  # follow-up -> (new owner, by whom), latest
    for fid, owner, actor in conn.execute(
        select(
            followup_events.c.followup_id, followup_events.c.staff_id, followup_events.c.actor_id
        )
        .join(followups, followups.c.id == followup_events.c.followup_id)
        .where(
            followup_events.c.event == FollowUpEvent.REASSIGNED.value,
            followups.c.status.in_(OPEN),
        )
        .order_by(followup_events.c.id)
    ):
        handed[fid] = (owner, actor)
    rows = conn.execute(
        select(followups)
        .join(students, students.c.id == followups.c.student_id)
        .where(
            students.c.active.is_(True),
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


def _failures(conn: Connection, since: datetime) -> list[DeliveryFailure]:
    rows = conn.execute(
        select(identities.c.staff_id, outbox.c.channel, outbox.c.last_error)
        .join(identities, _RECIPIENT)
        .where(outbox.c.status == "failed", outbox.c.created_at >= since)
        .order_by(outbox.c.id)
    )
    seen: dict[tuple[int, str], DeliveryFailure] = {}
    for r in rows:
        seen[(r.staff_id, r.channel)] = DeliveryFailure(r.staff_id, r.channel, r.last_error or "")
    return list(seen.values())


def _escalation_steps(conn: Connection) -> dict[int, list[FollowUpStep]]:
    """The history of every follow-up still escalated (the digest shows who did what when)."""
    escalated = select(followups.c.id).where(followups.c.status == FollowUpStatus.ESCALATED.value)
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


def _fell_back(conn: Connection, since: datetime) -> list[FallbackReach]:
    """Who was reached only by a fallback channel recently (the digest names them: their first
    channel needs fixing), once per person and pair of channels."""
    rows = conn.execute(
        select(identities.c.staff_id, outbox.c.channel, outbox.c.fallback_from)
        .join(identities, _RECIPIENT)
        .where(
            outbox.c.status == "sent",
            outbox.c.fallback_from.is_not(None),
            outbox.c.sent_at >= since,
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
