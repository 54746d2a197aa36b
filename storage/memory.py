"""`MemoryStore`: the `Store` port in plain Python objects, for fast conversation tests.

It keeps the same contract as `SqlStore` (one suite, `tests/test_store_contract.py`, runs over
both), so a conversation script that passes here passes on the databases. `MemoryTurns` runs a
turn as a transaction: one at a time, and a turn that raises leaves everything as it was.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from bot.core.aid import (
    AID_CATEGORIES,
    POOL,
    SETTLED,
    STANDING,
    UNCHECKED,
    OpenNeed,
    Taken,
)
from bot.core.binding import BindOutcome
from bot.core.channels import STAFF_NO_CHANNELS
from bot.core.errors import ConcurrentUpdate, DuplicateMessage
from bot.core.ports import Store
from bot.core.reviews import FOUND_ON_VISIT, AidReview, ReviewStatus, provisional_no
from bot.core.types import (
    ConversationKey,
    Coverage,
    Draft,
    FollowUpCheck,
    FollowUpEvent,
    FollowUpListing,
    FollowUpStatus,
    GroupCoverage,
    NeedCount,
    NewFollowUp,
    OutboxMessage,
    RosterStaff,
    ScopedFollowUp,
    Session,
    Staff,
    StaffRole,
    StudentListing,
    StudentRef,
    Unvisited,
    VisitStatus,
)
from storage.roster_files import Roster

T = TypeVar("T")
OPEN = (FollowUpStatus.OPEN, FollowUpStatus.ESCALATED)


@dataclass
class _Student:
    id: int
    student_no: str
    name: str
    school: str
    class_name: str
    categories: tuple[str, ...]
    active: bool = True


@dataclass
class _Visit:
    id: int
    student_id: int
    staff_id: int
    form_id: str
    form_version: str
    status: VisitStatus
    answers: dict[str, Any]
    started_at: datetime
    updated_at: datetime
    revision: int = 0
    method: str | None = None
    reached: bool | None = None
    submitted_at: datetime | None = None


@dataclass
class _FollowUp:
    id: int
    visit_id: int
    student_id: int
    owner_staff_id: int
    kind: str
    detail: str
    due_date: date
    status: FollowUpStatus
    created_at: datetime
    closed_at: datetime | None = None
    closed_by: int | None = None
    note: str | None = None
    acknowledged_by: int | None = None
    climbed_at: datetime | None = None
    reopens: int | None = None
    escalated_at: datetime | None = None


@dataclass
class _Data:
    staff: dict[int, Staff] = field(default_factory=dict)
    active_staff: set[int] = field(default_factory=set)
    identities: dict[tuple[str, str], int] = field(default_factory=dict)
    students: dict[int, _Student] = field(default_factory=dict)
    assignments: dict[tuple[int, str], int] = field(default_factory=dict)  # (student, role)
    visits: dict[int, _Visit] = field(default_factory=dict)
    followups: dict[int, _FollowUp] = field(default_factory=dict)
    sessions: dict[ConversationKey, Session] = field(default_factory=dict)
    inbound: dict[tuple[str, str, str], tuple[list[str] | None, datetime]] = field(
        default_factory=dict
    )
    schools: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, tuple[OutboxMessage, datetime]] = field(default_factory=dict)
    console_tokens: dict[str, tuple[int, datetime, datetime]] = field(
        default_factory=dict
    )  # hash -> (staff id, created, expires)
    binding_codes: dict[str, tuple[int, datetime, bool]] = field(
        default_factory=dict
    )  # hash -> (staff id, expires, used)
    bind_failures: list[tuple[str, datetime]] = field(default_factory=list)
    audit: list[tuple[datetime, str, str, dict[str, object]]] = field(default_factory=list)
    # (follow-up, event, time, person, actor, note), as `followup_events`
    events: list[tuple[int, str, datetime, int | None, int | None, str | None]] = field(
        default_factory=list
    )
    # aid allocations (#15) as (follow-up, item, status); allocated only by the console's
    # `storage.aid.SqlAid`, so seeded here with `add_allocation`
    allocations: dict[int, list[Any]] = field(default_factory=dict)
    stock: dict[tuple[int, str], int] = field(default_factory=dict)  # (school or POOL, item)
    reviews: dict[int, AidReview] = field(default_factory=dict)
    # (student, category) -> (source, since) of categories a review added
    found: dict[tuple[int, str], tuple[str, datetime]] = field(default_factory=dict)
    next_id: int = 1


class MemoryStore:
    """Implements `bot.core.ports.Store`; use it through `MemoryTurns`."""

    def __init__(self) -> None:
        self.data = _Data()

    # ---------------------------------------------------------------- seeding (tests)
    def _new_id(self) -> int:
        self.data.next_id += 1
        return self.data.next_id

    def load_roster(self, roster: Roster) -> None:
        """Add a checked roster's staff and students (a first import; nothing deactivated)."""
        d = self.data
        staff_ids: dict[str, int] = {}
        schools = d.schools
        for entry in roster.staff:
            school_id = None
            if entry.school:
                school_id = schools.setdefault(entry.school, len(schools) + 1)
            sid = self._new_id()
            staff_ids[entry.staff_no] = sid
            d.staff[sid] = Staff(sid, entry.staff_no, entry.name, StaffRole(entry.role), school_id)
            d.active_staff.add(sid)
            for channel in ("wecom", "dingtalk"):
                external = entry.identity(channel)
                if external:
                    d.identities[(channel, external)] = sid
        for s in roster.students:
            student_id = self._new_id()
            d.students[student_id] = _Student(
                student_id, s.student_no, s.name, s.school, s.class_name, tuple(s.categories)
            )
            d.assignments[(student_id, "head_teacher")] = staff_ids[s.head_teacher_no]
            if s.carer_no:
                d.assignments[(student_id, "carer")] = staff_ids[s.carer_no]

    def assign(self, student_id: int, role: str, staff_id: int | None) -> None:
        """Change one assignment (None removes it), as a roster import would."""
        if staff_id is None:
            self.data.assignments.pop((student_id, role), None)
        else:
            self.data.assignments[(student_id, role)] = staff_id

    # ---------------------------------------------------------------- helpers
    def _mine(self, staff_id: int) -> list[_Student]:
        d = self.data
        ids = {sid for (sid, _), owner in d.assignments.items() if owner == staff_id}
        return [d.students[i] for i in sorted(ids) if d.students[i].active]

    def _is_mine(self, staff_id: int, student_id: int) -> bool:
        student = self.data.students.get(student_id)
        return (
            student is not None
            and student.active
            and staff_id in {o for (s, _), o in self.data.assignments.items() if s == student_id}
        )

    def _ref(self, student_id: int) -> StudentRef:
        s = self.data.students[student_id]
        return StudentRef(s.id, s.name, s.class_name)

    def _draft(self, v: _Visit) -> Draft:
        return Draft(v.id, self._ref(v.student_id), dict(v.answers), v.updated_at, v.revision)

    def _drafts(self, staff_id: int) -> list[_Visit]:
        """The teacher's open drafts of students still theirs, latest changed first."""
        drafts = [
            v
            for v in self.data.visits.values()
            if v.staff_id == staff_id
            and v.status is VisitStatus.DRAFT
            and self._is_mine(staff_id, v.student_id)
        ]
        return sorted(drafts, key=lambda v: (v.updated_at, v.student_id, v.id), reverse=True)

    def _writable(self, visit_id: int, revision: int) -> _Visit | None:
        v = self.data.visits.get(visit_id)
        if (
            v is None
            or v.status is not VisitStatus.DRAFT
            or v.revision != revision
            or not self._is_mine(v.staff_id, v.student_id)
        ):
            return None
        return v

    def _listing(self, f: _FollowUp) -> FollowUpListing:
        s = self.data.students[f.student_id]
        return FollowUpListing(f.id, f.kind, f.detail, s.name, s.class_name, f.due_date, f.status)

    # ---------------------------------------------------------------- the port
    def find_staff(self, channel: str, user_id: str) -> Staff | None:
        d = self.data
        if channel in STAFF_NO_CHANNELS:
            found = next((s for s in d.staff.values() if s.staff_no == user_id), None)
        else:
            sid = d.identities.get((channel, user_id))
            found = d.staff.get(sid) if sid is not None else None
        return found if found is not None and found.id in d.active_staff else None

    def load_session(self, key: ConversationKey) -> Session | None:
        stored = self.data.sessions.get(key)
        return copy.deepcopy(stored) if stored is not None else None

    def save_session(self, key: ConversationKey, session: Session, now: datetime) -> None:
        stored = self.data.sessions.get(key)
        if (stored.version if stored is not None else 0) != session.version:
            raise ConcurrentUpdate
        session.version += 1
        self.data.sessions[key] = copy.deepcopy(session)

    def seen_message(self, channel: str, user_id: str, message_id: str) -> list[str] | None:
        hit = self.data.inbound.get((channel, user_id, message_id))
        if hit is None:
            return None
        return list(hit[0]) if hit[0] is not None else []

    def remember_message(
        self, channel: str, user_id: str, message_id: str, replies: Sequence[str], now: datetime
    ) -> None:
        key = (channel, user_id, message_id)
        if key in self.data.inbound:
            raise DuplicateMessage(channel, user_id, message_id)
        self.data.inbound[key] = (list(replies), now)

    def my_students(self, staff_id: int) -> list[StudentListing]:
        visits = self.data.visits.values()

        def last(student_id: int, reached: bool) -> datetime | None:
            times = [
                v.submitted_at
                for v in visits
                if v.student_id == student_id
                and v.status is VisitStatus.SUBMITTED
                and v.reached is reached
                and v.submitted_at is not None
            ]
            return max(times, default=None)

        listing = []
        for s in self._mine(staff_id):
            drafts = [
                v.updated_at
                for v in visits
                if v.student_id == s.id and v.staff_id == staff_id and v.status is VisitStatus.DRAFT
            ]
            open_count = sum(
                1 for f in self.data.followups.values() if f.student_id == s.id and f.status in OPEN
            )
            listing.append(
                StudentListing(
                    s.id,
                    s.student_no,
                    s.name,
                    s.class_name,
                    tuple(sorted(s.categories)),
                    last(s.id, True),
                    open_count,
                    last(s.id, False),
                    max(drafts, default=None),
                )
            )
        return listing

    def find_student(
        self, staff_id: int, student_id: int
    ) -> tuple[StudentRef, Draft | None] | None:
        if not self._is_mine(staff_id, student_id):
            return None
        drafts = [v for v in self._drafts(staff_id) if v.student_id == student_id]
        return self._ref(student_id), self._draft(drafts[0]) if drafts else None

    def find_draft(self, staff_id: int) -> Draft | None:
        drafts = self._drafts(staff_id)
        return self._draft(drafts[0]) if drafts else None

    def load_draft(self, staff_id: int, visit_id: int) -> Draft | None:
        found = [v for v in self._drafts(staff_id) if v.id == visit_id]
        return self._draft(found[0]) if found else None

    def start_visit(
        self, staff_id: int, student_id: int, form_id: str, form_version: str, now: datetime
    ) -> int:
        visit_id = self._new_id()
        self.data.visits[visit_id] = _Visit(
            visit_id, student_id, staff_id, form_id, form_version, VisitStatus.DRAFT, {}, now, now
        )
        return visit_id

    def save_answers(
        self, visit_id: int, answers: dict[str, Any], revision: int, now: datetime
    ) -> bool:
        v = self._writable(visit_id, revision)
        if v is None:
            return False
        v.answers, v.revision, v.updated_at = copy.deepcopy(answers), v.revision + 1, now
        return True

    def submit_visit(
        self,
        visit_id: int,
        revision: int,
        answers: dict[str, Any],
        method: str | None,
        reached: bool,
        followups: Sequence[NewFollowUp],
        now: datetime,
    ) -> bool:
        v = self._writable(visit_id, revision)
        if v is None:
            return False
        v.status, v.answers, v.method, v.reached = (
            VisitStatus.SUBMITTED,
            copy.deepcopy(answers),
            method,
            reached,
        )
        v.revision += 1
        v.submitted_at = v.updated_at = now
        for f in followups:
            fid = self._new_id()
            self.data.followups[fid] = _FollowUp(
                fid, v.id, v.student_id, v.staff_id, f.kind, f.detail, f.due_date,
                FollowUpStatus.OPEN, now, reopens=f.reopens,
            )  # fmt: skip
        return True

    def discard_visit(self, visit_id: int, now: datetime) -> None:
        v = self.data.visits.get(visit_id)
        if v is not None and v.status is VisitStatus.DRAFT:
            v.status, v.updated_at = VisitStatus.DISCARDED, now

    def my_drafts(self, staff_id: int) -> list[Draft]:
        return [self._draft(v) for v in self._drafts(staff_id)]

    def reopen_visit(self, staff_id: int, visit_id: int, now: datetime) -> Draft | None:
        v = self.data.visits.get(visit_id)
        if (
            v is None
            or v.staff_id != staff_id
            or v.status is not VisitStatus.SUBMITTED
            or not self._is_mine(staff_id, v.student_id)
        ):
            return None
        theirs = [f for f in self.data.followups.values() if f.visit_id == visit_id]
        if any(f.status is not FollowUpStatus.OPEN for f in theirs):
            return None
        for f in theirs:
            del self.data.followups[f.id]
        v.status, v.method, v.reached, v.submitted_at = VisitStatus.DRAFT, None, None, None
        v.revision += 1
        v.updated_at = now
        return self._draft(v)

    def reopen_followup(self, staff_id: int, followup_id: int) -> FollowUpListing | None:
        f = self.data.followups.get(followup_id)
        if f is None or f.closed_by != staff_id or f.status is not FollowUpStatus.DONE:
            return None
        reopened = FollowUpStatus.ESCALATED if f.escalated_at else FollowUpStatus.OPEN
        f.status, f.closed_at, f.closed_by, f.note = reopened, None, None, None
        done = FollowUpEvent.DONE.value
        self.data.events = [e for e in self.data.events if not (e[0] == f.id and e[1] == done)]
        return self._listing(f)

    def followups_to_check(self, student_id: int) -> list[FollowUpCheck]:
        last = self._last_reached(student_id)
        found = [
            f
            for f in self.data.followups.values()
            if f.student_id == student_id
            and (
                f.status in OPEN
                or (
                    f.status is FollowUpStatus.DONE
                    and f.closed_at is not None
                    and (last is None or f.closed_at > last)
                )
            )
        ]
        unchecked = {
            fid: (item, aid)
            for aid, (fid, item, status) in self.data.allocations.items()
            if status in UNCHECKED
        }
        return [
            FollowUpCheck(
                f.id, f.kind, f.detail, f.status, f.closed_at, f.note, *unchecked.get(f.id, ("", 0))
            )
            for f in sorted(found, key=lambda f: (f.created_at, f.id))
        ]

    def add_allocation(self, followup_id: int, item: str, status: str = "delivered") -> int:
        """Seed an allocation of `item` against a follow-up (tests)."""
        aid = self._new_id()
        self.data.allocations[aid] = [followup_id, item, status]
        return aid

    def _holder(self, viewer: Staff) -> int:
        return POOL if viewer.role is StaffRole.BUREAU else (viewer.school_id or -1)

    def _school_id(self, student_id: int) -> int:
        return self.data.schools.get(self.data.students[student_id].school, -1)

    def aid_stock(self, viewer: Staff) -> dict[str, int]:
        holder = self._holder(viewer)
        return {item: n for (h, item), n in self.data.stock.items() if h == holder}

    def aid_needs(
        self,
        viewer: Staff,
        kinds: Sequence[str],
        now: datetime,
        limit: int,
        followup_id: int | None = None,
    ) -> list[OpenNeed]:
        standing = {fid for fid, _, status in self.data.allocations.values() if status in STANDING}
        names = {i: n for n, i in self.data.schools.items()}
        needs = []
        for f in self.data.followups.values():
            s = self.data.students[f.student_id]
            school = self._school_id(s.id)
            if (
                f.kind not in kinds
                or f.status not in OPEN
                or not s.active
                or f.id in standing
                or (followup_id is not None and f.id != followup_id)
                or (viewer.role is not StaffRole.BUREAU and school != viewer.school_id)
            ):
                continue
            cats = tuple(c for c in AID_CATEGORIES if c in s.categories)
            needs.append(
                OpenNeed(
                    f.id,
                    school,
                    names.get(school, ""),
                    s.name,
                    s.class_name,
                    f.kind,
                    f.detail,
                    cats,
                    max(0, (now - f.created_at).days),
                    self.data.staff[f.owner_staff_id].name,
                    self.data.staff[f.owner_staff_id].staff_no,
                )
            )
        needs.sort(key=lambda n: (-len(n.aid_categories), -n.days_open, n.followup_id))
        return needs[:limit]

    def change_aid_stock(self, viewer: Staff, item: str, change: int, now: datetime) -> int | None:
        key = (self._holder(viewer), item)
        have = self.data.stock.get(key, 0)
        if have + change < 0:
            return None
        self.data.stock[key] = have + change
        self.data.audit.append(
            (now, viewer.staff_no, "aid_stock", {"item": item, "change": change})
        )
        return have + change

    def allocate_aid(
        self, viewer: Staff, item: str, followup_id: int, method: str, tracking: str, now: datetime
    ) -> Taken:
        if any(
            fid == followup_id and status in STANDING
            for fid, _, status in self.data.allocations.values()
        ):
            return Taken(0, 0, taken=True)
        left = self.change_aid_stock(viewer, item, -1, now)
        if left is None:
            return Taken(0, self.aid_stock(viewer).get(item, 0))
        return Taken(self.add_allocation(followup_id, item, "allocated"), left)

    def deliver_aid(self, viewer: Staff, followup_id: int, now: datetime) -> str | None:
        f = self.data.followups.get(followup_id)
        if f is None:
            return None
        if viewer.role is StaffRole.TEACHER and f.owner_staff_id != viewer.id:
            return None
        if (
            viewer.role is StaffRole.COORDINATOR
            and self._school_id(f.student_id) != viewer.school_id
        ):
            return None
        for found in reversed(list(self.data.allocations.values())):
            if found[0] == followup_id and found[2] in UNCHECKED:
                if found[2] != "allocated":
                    return ""
                found[2] = "delivered"
                return str(found[1])
        return None

    def settle_allocation(self, allocation_id: int, outcome: str, now: datetime) -> bool:
        if outcome not in SETTLED:
            raise ValueError(outcome)
        found = self.data.allocations.get(allocation_id)
        if found is None or found[2] not in UNCHECKED:
            return False
        found[2] = outcome
        return True

    def open_followups(self, staff_id: int) -> list[FollowUpListing]:
        mine = [
            f
            for f in self.data.followups.values()
            if f.owner_staff_id == staff_id and f.status in OPEN
        ]
        return [self._listing(f) for f in sorted(mine, key=lambda f: (f.due_date, f.id))]

    def close_followup(
        self, staff_id: int, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None:
        f = self.data.followups.get(followup_id)
        if f is None or f.owner_staff_id != staff_id or f.status not in OPEN:
            return None
        f.status, f.closed_at, f.closed_by, f.note = FollowUpStatus.DONE, now, staff_id, note
        self._event(f.id, FollowUpEvent.DONE, staff_id, now, note=note or None)
        return self._listing(f)

    def unreached_attempts(self, student_id: int) -> list[datetime]:
        mine = sorted(
            (v for v in self.data.visits.values()
             if v.student_id == student_id and v.status is VisitStatus.SUBMITTED),
            key=lambda v: v.submitted_at or v.updated_at,
        )  # fmt: skip
        attempts: list[datetime] = []
        for v in mine:
            if v.reached:
                attempts = []
            elif v.submitted_at is not None:
                attempts.append(v.submitted_at)
        return attempts

    def school_coordinators(self, student_id: int) -> list[RosterStaff]:
        school_id = self.data.schools.get(self.data.students[student_id].school)
        if school_id is None:
            return []
        return self.coordinators_of(school_id)

    def coordinators_of(self, school_id: int) -> list[RosterStaff]:
        people = [
            s
            for s in self.data.staff.values()
            if s.school_id == school_id
            and s.role is StaffRole.COORDINATOR
            and s.id in self.data.active_staff
        ]
        return [
            RosterStaff(
                s.id, s.staff_no, s.name, s.role, s.school_id,
                {c: e for (c, e), sid in self.data.identities.items() if sid == s.id},
            )
            for s in sorted(people, key=lambda s: s.staff_no)
        ]  # fmt: skip

    def queue_message(self, message: OutboxMessage, not_before: datetime, now: datetime) -> bool:
        if message.key in self.data.outbox:
            return False
        self.data.outbox[message.key] = (message, not_before)
        return True

    def withdraw_messages(self, key_prefix: str) -> int:
        keys = [k for k in self.data.outbox if k.startswith(key_prefix)]
        for key in keys:
            del self.data.outbox[key]
        return len(keys)

    def coverage(self, staff_id: int, since: datetime, today: date) -> Coverage:
        mine = self._mine(staff_id)
        visited = sum(
            1
            for s in mine
            if any(
                v.student_id == s.id
                and v.status is VisitStatus.SUBMITTED
                and v.reached
                and v.submitted_at is not None
                and v.submitted_at >= since
                for v in self.data.visits.values()
            )
        )
        due = [
            f.due_date
            for f in self.data.followups.values()
            if f.owner_staff_id == staff_id and f.status in OPEN
        ]
        return Coverage(visited, len(mine), len(due), sum(1 for d in due if d < today))

    # ---------------------------------------------------------------- coordinators in chat
    def _event(
        self,
        followup_id: int,
        event: FollowUpEvent,
        person: int | None,
        now: datetime,
        actor: int | None = None,
        note: str | None = None,
    ) -> None:
        self.data.events.append((followup_id, event.value, now, person, actor, note))

    def _school_of(self, student_id: int) -> int:
        return self.data.schools[self.data.students[student_id].school]

    def _visible(self, viewer: Staff, f: _FollowUp) -> bool:
        student = self.data.students[f.student_id]
        if not student.active:
            return False
        if viewer.role is StaffRole.BUREAU:
            return True
        return viewer.role is StaffRole.COORDINATOR and viewer.school_id == self._school_of(
            f.student_id
        )

    def _scoped(self, f: _FollowUp) -> ScopedFollowUp:
        s, d = self.data.students[f.student_id], self.data
        holder = d.staff[f.acknowledged_by].name if f.acknowledged_by is not None else None
        return ScopedFollowUp(
            f.id, s.name, s.class_name, self._school_of(f.student_id), f.kind, f.detail,
            f.due_date, f.status, f.owner_staff_id, d.staff[f.owner_staff_id].name,
            d.staff[f.owner_staff_id].staff_no, holder,
            f.climbed_at is not None,
        )  # fmt: skip

    def scoped_followups(
        self, viewer: Staff, escalated_only: bool, today: date, limit: int | None = None
    ) -> list[ScopedFollowUp]:
        found = [
            f
            for f in self.data.followups.values()
            if self._visible(viewer, f)
            and (
                f.status is FollowUpStatus.ESCALATED
                if escalated_only
                else f.status in OPEN and f.due_date < today
            )
        ]
        found.sort(key=lambda f: (f.due_date, f.id))
        return [self._scoped(f) for f in found[:limit]]

    def scoped_followup(self, viewer: Staff, followup_id: int) -> ScopedFollowUp | None:
        f = self.data.followups.get(followup_id)
        return self._scoped(f) if f is not None and self._visible(viewer, f) else None

    def acknowledge_followup(
        self, viewer: Staff, followup_id: int, note: str, now: datetime
    ) -> bool:
        f = self.data.followups.get(followup_id)
        if (
            f is None
            or f.status is not FollowUpStatus.ESCALATED
            or f.acknowledged_by is not None
            or not self._visible(viewer, f)
        ):
            return False
        f.acknowledged_by = viewer.id
        self._event(f.id, FollowUpEvent.ACKNOWLEDGED, viewer.id, now, note=note or None)
        return True

    def close_scoped_followup(
        self, viewer: Staff, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None:
        f = self.data.followups.get(followup_id)
        if f is None or f.status not in OPEN or not self._visible(viewer, f):
            return None
        f.status, f.closed_at, f.closed_by, f.note = FollowUpStatus.DONE, now, viewer.id, note
        self._event(f.id, FollowUpEvent.DONE, viewer.id, now, note=note or None)
        return self._listing(f)

    def reassign_followup(
        self, viewer: Staff, followup_id: int, to_staff_id: int, now: datetime
    ) -> bool:
        f = self.data.followups.get(followup_id)
        to = self.data.staff.get(to_staff_id)
        if (
            f is None
            or to is None
            or to_staff_id not in self.data.active_staff
            or f.status not in OPEN
            or not self._visible(viewer, f)
            or to.school_id != self._school_of(f.student_id)
        ):
            return False
        f.owner_staff_id = to_staff_id
        self._event(f.id, FollowUpEvent.REASSIGNED, to_staff_id, now, actor=viewer.id)
        return True

    def _students_in(self, viewer: Staff) -> list[_Student]:
        d = self.data
        if viewer.role is StaffRole.BUREAU:
            return [s for s in d.students.values() if s.active]
        if viewer.role is not StaffRole.COORDINATOR:
            return []
        return [
            s for s in d.students.values() if s.active and d.schools[s.school] == viewer.school_id
        ]

    def _last_reached(self, student_id: int) -> datetime | None:
        times = [
            v.submitted_at
            for v in self.data.visits.values()
            if v.student_id == student_id and v.status is VisitStatus.SUBMITTED and v.reached
        ]
        return max((t for t in times if t is not None), default=None)

    def scoped_counts(self, viewer: Staff, today: date) -> tuple[int, int, int]:
        mine = [
            f for f in self.data.followups.values() if f.status in OPEN and self._visible(viewer, f)
        ]
        escalated = [f for f in mine if f.status is FollowUpStatus.ESCALATED]
        return (
            sum(1 for f in mine if f.due_date < today),
            len(escalated),
            sum(1 for f in escalated if f.acknowledged_by is None),
        )

    def scoped_coverage(self, viewer: Staff, since: datetime) -> list[GroupCoverage]:
        groups: dict[str, list[int]] = {}
        for s in self._students_in(viewer):
            label = s.school if viewer.role is StaffRole.BUREAU else s.class_name
            counts = groups.setdefault(label, [0, 0])
            last = self._last_reached(s.id)
            counts[0] += last is not None and last >= since
            counts[1] += 1
        return [GroupCoverage(k, v, t) for k, (v, t) in sorted(groups.items())]

    def scoped_needs(self, viewer: Staff, since: datetime) -> list[NeedCount]:
        ids = {s.id for s in self._students_in(viewer)}
        kinds: dict[str, list[int]] = {}
        for f in self.data.followups.values():
            if f.student_id in ids and (f.created_at >= since or f.status in OPEN):
                counts = kinds.setdefault(f.kind, [0, 0])
                counts[0] += f.created_at >= since
                counts[1] += f.status in OPEN
        return [NeedCount(k, found, still) for k, (found, still) in sorted(kinds.items())]

    def scoped_unvisited(self, viewer: Staff, since: datetime, limit: int) -> list[Unvisited]:
        d, found = self.data, []
        for s in self._students_in(viewer):
            last = self._last_reached(s.id)
            teacher_id = d.assignments.get((s.id, "head_teacher"))
            if (last is None or last < since) and teacher_id is not None:
                t = d.staff[teacher_id]
                found.append(Unvisited(t.name, t.staff_no, s.name, s.class_name, last))
        found.sort(
            key=lambda u: (u.teacher_no, u.last_reached is not None, u.last_reached or since,
                           u.student_name)
        )  # fmt: skip
        return found[:limit]

    def staff_member(self, staff_no: str) -> RosterStaff | None:
        d = self.data
        for s in d.staff.values():
            if s.staff_no == staff_no and s.id in d.active_staff:
                ids = {c: e for (c, e), sid in d.identities.items() if sid == s.id}
                return RosterStaff(s.id, s.staff_no, s.name, s.role, s.school_id, ids)
        return None

    # ---------------------------------------------------------------- aid reviews
    def open_review(
        self,
        reporter: Staff,
        student_id: int | None,
        name: str,
        class_name: str,
        note: str,
        now: datetime,
    ) -> AidReview | None:
        d = self.data
        if student_id is not None:
            if student_id not in d.students:
                return None
            school: int | None = self._school_of(student_id)
            s = d.students[student_id]
            name, class_name = s.name, s.class_name
        else:
            school = reporter.school_id
        if school is None:
            return None
        for r in d.reviews.values():
            same = (
                r.student_id == student_id
                if student_id is not None
                else r.reported
                and (r.student_name, r.class_name, r.school_id) == (name, class_name, school)
            )
            if same and r.status is ReviewStatus.OPEN:
                return None
        review = AidReview(
            self._new_id(), school, student_id, name, class_name, note, reporter.id,
            reporter.staff_no, reporter.name, ReviewStatus.OPEN, now, student_id is None,
        )  # fmt: skip
        d.reviews[review.id] = review
        return review

    def _decides(self, viewer: Staff, r: AidReview) -> bool:
        if viewer.role is StaffRole.BUREAU:
            return True
        return viewer.role is StaffRole.COORDINATOR and viewer.school_id == r.school_id

    def scoped_reviews(self, viewer: Staff, limit: int) -> list[AidReview]:
        found = [
            r
            for r in self.data.reviews.values()
            if r.status is ReviewStatus.OPEN and self._decides(viewer, r)
        ]
        return sorted(found, key=lambda r: (r.created_at, r.id))[:limit]

    def decide_review(
        self, viewer: Staff, review_id: int, category: str | None, reason: str, now: datetime
    ) -> AidReview | None:
        d = self.data
        r = d.reviews.get(review_id)
        if r is None or r.status is not ReviewStatus.OPEN or not self._decides(viewer, r):
            return None
        student_id, student_no = r.student_id, None
        if category:
            if student_id is None:
                student_id, student_no = self._new_id(), provisional_no(review_id)
                school = next(n for n, i in d.schools.items() if i == r.school_id)
                d.students[student_id] = _Student(
                    student_id, student_no, r.student_name, school, r.class_name, ()
                )
                d.assignments[(student_id, "head_teacher")] = r.reporter_id
            s = d.students[student_id]
            student_no = s.student_no
            if category not in s.categories:
                s.categories = (*s.categories, category)
                d.found[(student_id, category)] = (FOUND_ON_VISIT, now)
        elif student_id is not None:
            student_no = d.students[student_id].student_no
        status = ReviewStatus.APPROVED if category else ReviewStatus.DECLINED
        decided = AidReview(
            r.id, r.school_id, student_id, r.student_name, r.class_name, r.note, r.reporter_id,
            r.reporter_no, r.reporter_name, status, r.created_at, r.reported, category,
            None if category else reason, student_no,
        )  # fmt: skip
        d.reviews[review_id] = decided
        detail: dict[str, object] = {"review": review_id, "decision": status.value}
        d.audit.append((now, viewer.staff_no, "aid_review", detail))
        return decided

    def add_console_token(
        self, staff_id: int, token_hash: str, expires_at: datetime, now: datetime
    ) -> None:
        if token_hash in self.data.console_tokens:
            raise ValueError("token hash already stored")
        self.data.console_tokens[token_hash] = (staff_id, now, expires_at)

    def _active_by_no(self, staff_no: str) -> Staff | None:
        d = self.data
        found = next((s for s in d.staff.values() if s.staff_no == staff_no), None)
        return found if found is not None and found.id in d.active_staff else None

    def issue_binding_code(
        self,
        staff_no: str,
        school_id: int | None,
        code_hash: str,
        expires_at: datetime,
        now: datetime,
        actor: str,
    ) -> Staff | None:
        d = self.data
        target = self._active_by_no(staff_no)
        if target is None or (school_id is not None and target.school_id != school_id):
            return None
        d.binding_codes = {h: c for h, c in d.binding_codes.items() if c[0] != target.id or c[2]}
        d.binding_codes[code_hash] = (target.id, expires_at, False)
        d.audit.append((now, actor, "binding_code", {"staff_no": staff_no}))
        return target

    def bind_failures(self, subjects: Sequence[str], since: datetime) -> dict[str, int]:
        return {
            s: sum(1 for subject, at in self.data.bind_failures if subject == s and at >= since)
            for s in subjects
        }

    def record_bind_failure(
        self, subjects: Sequence[str], now: datetime, forget_before: datetime
    ) -> None:
        d = self.data
        d.bind_failures = [f for f in d.bind_failures if f[1] >= forget_before]
        d.bind_failures.extend((s, now) for s in subjects)

    def redeem_binding_code(
        self, channel: str, user_id: str, staff_no: str, code_hash: str, now: datetime
    ) -> tuple[BindOutcome, Staff | None]:
        d = self.data
        target = self._active_by_no(staff_no)
        owner = d.identities.get((channel, user_id))
        if target is not None and owner == target.id:
            return BindOutcome.ALREADY, target
        code = d.binding_codes.get(code_hash)
        if target is None or code is None or code[0] != target.id or code[2] or code[1] <= now:
            return BindOutcome.WRONG, None
        if owner is not None:
            return BindOutcome.TAKEN, None
        old = [k for k, sid in d.identities.items() if sid == target.id and k[0] == channel]
        for k in old:
            del d.identities[k]
        d.identities[(channel, user_id)] = target.id
        d.binding_codes[code_hash] = (target.id, code[1], True)
        detail: dict[str, object] = {
            "staff_no": staff_no,
            "channel": channel,
            "replaced": bool(old),
        }
        d.audit.append((now, staff_no, "binding", detail))
        return (BindOutcome.REPLACED if old else BindOutcome.BOUND), target


class MemoryTurns:
    """Implements `bot.core.ports.Turns` over one `MemoryStore`: a turn at a time, all or none."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[[Store], T], *, deadline: float | None = None) -> T:
        async with self._lock:
            before = copy.deepcopy(self.store.data)
            try:
                return fn(self.store)
            except BaseException:
                self.store.data = before
                raise
