"""`SqlStore`: the core `Store` port over one SQLAlchemy connection (one transaction)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bot.core.aid import SETTLED, UNCHECKED, OpenNeed, Taken
from bot.core.binding import BindOutcome
from bot.core.channels import STAFF_NO_CHANNELS
from bot.core.errors import ConcurrentUpdate, DuplicateMessage
from bot.core.ports import Store
from bot.core.reviews import AidReview, ReviewStatus
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
from storage import aid, binding, outbox, reviews
from storage.db import Database
from storage.fastsql import Prepared
from storage.schema import (
    aid_allocations,
    assignments,
    console_tokens,
    conversations,
    followup_events,
    followups,
    identities,
    inbound_messages,
    schools,
    staff,
    student_categories,
    students,
    visits,
)
from storage.snapshot import last_seen

T = TypeVar("T")

OPEN_STATES = (FollowUpStatus.OPEN.value, FollowUpStatus.ESCALATED.value)


class HeldWriteMissed(Exception):
    """A write held back for the end of the turn found no row to change (see `SqlStore.flush`).

    Its method had already answered True, so `SqlTurns` rolls the turn back and runs it again
    with every write sent at once, where the method's answer is exact. Never leaves storage.
    """


# Statements on the per-message path are built once; SQLAlchemy caches their compiled form.
_STAFF_COLS = (staff.c.id, staff.c.staff_no, staff.c.name, staff.c.role, staff.c.school_id)
_STAFF_BY_NO = select(*_STAFF_COLS).where(
    staff.c.staff_no == bindparam("user_id"), staff.c.active.is_(True)
)
_STAFF_BY_IDENTITY = (
    select(*_STAFF_COLS)
    .join(identities, identities.c.staff_id == staff.c.id)
    .where(
        identities.c.channel == bindparam("channel"),
        identities.c.external_id == bindparam("user_id"),
        staff.c.active.is_(True),
    )
)
_SESSION = (
    select(
        conversations.c.state,
        conversations.c.data,
        conversations.c.version,
        conversations.c.expires_at,
        conversations.c.listing,
    )
    .where(
        conversations.c.channel == bindparam("channel"),
        conversations.c.user_id == bindparam("user_id"),
    )
    .with_for_update()
)
_SESSION_UPDATE = (
    update(conversations)
    .where(
        conversations.c.channel == bindparam("k_channel"),
        conversations.c.user_id == bindparam("k_user_id"),
        conversations.c.version == bindparam("old_version"),
    )
    .values(
        state=bindparam("state"),
        data=bindparam("data"),
        listing=bindparam("listing"),
        version=bindparam("new_version"),
        expires_at=bindparam("expires_at"),
        updated_at=bindparam("now"),
    )
)
_MY_STUDENT_IDS = select(assignments.c.student_id).where(
    assignments.c.staff_id == bindparam("staff_id")
)
# A draft its teacher may still change: not closed, at the revision the session saw, and of a
# student still assigned to them (a roster import may have moved the student since).
_WRITABLE_DRAFT = and_(
    visits.c.id == bindparam("visit_id"),
    visits.c.status == VisitStatus.DRAFT.value,
    visits.c.revision == bindparam("revision"),
    exists().where(
        assignments.c.student_id == visits.c.student_id,
        assignments.c.staff_id == visits.c.staff_id,
    ),
    exists().where(students.c.id == visits.c.student_id, students.c.active.is_(True)),
)
_SAVE_ANSWERS = (
    update(visits)
    .where(_WRITABLE_DRAFT)
    .values(
        answers=bindparam("answers"),
        revision=visits.c.revision + 1,
        updated_at=bindparam("now"),
    )
)
_SEEN = select(inbound_messages.c.replies).where(
    inbound_messages.c.channel == bindparam("channel"),
    inbound_messages.c.user_id == bindparam("user_id"),
    inbound_messages.c.message_id == bindparam("message_id"),
)

_SESSION_INSERT = insert(conversations)
_REMEMBER = {
    name: make(inbound_messages)
    .values(  # named, so that it also serves as a CTE of held writes (see `_HOLDABLE`)
        channel=bindparam("channel"),
        user_id=bindparam("user_id"),
        message_id=bindparam("message_id"),
        replies=bindparam("replies"),
        received_at=bindparam("received_at"),
    )
    .on_conflict_do_nothing(index_elements=["channel", "user_id", "message_id"])
    .returning(inbound_messages.c.message_id)
    for name, make in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
_START_VISIT = (
    insert(visits)
    .values(
        student_id=bindparam("student_id"),
        staff_id=bindparam("staff_id"),
        form_id=bindparam("form_id"),
        form_version=bindparam("form_version"),
        status=VisitStatus.DRAFT.value,
        answers=bindparam("answers"),
        revision=0,
        started_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .returning(visits.c.id)
)

_SUBMITTED = and_(
    visits.c.student_id == students.c.id, visits.c.status == VisitStatus.SUBMITTED.value
)
_MY_STUDENTS = select(
    students.c.id,
    students.c.student_no,
    students.c.name,
    students.c.class_name,
    select(func.max(visits.c.submitted_at))
    .where(_SUBMITTED, visits.c.reached.is_(True))
    .scalar_subquery()
    .label("last_reached"),
    select(func.max(visits.c.submitted_at))
    .where(_SUBMITTED, visits.c.reached.is_(False))
    .scalar_subquery()
    .label("last_unreached"),
    select(func.count())
    .select_from(followups)
    .where(
        followups.c.student_id == students.c.id,
        or_(*(followups.c.status == state for state in OPEN_STATES)),  # IN (...) would expand
    )
    .scalar_subquery()
    .label("open_count"),
    # string_agg / group_concat; a category never holds a comma (the roster splits on it). The
    # separator is a literal: a bound one would be a post-compile parameter, which the prepared
    # statement (storage.fastsql) cannot carry.
    select(
        func.aggregate_strings(
            student_categories.c.category,
            literal_column("','"),  # type: ignore[arg-type]
        )
    )
    .where(student_categories.c.student_id == students.c.id)
    .scalar_subquery()
    .label("categories"),
    select(func.max(visits.c.updated_at))
    .where(
        visits.c.student_id == students.c.id,
        visits.c.staff_id == bindparam("staff_id"),
        visits.c.status == VisitStatus.DRAFT.value,
    )
    .scalar_subquery()
    .label("draft_at"),
).where(students.c.id.in_(_MY_STUDENT_IDS), students.c.active.is_(True))
_SUBMIT = (
    update(visits)
    .where(_WRITABLE_DRAFT)
    .values(
        status=VisitStatus.SUBMITTED.value,
        answers=bindparam("answers"),
        revision=visits.c.revision + 1,
        method=bindparam("method"),
        reached=bindparam("reached"),
        submitted_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .returning(visits.c.student_id, visits.c.staff_id)
)
_ADD_FOLLOWUPS = insert(followups)
# A student's follow-ups the next visit asks about: open ones, and those done since the last
# visit that reached the family, with an aid item allocated against each and not checked yet.
# (Comparisons spelt out rather than IN lists, so that the statement can be prepared.)
_LAST_REACHED = (
    select(students.c.last_reached_at)
    .where(students.c.id == bindparam("student_id"))
    .scalar_subquery()
)
_FOLLOWUPS_TO_CHECK = (
    select(
        followups.c.id,
        followups.c.kind,
        followups.c.detail,
        followups.c.status,
        followups.c.closed_at,
        followups.c.note,
        aid_allocations.c.item,
        aid_allocations.c.id.label("allocation_id"),
    )
    .outerjoin(
        aid_allocations,
        and_(
            aid_allocations.c.active_followup_id == followups.c.id,
            or_(*(aid_allocations.c.status == state for state in UNCHECKED)),
        ),
    )
    .where(
        followups.c.student_id == bindparam("student_id"),
        or_(
            *(followups.c.status == state for state in OPEN_STATES),
            and_(
                followups.c.status == FollowUpStatus.DONE.value,
                or_(_LAST_REACHED.is_(None), followups.c.closed_at > _LAST_REACHED),
            ),
        ),
    )
    .order_by(followups.c.created_at, followups.c.id)
)
# An active student of the teacher's, with the teacher's open draft for them if there is one.
_STUDENT_AND_DRAFT = (
    select(
        students.c.name,
        students.c.class_name,
        visits.c.id,
        visits.c.answers,
        visits.c.updated_at,
        visits.c.revision,
    )
    .select_from(
        students.outerjoin(
            visits,
            and_(
                visits.c.student_id == students.c.id,
                visits.c.staff_id == bindparam("staff_id"),
                visits.c.status == VisitStatus.DRAFT.value,
            ),
        )
    )
    .where(
        students.c.id == bindparam("student_id"),
        students.c.id.in_(_MY_STUDENT_IDS),
        students.c.active.is_(True),
    )
    .order_by(visits.c.updated_at.desc(), visits.c.id.desc())
    .limit(1)
)
_DRAFTS = (
    select(
        visits.c.id,
        visits.c.student_id,
        visits.c.answers,
        visits.c.updated_at,
        students.c.name,
        students.c.class_name,
        visits.c.revision,
    )
    .join(students, students.c.id == visits.c.student_id)
    .where(
        visits.c.staff_id == bindparam("staff_id"),
        visits.c.status == VisitStatus.DRAFT.value,
        students.c.active.is_(True),
        students.c.id.in_(_MY_STUDENT_IDS),  # a draft of a student reassigned since is not theirs
    )
)
# (the order the student list uses to name the draft 继续 resumes: see CheckIn._list)
_LATEST_DRAFT = _DRAFTS.order_by(
    visits.c.updated_at.desc(), visits.c.student_id.desc(), visits.c.id.desc()
).limit(1)
_DRAFT_BY_ID = _DRAFTS.where(visits.c.id == bindparam("visit_id"))

# The four statements of an ordinary answer, on the driver's cursor (see storage.fastsql).
_FAST_SESSION = Prepared(_SESSION, _SESSION.selected_columns)
_FAST_SESSION_UPDATE = Prepared(_SESSION_UPDATE)
_FAST_SAVE_ANSWERS = Prepared(_SAVE_ANSWERS)
_FAST_SUBMIT = Prepared(_SUBMIT, [visits.c.student_id, visits.c.staff_id])
# ... and of choosing a student (the list, the pick, the new draft)
_FAST_MY_STUDENTS = Prepared(_MY_STUDENTS, _MY_STUDENTS.selected_columns)
_FAST_LATEST_DRAFT = Prepared(_LATEST_DRAFT, _LATEST_DRAFT.selected_columns)
_FAST_STUDENT_AND_DRAFT = Prepared(_STUDENT_AND_DRAFT, _STUDENT_AND_DRAFT.selected_columns)
_FAST_START_VISIT = Prepared(_START_VISIT, [visits.c.id])
# ... and of the next visit's questions about earlier follow-ups (each pick of a student)
_FAST_FOLLOWUPS_TO_CHECK = Prepared(_FOLLOWUPS_TO_CHECK, _FOLLOWUPS_TO_CHECK.selected_columns)
_FAST_REMEMBER = {
    name: Prepared(stmt, [inbound_messages.c.message_id]) for name, stmt in _REMEMBER.items()
}


# Writes the store may hold back until the end of a turn on PostgreSQL, and what each must change
# (one row). Their bind names are distinct, except values the turn shares.
_HOLDABLE: dict[str, Any] = {
    "answers": _SAVE_ANSWERS.returning(visits.c.id),
    "session": _SESSION_UPDATE.returning(conversations.c.version),
    "remember": _REMEMBER["postgresql"],
}
_HELD_BATCHES: dict[tuple[str, ...], Prepared] = {}


def _held_batch(names: tuple[str, ...]) -> Prepared:
    """One statement running the held writes as data-modifying CTEs, selecting their counts."""
    batch = _HELD_BATCHES.get(names)
    if batch is None:
        ctes = [_HOLDABLE[name].cte(f"held_{name}") for name in names]
        counts = [select(func.count()).select_from(cte).scalar_subquery() for cte in ctes]
        batch = _HELD_BATCHES[names] = Prepared(select(*counts))
    return batch


def _draft(row: Any) -> Draft:
    visit_id, student_id, answers, updated_at, name, class_name, revision = row
    student = StudentRef(student_id, name, class_name)
    return Draft(visit_id, student, dict(answers), updated_at, revision)


def _staff(row: Any) -> Staff:
    return Staff(row.id, row.staff_no, row.name, StaffRole(row.role), row.school_id)


class SqlStore:
    """Implements `bot.core.ports.Store`. Every method runs inside the caller's transaction.

    With `hold_writes` on PostgreSQL, the writes that end an ordinary turn (the draft's answers,
    the session, the message id) are held back and sent as one statement by `flush`, or before
    the next statement of any other kind, so the order of reads and writes is unchanged. An
    answer turn then costs four round trips instead of six (BEGIN, the session read, the writes,
    COMMIT); each round trip costs the server process CPU and a thread wake-up. A held write
    answers optimistically; if `flush` finds it changed nothing, it raises and the caller runs
    the turn again without holding (`HeldWriteMissed`), or treats it as the conflict it is
    (`DuplicateMessage`, `ConcurrentUpdate`). SQLite has no round trips to save and no
    data-modifying CTEs: there every write goes out at once. Held values are serialized when
    they are sent, so a caller must not change a dict it has passed (the conversation builds a
    new one for every change; copying here would cost more than the round trip saved).
    """

    def __init__(self, conn: Connection, *, hold_writes: bool = False) -> None:
        self._conn = conn
        self._hold = hold_writes and conn.dialect.name == "postgresql"
        self._held: list[tuple[str, dict[str, Any]]] = []

    @property
    def conn(self) -> Connection:
        """The connection, once the writes held so far have gone out."""
        if self._held:
            self.flush()
        return self._conn

    def _hold_write(self, name: str, params: dict[str, Any]) -> None:
        for held_name, held in self._held:
            # (the keys both share, intersected in C: only `now` in practice)
            clash = held_name == name or any(held[k] != params[k] for k in held.keys() & params)
            if clash:  # one statement cannot carry both: send what is held first
                self.flush()
                break
        self._held.append((name, params))

    def flush(self) -> None:
        """Send the held writes (one statement); raise if one of them changed nothing."""
        held, self._held = self._held, []
        if not held:
            return
        params: dict[str, Any] = {}
        for _, p in held:
            params.update(p)
        names = tuple([name for name, _ in held])
        rows, _ = _held_batch(names).execute(self._conn, params)
        changed = dict(zip(names, rows[0], strict=True))
        if changed.get("remember") == 0:
            raise DuplicateMessage(params["channel"], params["user_id"], params["message_id"])
        if changed.get("session") == 0:
            raise ConcurrentUpdate
        if changed.get("answers") == 0:
            raise HeldWriteMissed

    # ---------------------------------------------------------------- staff and sessions
    def find_staff(self, channel: str, user_id: str) -> Staff | None:
        stmt = _STAFF_BY_NO if channel in STAFF_NO_CHANNELS else _STAFF_BY_IDENTITY
        row = self.conn.execute(stmt, {"channel": channel, "user_id": user_id}).first()
        return _staff(row) if row else None

    def load_session(self, key: ConversationKey) -> Session | None:
        rows, _ = _FAST_SESSION.execute(self.conn, {"channel": key.channel, "user_id": key.user_id})
        if not rows:
            return None
        state, data, version, expires_at, listing = rows[0]
        return Session(state, dict(data), expires_at, version, listing)

    def save_session(self, key: ConversationKey, session: Session, now: datetime) -> None:
        if session.version == 0:
            try:
                with self.conn.begin_nested():
                    self.conn.execute(
                        _SESSION_INSERT,
                        {
                            "channel": key.channel,
                            "user_id": key.user_id,
                            "state": session.state,
                            "data": session.data,
                            "listing": session.listing,
                            "version": 1,
                            "expires_at": session.expires_at,
                            "updated_at": now,
                        },
                    )
            except IntegrityError as exc:
                raise ConcurrentUpdate from exc
        else:
            params = {
                "k_channel": key.channel,
                "k_user_id": key.user_id,
                "old_version": session.version,
                "new_version": session.version + 1,
                "state": session.state,
                "data": session.data,
                "listing": session.listing,
                "expires_at": session.expires_at,
                "now": now,
            }
            if self._hold:
                self._hold_write("session", params)
            else:
                _, count = _FAST_SESSION_UPDATE.execute(self.conn, params)
                if count != 1:
                    raise ConcurrentUpdate
        session.version += 1

    # ---------------------------------------------------------------- inbound de-duplication
    def seen_message(self, channel: str, user_id: str, message_id: str) -> list[str] | None:
        params = {"channel": channel, "user_id": user_id, "message_id": message_id}
        row = self.conn.execute(_SEEN, params).first()
        if row is None:
            return None
        return list(row.replies) if row.replies is not None else []

    def remember_message(
        self, channel: str, user_id: str, message_id: str, replies: Sequence[str], now: datetime
    ) -> None:
        params = {
            "channel": channel,
            "user_id": user_id,
            "message_id": message_id,
            "replies": list(replies),
            "received_at": now,
        }
        if self._hold:
            self._hold_write("remember", params)  # a known id raises DuplicateMessage at flush
            return
        rows, _ = _FAST_REMEMBER[self.conn.dialect.name].execute(self.conn, params)
        if not rows:
            raise DuplicateMessage(channel, user_id, message_id)

    # ---------------------------------------------------------------- students and visits
    def my_students(self, staff_id: int) -> list[StudentListing]:
        """The teacher's active students, unsorted (the conversation orders them by urgency)."""
        rows, _ = _FAST_MY_STUDENTS.execute(self.conn, {"staff_id": staff_id})
        return [
            StudentListing(
                sid,
                student_no,
                name,
                class_name,
                tuple(sorted(categories.split(","))) if categories else (),
                last_reached,
                open_count,
                last_unreached,
                draft_at,
            )
            for (
                sid,
                student_no,
                name,
                class_name,
                last_reached,
                last_unreached,
                open_count,
                categories,
                draft_at,
            ) in rows
        ]

    def find_student(
        self, staff_id: int, student_id: int
    ) -> tuple[StudentRef, Draft | None] | None:
        params = {"staff_id": staff_id, "student_id": student_id}
        rows, _ = _FAST_STUDENT_AND_DRAFT.execute(self.conn, params)
        if not rows:
            return None
        name, class_name, visit_id, answers, updated_at, revision = rows[0]
        student = StudentRef(student_id, name, class_name)
        if visit_id is None:
            return student, None
        return student, Draft(visit_id, student, dict(answers), updated_at, revision)

    def find_draft(self, staff_id: int) -> Draft | None:
        rows, _ = _FAST_LATEST_DRAFT.execute(self.conn, {"staff_id": staff_id})
        return _draft(rows[0]) if rows else None

    def load_draft(self, staff_id: int, visit_id: int) -> Draft | None:
        rows = self.conn.execute(_DRAFT_BY_ID, {"staff_id": staff_id, "visit_id": visit_id}).all()
        return _draft(rows[0]) if rows else None

    def start_visit(
        self, staff_id: int, student_id: int, form_id: str, form_version: str, now: datetime
    ) -> int:
        rows, _ = _FAST_START_VISIT.execute(
            self.conn,
            {
                "student_id": student_id,
                "staff_id": staff_id,
                "form_id": form_id,
                "form_version": form_version,
                "answers": {},
                "now": now,
            },
        )
        return int(rows[0][0])

    def save_answers(
        self, visit_id: int, answers: dict[str, Any], revision: int, now: datetime
    ) -> bool:
        params = {"visit_id": visit_id, "answers": answers, "revision": revision, "now": now}
        if self._hold:
            self._hold_write("answers", params)  # no draft any more: HeldWriteMissed at flush
            return True
        _, count = _FAST_SAVE_ANSWERS.execute(self.conn, params)
        return count == 1

    def submit_visit(
        self,
        visit_id: int,
        revision: int,
        answers: dict[str, Any],
        method: str | None,
        reached: bool,
        followups_: Sequence[NewFollowUp],
        now: datetime,
    ) -> bool:
        rows, _ = _FAST_SUBMIT.execute(
            self.conn,
            {
                "visit_id": visit_id,
                "revision": revision,
                "answers": answers,
                "method": method,
                "reached": reached,
                "now": now,
            },
        )
        if not rows:  # closed, changed or reassigned meanwhile (see _WRITABLE_DRAFT)
            return False
        student_id, staff_id = rows[0]
        if followups_:
            self.conn.execute(
                _ADD_FOLLOWUPS,
                [
                    {
                        "visit_id": visit_id,
                        "student_id": student_id,
                        "owner_staff_id": staff_id,
                        "kind": f.kind,
                        "detail": f.detail,
                        "due_date": f.due_date,
                        "status": FollowUpStatus.OPEN.value,
                        "created_at": now,
                        "reopens": f.reopens,
                    }
                    for f in followups_
                ],
            )
        return True

    def discard_visit(self, visit_id: int, now: datetime) -> None:
        self.conn.execute(
            update(visits)
            .where(visits.c.id == visit_id, visits.c.status == VisitStatus.DRAFT.value)
            .values(status=VisitStatus.DISCARDED.value, updated_at=now)
        )

    def my_drafts(self, staff_id: int) -> list[Draft]:
        order = (visits.c.updated_at.desc(), visits.c.student_id.desc(), visits.c.id.desc())
        rows = self.conn.execute(_DRAFTS.order_by(*order), {"staff_id": staff_id}).all()
        return [_draft(row) for row in rows]

    def reopen_visit(self, staff_id: int, visit_id: int, now: datetime) -> Draft | None:
        conn = self.conn
        theirs = conn.execute(
            select(visits.c.id)
            .where(
                visits.c.id == visit_id,
                visits.c.staff_id == staff_id,
                visits.c.status == VisitStatus.SUBMITTED.value,
                students.c.id == visits.c.student_id,
                students.c.active.is_(True),
                students.c.id.in_(_MY_STUDENT_IDS),
            )
            .with_for_update(of=visits),
            {"staff_id": staff_id},
        ).first()
        acted_on = exists().where(
            followups.c.visit_id == visit_id, followups.c.status != FollowUpStatus.OPEN.value
        )
        if theirs is None or conn.execute(select(acted_on)).scalar():
            return None
        conn.execute(delete(followups).where(followups.c.visit_id == visit_id))
        conn.execute(
            update(visits)
            .where(visits.c.id == visit_id)
            .values(
                status=VisitStatus.DRAFT.value,
                method=None,
                reached=None,
                submitted_at=None,
                revision=visits.c.revision + 1,
                updated_at=now,
            )
        )
        return self.load_draft(staff_id, visit_id)

    # ---------------------------------------------------------------- follow-ups
    def _followup_query(self) -> Any:
        return select(
            followups.c.id,
            followups.c.kind,
            followups.c.detail,
            followups.c.due_date,
            followups.c.status,
            students.c.name,
            students.c.class_name,
        ).join(students, students.c.id == followups.c.student_id)

    @staticmethod
    def _listing(row: Any) -> FollowUpListing:
        return FollowUpListing(
            row.id,
            row.kind,
            row.detail,
            row.name,
            row.class_name,
            row.due_date,
            FollowUpStatus(row.status),
        )

    def followups_to_check(self, student_id: int) -> list[FollowUpCheck]:
        rows, _ = _FAST_FOLLOWUPS_TO_CHECK.execute(self.conn, {"student_id": student_id})
        return [
            FollowUpCheck(
                fid,
                kind,
                detail,
                FollowUpStatus(status),
                closed_at,
                note,
                item or "",
                allocation_id or 0,
            )
            for fid, kind, detail, status, closed_at, note, item, allocation_id in rows
        ]

    def aid_stock(self, viewer: Staff) -> dict[str, int]:
        return aid.stock_counts(self.conn, viewer)

    def aid_needs(
        self,
        viewer: Staff,
        kinds: Sequence[str],
        now: datetime,
        limit: int,
        followup_id: int | None = None,
    ) -> list[OpenNeed]:
        return aid.needs_in_scope(self.conn, viewer, kinds, now, limit, followup_id)

    def change_aid_stock(self, viewer: Staff, item: str, change: int, now: datetime) -> int | None:
        return aid.change_in_chat(self.conn, viewer, item, change, now)

    def allocate_aid(
        self, viewer: Staff, item: str, followup_id: int, method: str, tracking: str, now: datetime
    ) -> Taken:
        return aid.allocate_in_chat(self.conn, viewer, item, followup_id, method, tracking, now)

    def deliver_aid(self, viewer: Staff, followup_id: int, now: datetime) -> str | None:
        return aid.deliver_in_chat(self.conn, viewer, followup_id, now)

    def settle_allocation(self, allocation_id: int, outcome: str, now: datetime) -> bool:
        if outcome not in SETTLED:
            raise ValueError(outcome)
        a = aid_allocations
        values: dict[str, Any] = {"status": outcome, "checked_at": now}
        if outcome != "in_use":  # the need is open for another allocation
            values["active_followup_id"] = None
        done = self.conn.execute(
            update(a).where(a.c.id == allocation_id, a.c.status.in_(UNCHECKED)).values(values)
        ).rowcount
        return bool(done)

    def open_followups(self, staff_id: int) -> list[FollowUpListing]:
        rows = self.conn.execute(
            self._followup_query()
            .where(followups.c.owner_staff_id == staff_id, followups.c.status.in_(OPEN_STATES))
            .order_by(followups.c.due_date, followups.c.id)
        )
        return [self._listing(r) for r in rows]

    def close_followup(
        self, staff_id: int, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None:
        result = self.conn.execute(
            update(followups)
            .where(
                followups.c.id == followup_id,
                followups.c.owner_staff_id == staff_id,
                followups.c.status.in_(OPEN_STATES),
            )
            .values(status=FollowUpStatus.DONE.value, closed_at=now, closed_by=staff_id, note=note)
        )
        if result.rowcount != 1:
            return None
        self._event(followup_id, FollowUpEvent.DONE, staff_id, now, note=note or None)
        row = self.conn.execute(self._followup_query().where(followups.c.id == followup_id)).one()
        return self._listing(row)

    def reopen_followup(self, staff_id: int, followup_id: int) -> FollowUpListing | None:
        result = self.conn.execute(
            update(followups)
            .where(
                followups.c.id == followup_id,
                followups.c.closed_by == staff_id,
                followups.c.status == FollowUpStatus.DONE.value,
            )
            .values(
                # an escalated one goes back on the ladder where it was, not to the bottom
                status=case(
                    (followups.c.escalated_at.is_not(None), FollowUpStatus.ESCALATED.value),
                    else_=FollowUpStatus.OPEN.value,
                ),
                closed_at=None,
                closed_by=None,
                note=None,
            )
        )
        if result.rowcount != 1:
            return None
        self.conn.execute(  # (its 完成 taken back: no longer part of its history)
            delete(followup_events).where(
                followup_events.c.followup_id == followup_id,
                followup_events.c.event == FollowUpEvent.DONE.value,
            )
        )
        row = self.conn.execute(self._followup_query().where(followups.c.id == followup_id)).one()
        return self._listing(row)

    def unreached_attempts(self, student_id: int) -> list[datetime]:
        submitted = (visits.c.student_id == student_id) & (
            visits.c.status == VisitStatus.SUBMITTED.value
        )
        last_reached = (
            select(func.max(visits.c.submitted_at))
            .where(submitted, visits.c.reached.is_(True))
            .scalar_subquery()
        )
        rows = self.conn.execute(
            select(visits.c.submitted_at)
            .where(
                submitted,
                visits.c.reached.is_(False),
                or_(last_reached.is_(None), visits.c.submitted_at > last_reached),
            )
            .order_by(visits.c.submitted_at)
        )
        return [r.submitted_at for r in rows]

    def school_coordinators(self, student_id: int) -> list[RosterStaff]:
        school = select(students.c.school_id).where(students.c.id == student_id).scalar_subquery()
        return self._coordinators(school)

    def coordinators_of(self, school_id: int) -> list[RosterStaff]:
        return self._coordinators(school_id)

    def _coordinators(self, school: Any) -> list[RosterStaff]:
        people = self.conn.execute(
            select(staff.c.id, staff.c.staff_no, staff.c.name, staff.c.school_id)
            .where(
                staff.c.school_id == school,
                staff.c.role == StaffRole.COORDINATOR.value,
                staff.c.active.is_(True),
            )
            .order_by(staff.c.staff_no)
        ).all()
        ids: dict[int, dict[str, str]] = {p.id: {} for p in people}
        if ids:
            for staff_id, channel, external in self.conn.execute(
                select(identities.c.staff_id, identities.c.channel, identities.c.external_id).where(
                    identities.c.staff_id.in_(list(ids))
                )
            ):
                ids[staff_id][channel] = external
        seen = last_seen(self.conn, list(ids)) if ids else {}
        return [
            RosterStaff(
                p.id,
                p.staff_no,
                p.name,
                StaffRole.COORDINATOR,
                p.school_id,
                ids[p.id],
                seen.get(p.id, {}),
            )
            for p in people
        ]

    def queue_message(self, message: OutboxMessage, not_before: datetime, now: datetime) -> bool:
        return outbox.enqueue(
            self.conn,
            key=message.key,
            channel=message.channel,
            recipient=message.recipient,
            kind=message.kind,
            body=message.body,
            not_before=not_before,
            now=now,
            fallbacks=message.fallbacks,
            listing=message.listing,
        )

    def withdraw_messages(self, key_prefix: str) -> int:
        return outbox.withdraw(self.conn, key_prefix)

    def coverage(self, staff_id: int, since: datetime, today: date) -> Coverage:
        mine = and_(students.c.id.in_(_MY_STUDENT_IDS), students.c.active.is_(True))
        visited_recently = exists().where(
            visits.c.student_id == students.c.id,
            visits.c.status == VisitStatus.SUBMITTED.value,
            visits.c.reached.is_(True),
            visits.c.submitted_at >= since,
        )
        params = {"staff_id": staff_id}
        total = self.conn.execute(select(func.count()).where(mine), params).scalar_one()
        visited = self.conn.execute(
            select(func.count()).where(mine, visited_recently), params
        ).scalar_one()
        open_rows = self.conn.execute(
            select(followups.c.due_date).where(
                followups.c.owner_staff_id == staff_id, followups.c.status.in_(OPEN_STATES)
            )
        ).all()
        overdue = sum(1 for r in open_rows if r.due_date < today)
        return Coverage(visited, total, len(open_rows), overdue)

    # ---------------------------------------------------------------- coordinators in chat
    @staticmethod
    def _scope(viewer: Staff) -> Any:
        """The students a viewer may act on: their school's, or every school's (bureau)."""
        if viewer.role is StaffRole.BUREAU:
            return students.c.active.is_(True)
        if viewer.role is StaffRole.COORDINATOR and viewer.school_id is not None:
            return and_(students.c.active.is_(True), students.c.school_id == viewer.school_id)
        return literal_column("1") == literal_column("0")

    def _scoped_query(self, viewer: Staff) -> Any:
        owner, holder = staff.alias("owner"), staff.alias("holder")
        return (
            select(
                followups.c.id,
                students.c.name.label("student_name"),
                students.c.class_name,
                students.c.school_id,
                followups.c.kind,
                followups.c.detail,
                followups.c.due_date,
                followups.c.status,
                followups.c.owner_staff_id,
                owner.c.name.label("owner_name"),
                owner.c.staff_no.label("owner_no"),
                holder.c.name.label("holder_name"),
                followups.c.climbed_at,
            )
            .select_from(
                followups.join(students, students.c.id == followups.c.student_id)
                .join(owner, owner.c.id == followups.c.owner_staff_id)
                .outerjoin(holder, holder.c.id == followups.c.acknowledged_by)
            )
            .where(self._scope(viewer))
        )

    @staticmethod
    def _scoped(row: Any) -> ScopedFollowUp:
        return ScopedFollowUp(
            row.id,
            row.student_name,
            row.class_name,
            row.school_id,
            row.kind,
            row.detail,
            row.due_date,
            FollowUpStatus(row.status),
            row.owner_staff_id,
            row.owner_name,
            row.owner_no,
            row.holder_name,
            row.climbed_at is not None,
        )

    def scoped_followups(
        self, viewer: Staff, escalated_only: bool, today: date, limit: int | None = None
    ) -> list[ScopedFollowUp]:
        which = (
            followups.c.status == FollowUpStatus.ESCALATED.value
            if escalated_only
            else and_(followups.c.status.in_(OPEN_STATES), followups.c.due_date < today)
        )
        rows = self.conn.execute(
            self._scoped_query(viewer)
            .where(which)
            .order_by(followups.c.due_date, followups.c.id)
            .limit(limit)
        )
        return [self._scoped(r) for r in rows]

    def scoped_followup(self, viewer: Staff, followup_id: int) -> ScopedFollowUp | None:
        row = self.conn.execute(
            self._scoped_query(viewer).where(followups.c.id == followup_id)
        ).first()
        return self._scoped(row) if row else None

    def _in_scope(self, viewer: Staff) -> Any:
        return exists().where(students.c.id == followups.c.student_id, self._scope(viewer))

    def _event(
        self,
        followup_id: int,
        event: FollowUpEvent,
        person: int | None,
        now: datetime,
        actor: int | None = None,
        note: str | None = None,
    ) -> None:
        self.conn.execute(
            insert(followup_events).values(
                followup_id=followup_id,
                event=event.value,
                at=now,
                staff_id=person,
                actor_id=actor,
                note=note,
            )
        )

    def acknowledge_followup(
        self, viewer: Staff, followup_id: int, note: str, now: datetime
    ) -> bool:
        result = self.conn.execute(
            update(followups)
            .where(
                followups.c.id == followup_id,
                followups.c.status == FollowUpStatus.ESCALATED.value,
                followups.c.acknowledged_by.is_(None),
                self._in_scope(viewer),
            )
            .values(acknowledged_by=viewer.id, acknowledged_at=now)
        )
        if result.rowcount != 1:
            return False
        self._event(followup_id, FollowUpEvent.ACKNOWLEDGED, viewer.id, now, note=note or None)
        return True

    def close_scoped_followup(
        self, viewer: Staff, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None:
        result = self.conn.execute(
            update(followups)
            .where(
                followups.c.id == followup_id,
                followups.c.status.in_(OPEN_STATES),
                self._in_scope(viewer),
            )
            .values(status=FollowUpStatus.DONE.value, closed_at=now, closed_by=viewer.id, note=note)
        )
        if result.rowcount != 1:
            return None
        self._event(followup_id, FollowUpEvent.DONE, viewer.id, now, note=note or None)
        row = self.conn.execute(self._followup_query().where(followups.c.id == followup_id)).one()
        return self._listing(row)

    def reassign_followup(
        self, viewer: Staff, followup_id: int, to_staff_id: int, now: datetime
    ) -> bool:
        same_school = exists().where(
            students.c.id == followups.c.student_id,
            staff.c.id == to_staff_id,
            staff.c.active.is_(True),
            staff.c.school_id == students.c.school_id,
        )
        result = self.conn.execute(
            update(followups)
            .where(
                followups.c.id == followup_id,
                followups.c.status.in_(OPEN_STATES),
                self._in_scope(viewer),
                same_school,
            )
            .values(owner_staff_id=to_staff_id)
        )
        if result.rowcount != 1:
            return False
        self._event(followup_id, FollowUpEvent.REASSIGNED, to_staff_id, now, actor=viewer.id)
        return True

    def scoped_counts(self, viewer: Staff, today: date) -> tuple[int, int, int]:
        escalated = followups.c.status == FollowUpStatus.ESCALATED.value
        row = self.conn.execute(
            select(
                func.sum(case((followups.c.due_date < today, 1), else_=0)),
                func.sum(case((escalated, 1), else_=0)),
                func.sum(
                    case((and_(escalated, followups.c.acknowledged_by.is_(None)), 1), else_=0)
                ),
            )
            .select_from(followups.join(students, students.c.id == followups.c.student_id))
            .where(self._scope(viewer), followups.c.status.in_(OPEN_STATES))
        ).one()
        return (int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))

    def scoped_coverage(self, viewer: Staff, since: datetime) -> list[GroupCoverage]:
        label = schools.c.name if viewer.role is StaffRole.BUREAU else students.c.class_name
        reached = func.sum(case((students.c.last_reached_at >= since, 1), else_=0))
        rows = self.conn.execute(
            select(label.label("label"), reached.label("visited"), func.count().label("total"))
            .select_from(students.join(schools, schools.c.id == students.c.school_id))
            .where(self._scope(viewer))
            .group_by(label)
            .order_by(label)
        )
        return [GroupCoverage(r.label, int(r.visited or 0), r.total) for r in rows]

    def scoped_needs(self, viewer: Staff, since: datetime) -> list[NeedCount]:
        found = func.sum(case((followups.c.created_at >= since, 1), else_=0))
        still_open = func.sum(case((followups.c.status.in_(OPEN_STATES), 1), else_=0))
        rows = self.conn.execute(
            select(followups.c.kind, found.label("found"), still_open.label("open"))
            .join(students, students.c.id == followups.c.student_id)
            .where(
                self._scope(viewer),
                or_(followups.c.created_at >= since, followups.c.status.in_(OPEN_STATES)),
            )
            .group_by(followups.c.kind)
            .order_by(followups.c.kind)
        )
        return [NeedCount(r.kind, int(r.found or 0), int(r.open or 0)) for r in rows]

    def scoped_unvisited(self, viewer: Staff, since: datetime, limit: int) -> list[Unvisited]:
        never_first = case((students.c.last_reached_at.is_(None), 0), else_=1)
        rows = self.conn.execute(
            select(
                staff.c.name.label("teacher_name"),
                staff.c.staff_no,
                students.c.name,
                students.c.class_name,
                students.c.last_reached_at,
            )
            .select_from(
                students.join(
                    assignments,
                    and_(
                        assignments.c.student_id == students.c.id,
                        assignments.c.role == "head_teacher",
                    ),
                ).join(staff, staff.c.id == assignments.c.staff_id)
            )
            .where(
                self._scope(viewer),
                or_(students.c.last_reached_at.is_(None), students.c.last_reached_at < since),
            )
            .order_by(staff.c.staff_no, never_first, students.c.last_reached_at, students.c.name)
            .limit(limit)
        )
        return [
            Unvisited(r.teacher_name, r.staff_no, r.name, r.class_name, r.last_reached_at)
            for r in rows
        ]

    def staff_member(self, staff_no: str) -> RosterStaff | None:
        row = self.conn.execute(
            select(*_STAFF_COLS).where(staff.c.staff_no == staff_no, staff.c.active.is_(True))
        ).first()
        if row is None:
            return None
        ids = dict(
            self.conn.execute(
                select(identities.c.channel, identities.c.external_id).where(
                    identities.c.staff_id == row.id
                )
            ).all()
        )
        return RosterStaff(row.id, row.staff_no, row.name, StaffRole(row.role), row.school_id, ids)

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
        return reviews.open_review(self.conn, reporter, student_id, name, class_name, note, now)

    def scoped_reviews(self, viewer: Staff, limit: int) -> list[AidReview]:
        school = reviews.scope_of(viewer)
        if school is False:
            return []
        return reviews.reviews(self.conn, school, (ReviewStatus.OPEN,), limit)

    def decide_review(
        self, viewer: Staff, review_id: int, category: str | None, reason: str, now: datetime
    ) -> AidReview | None:
        school = reviews.scope_of(viewer)
        if school is False:
            return None
        return reviews.decide(self.conn, school, viewer.staff_no, review_id, category, reason, now)

    # ---------------------------------------------------------------- console
    def add_console_token(
        self, staff_id: int, token_hash: str, expires_at: datetime, now: datetime
    ) -> None:
        self.conn.execute(
            insert(console_tokens).values(
                token_hash=token_hash, staff_id=staff_id, created_at=now, expires_at=expires_at
            )
        )

    def issue_binding_code(
        self,
        staff_no: str,
        school_id: int | None,
        code_hash: str,
        expires_at: datetime,
        now: datetime,
        actor: str,
    ) -> Staff | None:
        return binding.issue_code(self.conn, staff_no, school_id, code_hash, expires_at, now, actor)

    def bind_failures(self, subjects: Sequence[str], since: datetime) -> dict[str, int]:
        return binding.failures(self.conn, subjects, since)

    def record_bind_failure(
        self, subjects: Sequence[str], now: datetime, forget_before: datetime
    ) -> None:
        binding.record_failure(self.conn, subjects, now, forget_before)

    def redeem_binding_code(
        self, channel: str, user_id: str, staff_no: str, code_hash: str, now: datetime
    ) -> tuple[BindOutcome, Staff | None]:
        return binding.redeem(self.conn, channel, user_id, staff_no, code_hash, now)


class SqlTurns:
    """Implements `bot.core.ports.Turns` over a `Database`: each turn in one transaction.

    On PostgreSQL a turn first runs holding its last writes (see `SqlStore`); should a held write
    miss, the turn runs again without holding, where every store answer is exact. A session that
    another process saved meanwhile (ConcurrentUpdate) gets one more run on fresh state.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def run(self, fn: Callable[[Store], T], *, deadline: float | None = None) -> T:
        hold = True
        conflicts = 0
        while True:  # at most three runs

            def turn(conn: Connection, hold: bool = hold) -> T:
                store = SqlStore(conn, hold_writes=hold)
                result = fn(store)
                store.flush()
                return result

            try:
                return await self.db.run(turn, deadline=deadline)
            except HeldWriteMissed:
                hold = False
            except ConcurrentUpdate:
                conflicts += 1
                if conflicts == 2:
                    raise
