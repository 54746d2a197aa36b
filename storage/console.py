"""`SqlConsole`: the console's port (`bot.core.console_ports.ConsoleStore`) over the database.

Every figure is a handful of set-based statements, whatever the number of students: a student's
visit status today is one SQL expression (`_state`) over the last reached and the last failed
visit, compared with the cut-off moments the console derived from the cadence and calendar. Every
read is limited to the reader's scope; a row outside it is simply not found.
"""

from __future__ import annotations

import asyncio
import base64
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    and_,
    case,
    delete,
    distinct,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Integer

from bot.core.console_ports import (
    CONSOLE_ROLES,
    AuditRow,
    Choices,
    CycleCutoffs,
    Dashboard,
    ExportFile,
    ExportFormat,
    FollowUpQuery,
    FollowUpRow,
    NeedCount,
    NewSession,
    Page,
    Principal,
    Problem,
    RosterOutcome,
    Scope,
    SessionPolicy,
    StudentDetail,
    StudentQuery,
    StudentRow,
    Tally,
    TeacherRow,
    UploadedFile,
    VisitRecord,
    VisitState,
)
from bot.core.errors import HomevisitError, RosterError
from bot.core.signin import TOKEN_TTL, new_secret, secret_hash
from bot.core.types import FollowUpStatus, StaffRole, VisitStatus
from storage.audit import record
from storage.db import Database
from storage.erasure import access_request, erase_student, student_no_in_scope
from storage.export import Sensitive, export_visits
from storage.ladder import histories
from storage.roster import Roster, import_roster, read_roster
from storage.schema import (
    UtcDateTime,
    assignments,
    audit_log,
    console_sessions,
    console_tokens,
    console_uploads,
    followups,
    identities,
    schools,
    signin_attempts,
    staff,
    student_categories,
    students,
    visits,
)

OPEN = (FollowUpStatus.OPEN.value, FollowUpStatus.ESCALATED.value)
_TALLY_KEYS = ("total", "visited", "due", "overdue", "never", "unreachable")
TOUCH_EVERY = timedelta(seconds=60)  # a session's last-seen time is written at most this often
UPLOAD_TTL = timedelta(minutes=30)
MAX_TEACHERS_ALL = 20  # the bureau's dashboard lists the teachers needing attention first
# Visit states as the SQL expression numbers them (the order is the list's urgency).
_STATE_CODES = {
    0: VisitState.VISITED,
    1: VisitState.PENDING,
    2: VisitState.DUE,
    3: VisitState.OVERDUE,
}


# ---------------------------------------------------------------------------- sign-in (CLI)
def issue_console_token(conn: Connection, staff_no: str, now: datetime) -> str:
    """A new one-time token for this active coordinator or bureau member (its hash stored)."""
    row = conn.execute(
        select(staff.c.id, staff.c.role).where(
            staff.c.staff_no == staff_no, staff.c.active.is_(True)
        )
    ).first()
    if row is None:
        raise HomevisitError(
            f"工号 {staff_no} 不存在或已停用 / staff number {staff_no!r} not found"
        )
    if StaffRole(row.role) not in CONSOLE_ROLES:
        raise HomevisitError(
            f"工号 {staff_no} 是教师，后台只对协调员和教育局开放 / "
            "the console is for coordinators and bureau staff"
        )
    token = new_secret()
    conn.execute(
        insert(console_tokens).values(
            token_hash=secret_hash(token),
            staff_id=row.id,
            created_at=now,
            expires_at=now + TOKEN_TTL,
        )
    )
    return token


def _at(moment: datetime) -> ColumnElement[Any]:
    return literal(moment, UtcDateTime())


def _audit(
    conn: Connection,
    now: datetime,
    actor: str,
    action: str,
    detail: Mapping[str, Any],
    school_id: int | None,
) -> None:
    record(conn, at=now, actor=actor, action=action, detail=detail, school_id=school_id)


_PRINCIPAL_COLS = (
    staff.c.id,
    staff.c.staff_no,
    staff.c.name,
    staff.c.role,
    staff.c.school_id,
    schools.c.name.label("school_name"),
)
_STAFF_WITH_SCHOOL = staff.outerjoin(schools, schools.c.id == staff.c.school_id)


def _may_use_console(role: str, school_id: int | None) -> bool:
    r = StaffRole(role)
    return r in CONSOLE_ROLES and (r is StaffRole.BUREAU or school_id is not None)


def _open_session(conn: Connection, row: Any, session: NewSession, now: datetime) -> Principal:
    conn.execute(
        insert(console_sessions).values(
            session_hash=session.session_hash,
            staff_id=row.id,
            role=row.role,
            school_id=row.school_id,
            csrf_token=session.csrf_token,
            method=session.method,
            created_at=now,
            last_seen_at=now,
        )
    )
    _audit(conn, now, row.staff_no, "console_signin", {"method": session.method}, row.school_id)
    return Principal(
        row.id,
        row.staff_no,
        row.name,
        StaffRole(row.role),
        row.school_id,
        row.school_name,
        session.csrf_token,
        session.session_hash,
    )


# ---------------------------------------------------------------------------- visit status
class _position(FunctionElement[int]):
    """Where the second text starts in the first, 0 if nowhere (case-sensitive, unlike
    SQLite's LIKE): `instr` on SQLite, `strpos` on PostgreSQL."""

    type = Integer()
    inherit_cache = True


@compiles(_position, "sqlite")
def _instr(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(_position, "postgresql")
def _strpos(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


def _categories_of(text: str) -> list[str]:
    """`students.categories` (",孤儿,低保,") as a list."""
    return [c for c in text.split(",") if c]


def _by_cycle(lr: Any, since: datetime, late: datetime) -> ColumnElement[int]:
    return case((lr < _at(late), 3), (lr < _at(since), 2), else_=0)


def _state(cut: CycleCutoffs, lr: Any, lu: Any) -> ColumnElement[int]:
    """0 visited, 1 pending (a failed attempt, retry not yet due), 2 due, 3 overdue.

    A student's categories matter only when the last reached visit falls where cycles of
    different lengths disagree; they are read from `students.categories` (kept by triggers), so a
    city's dashboard reads `students` once, with no join.
    """
    retry = and_(lu.is_not(None), or_(lr.is_(None), lu > lr))
    cycles = [(cut.since, cut.late)] + [(since, late) for _, since, late in cut.by_category]
    by_category = [
        (
            or_(*(_position(students.c.categories, f",{c},") > 0 for c in sorted(categories))),
            _by_cycle(lr, since, late),
        )
        for categories, since, late in cut.by_category
    ]
    return case(
        (and_(retry, lu < _at(cut.retry_late)), 3),
        (and_(retry, lu < _at(cut.retry_since)), 2),
        (and_(retry, lr.is_(None)), 1),
        (retry, 0),
        (lr.is_(None), 2),
        (lr >= _at(max(since for since, _ in cycles)), 0),
        (lr < _at(min(late for _, late in cycles)), 3),
        *by_category,
        else_=_by_cycle(lr, cut.since, cut.late),
    )


def _in_scope(scope: Scope) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [students.c.active.is_(True)]
    if scope.school_id is not None:
        where.append(students.c.school_id == scope.school_id)
    return where


def _of_students_in_scope(student_id: ColumnElement[int], scope: Scope) -> ColumnElement[bool]:
    """A row of an active student in scope, without reading `students` for a city: the bureau
    excludes the few inactive students (`ix_students_inactive`) rather than joining them all."""
    if scope.school_id is None:
        inactive = students.alias("inactive")
        return ~exists().where(inactive.c.id == student_id, inactive.c.active == false())
    return student_id.in_(select(students.c.id).where(*_in_scope(scope)))


def _status(scope: Scope, cut: CycleCutoffs) -> tuple[Any, ColumnElement[int], Any, Any]:
    """What decides each student's state: the FROM clause (students, and their shortest special
    cycle), the state (see `_state`), and 1/0 flags for a family not reached at the last attempt
    and for a student never visited."""
    lr, lu = students.c.last_reached_at, students.c.last_unreached_at
    unreachable = and_(lu.is_not(None), or_(lr.is_(None), lu > lr))
    return (
        students,
        _state(cut, lr, lu),
        case((unreachable, 1), else_=0),
        case((and_(lr.is_(None), lu.is_(None)), 1), else_=0),
    )


def _facts(scope: Scope, cut: CycleCutoffs) -> Any:
    """One row per active student in scope: ids, class, school, last visit, state."""
    joined, state, unreachable, never = _status(scope, cut)
    return (
        select(
            students.c.id,
            students.c.school_id,
            students.c.class_name,
            students.c.last_reached_at.label("last_reached"),
            state.label("state"),
            unreachable.label("unreachable"),
            never.label("never"),
        )
        .select_from(joined)
        .where(*_in_scope(scope))
    )


def _analytic(conn: Connection, *, hash_groups: bool = False) -> None:
    """PostgreSQL, for console figures over a city, in this transaction only: no JIT (compiling
    the state expression costs more than running it), room to group in memory, and with
    `hash_groups` hashing rather than sorting (the planner cannot tell that a state expression
    has four values, so it expects as many groups as rows and would sort)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        if hash_groups:
            conn.exec_driver_sql("SET LOCAL enable_sort = off")


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _hour_bucket(conn: Connection) -> ColumnElement[Any]:
    """The UTC hour of a visit: PostgreSQL's `date_bin` (cheaper per row than formatting it,
    PostgreSQL 14+), SQLite's stored text 'YYYY-MM-DD HH:MM:SS' cut to 'YYYY-MM-DD HH'."""
    if conn.dialect.name == "postgresql":
        return func.date_bin(
            literal_column("interval '1 hour'"),
            visits.c.submitted_at,
            literal_column("timestamptz '2000-01-01 00:00+00'"),
        )
    return func.substr(visits.c.submitted_at, 1, 13)


def _utc_hour(value: datetime | str) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=UTC)


def _distinct_categories(conn: Connection) -> list[str]:
    """Every category in use, by hopping along `ix_student_categories_category` (one probe per
    category) rather than reading its 100,000s of entries: PostgreSQL has no skip scan."""
    c = student_categories.c.category
    hop = select(func.min(c).label("category")).cte("hop", recursive=True)
    hop = hop.union_all(
        select(select(func.min(c)).where(c > hop.c.category).scalar_subquery()).where(
            hop.c.category.is_not(None)
        )
    )
    return list(
        conn.execute(
            select(hop.c.category).where(hop.c.category.is_not(None)).order_by(hop.c.category)
        ).scalars()
    )


# ---------------------------------------------------------------------------- roster problems
_PROBLEM_AT = re.compile(
    r"^(?P<file>.+?) 第(?P<row>\d+)行(?: (?P<col>[^:]+?))?: (?P<msg>.*)$", re.S
)
_PROBLEM_FILE = re.compile(r"^(?P<file>[^:\s][^:]*?): (?P<msg>.*)$", re.S)


def split_problem(text: str) -> Problem:
    """A `RosterError` line as (file, row, column, message) for the upload's error table."""
    if m := _PROBLEM_AT.match(text):
        return Problem(m["file"], int(m["row"]), m["col"] or "", m["msg"])
    if m := _PROBLEM_FILE.match(text):
        return Problem(m["file"], None, "", m["msg"])
    return Problem("", None, "", text)


_OTHER_SCHOOL_ROW = "只能导入本校（{school}）的数据 / only rows of your own school ({school})"
_OTHER_SCHOOL_STUDENT = (
    "该学籍号已登记在其他学校，请联系教育局 / this student number belongs to another school"
)
_OTHER_SCHOOL_STAFF = "该工号已登记在其他学校或教育局 / this staff number belongs elsewhere"
_NOT_OUR_TEACHER = "工号 {no} 不是本校教师 / staff number {no} is not of your school"
_NO_BUREAU_ROWS = "协调员不能导入教育局人员 / a coordinator cannot import bureau staff"


def _school_problems(conn: Connection, roster: Roster, school_id: int, school: str) -> list[str]:
    """What a coordinator's upload may not do: touch another school's rows or people."""
    problems: list[str] = []
    for st in roster.students:
        if st.school != school:
            problems.append(
                f"{st.origin.at('学校(school)')}: {_OTHER_SCHOOL_ROW.format(school=school)}"
            )
    for sf in roster.staff:
        if sf.role is StaffRole.BUREAU:
            problems.append(f"{sf.origin.at('角色(role)')}: {_NO_BUREAU_ROWS}")
        elif sf.school != school:
            problems.append(
                f"{sf.origin.at('学校(school)')}: {_OTHER_SCHOOL_ROW.format(school=school)}"
            )
    numbers = [st.student_no for st in roster.students]
    elsewhere = (
        {
            no
            for (no,) in conn.execute(
                select(students.c.student_no).where(
                    students.c.student_no.in_(numbers), students.c.school_id != school_id
                )
            )
        }
        if numbers
        else set()
    )
    problems += [
        f"{st.origin.at('学籍号(student_no)')}: {_OTHER_SCHOOL_STUDENT}"
        for st in roster.students
        if st.student_no in elsewhere
    ]
    people = dict(
        conn.execute(
            select(staff.c.staff_no, staff.c.school_id).where(staff.c.active.is_(True))
        ).all()
    )
    problems += [
        f"{sf.origin.at('工号(staff_no)')}: {_OTHER_SCHOOL_STAFF}"
        for sf in roster.staff
        if sf.staff_no in people and people[sf.staff_no] != school_id
    ]
    listed = {sf.staff_no for sf in roster.staff}
    for st in roster.students:
        for column, no in (
            ("班主任工号(head_teacher_no)", st.head_teacher_no),
            ("包靠教师工号(carer_no)", st.carer_no),
        ):
            if no and no not in listed and no in people and people[no] != school_id:
                problems.append(f"{st.origin.at(column)}: {_NOT_OUR_TEACHER.format(no=no)}")
    return problems


def _read_upload(files: Sequence[UploadedFile]) -> Roster:
    """Run the CLI's reader over the uploaded files (written to a private temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="homevisit-upload-") as tmp:
        paths = []
        for n, f in enumerate(files):
            name = Path(f.name.replace("\\", "/")).name or f"file{n + 1}"
            name = re.sub(r"[\x00-\x1f/]", "_", name)[-120:]
            path = Path(tmp) / name
            if path.exists():
                path = Path(tmp) / f"{n + 1}_{name}"
            path.write_bytes(f.data)
            paths.append(path)
        return read_roster(paths)


# ---------------------------------------------------------------------------- the store
class SqlConsole:
    """Implements `bot.core.console_ports.ConsoleStore` over a `Database`."""

    def __init__(
        self,
        db: Database,
        columns: Sequence[tuple[str, str]],
        kind_labels: Mapping[str, str],
        tz: ZoneInfo,
        sensitive: Sensitive | None = None,
    ) -> None:
        self.db = db
        self.columns = list(columns)
        self.kind_labels = dict(kind_labels)
        self.tz = tz
        self.sensitive = sensitive or Sensitive()

    # ------------------------------------------------------------------ sessions
    async def redeem_token(
        self, token_hash: str, session: NewSession, now: datetime
    ) -> Principal | None:
        def work(conn: Connection) -> Principal | None:
            used = conn.execute(
                update(console_tokens)
                .where(
                    console_tokens.c.token_hash == token_hash,
                    console_tokens.c.used_at.is_(None),
                    console_tokens.c.expires_at > _at(now),
                )
                .values(used_at=now)
                .returning(console_tokens.c.staff_id)
            ).first()
            if used is None:
                return None
            row = conn.execute(
                select(*_PRINCIPAL_COLS)
                .select_from(_STAFF_WITH_SCHOOL)
                .where(staff.c.id == used.staff_id, staff.c.active.is_(True))
            ).first()
            if row is None or not _may_use_console(row.role, row.school_id):
                return None
            return _open_session(conn, row, session, now)

        return await self.db.run(work)

    async def sign_in_identity(
        self, channel: str, external_id: str, session: NewSession, now: datetime
    ) -> Principal | None:
        def work(conn: Connection) -> Principal | None:
            row = conn.execute(
                select(*_PRINCIPAL_COLS)
                .select_from(
                    _STAFF_WITH_SCHOOL.join(identities, identities.c.staff_id == staff.c.id)
                )
                .where(
                    identities.c.channel == channel,
                    identities.c.external_id == external_id,
                    staff.c.active.is_(True),
                )
            ).first()
            if row is None or not _may_use_console(row.role, row.school_id):
                return None
            return _open_session(conn, row, session, now)

        return await self.db.run(work)

    async def load_session(
        self, session_hash: str, now: datetime, policy: SessionPolicy
    ) -> Principal | None:
        def work(conn: Connection) -> Principal | None:
            s = console_sessions.c
            row = conn.execute(
                select(
                    s.role.label("session_role"),
                    s.school_id.label("session_school"),
                    s.csrf_token,
                    s.created_at,
                    s.last_seen_at,
                    staff.c.active,
                    *_PRINCIPAL_COLS,
                )
                .select_from(
                    console_sessions.join(staff, staff.c.id == s.staff_id).outerjoin(
                        schools, schools.c.id == staff.c.school_id
                    )
                )
                .where(s.session_hash == session_hash, s.ended_at.is_(None))
            ).first()
            if row is None:
                return None
            valid = (
                row.active
                and row.role == row.session_role
                and row.school_id == row.session_school
                and _may_use_console(row.role, row.school_id)
                and now - row.last_seen_at <= timedelta(seconds=policy.idle_seconds)
                and now - row.created_at <= timedelta(seconds=policy.absolute_seconds)
            )
            if not valid:
                conn.execute(
                    update(console_sessions)
                    .where(s.session_hash == session_hash)
                    .values(ended_at=now)
                )
                return None
            if now - row.last_seen_at >= TOUCH_EVERY:
                conn.execute(
                    update(console_sessions)
                    .where(s.session_hash == session_hash)
                    .values(last_seen_at=now)
                )
            return Principal(
                row.id,
                row.staff_no,
                row.name,
                StaffRole(row.role),
                row.school_id,
                row.school_name,
                row.csrf_token,
                session_hash,
            )

        return await self.db.run(work)

    async def end_session(self, session_hash: str, now: datetime) -> None:
        def work(conn: Connection) -> None:
            conn.execute(
                update(console_sessions)
                .where(
                    console_sessions.c.session_hash == session_hash,
                    console_sessions.c.ended_at.is_(None),
                )
                .values(ended_at=now)
            )
            conn.execute(
                delete(console_uploads).where(console_uploads.c.session_hash == session_hash)
            )

        await self.db.run(work)

    async def signin_attempt(
        self, address_hash: str, now: datetime, limit: int, window: timedelta
    ) -> bool:
        def work(conn: Connection) -> bool:
            a = signin_attempts.c
            conn.execute(delete(signin_attempts).where(a.at <= _at(now - window)))
            made = conn.execute(
                select(func.count()).where(a.address == address_hash, a.at > _at(now - window))
            ).scalar_one()
            if made >= limit:
                return False
            conn.execute(insert(signin_attempts).values(address=address_hash, at=now))
            return True

        return bool(await self.db.run(work))

    # ------------------------------------------------------------------ dashboard
    async def dashboard(
        self,
        scope: Scope,
        cut: CycleCutoffs,
        today: date,
        window_start: datetime,
        channels: Sequence[str],
    ) -> Dashboard:
        def work(conn: Connection) -> Dashboard:
            _analytic(conn, hash_groups=True)
            return self._dashboard(conn, scope, cut, today, window_start, channels)

        return await self.db.run(work)

    def _dashboard(
        self,
        conn: Connection,
        scope: Scope,
        cut: CycleCutoffs,
        today: date,
        window_start: datetime,
        channels: Sequence[str],
    ) -> Dashboard:
        by_school = scope.everything
        # One scan of `students`, grouped by the state too (so that SQL evaluates each student's
        # state once; an expression used in several aggregates would be computed for each) and
        # by the student's categories (",孤儿,低保,": a few dozen combinations); summed here.
        joined, state, unreachable, never = _status(scope, cut)
        key = students.c.school_id if by_school else students.c.class_name
        tallies: dict[Any, dict[str, int]] = {}
        by_set: dict[str, list[int]] = {}  # a set of categories: visited, total
        for k, categories, st, unreached, never_visited, n in conn.execute(
            select(
                key.label("key"),
                students.c.categories,
                state.label("state"),
                func.sum(unreachable).label("unreachable"),
                func.sum(never).label("never"),
                func.count().label("n"),
            )
            .select_from(joined)
            .where(*_in_scope(scope))
            .group_by(  # (the state first: PostgreSQL would sort by school through its index)
                literal_column("state"),
                literal_column("key"),
                students.c.categories,
            )
        ):  # (thousands of rows for a city: kept to plain additions)
            t = tallies.get(k) or tallies.setdefault(k, dict.fromkeys(_TALLY_KEYS, 0))
            t["total"] += n
            t["never"] += never_visited
            t["unreachable"] += unreached
            counts = by_set.get(categories) or by_set.setdefault(categories, [0, 0])
            counts[1] += n
            if st == 0:
                t["visited"] += n
                counts[0] += n
            elif st >= 2:
                t["due"] += n
                t["overdue"] += n if st == 3 else 0
        by_category: dict[str, list[int]] = {}
        for categories, (visited, n) in by_set.items():
            for category in _categories_of(categories):
                counts = by_category.setdefault(category, [0, 0])
                counts[0] += visited
                counts[1] += n
        names: dict[Any, str] = {}
        if by_school:
            names = dict(conn.execute(select(schools.c.id, schools.c.name)).all())
        order = sorted(tallies, key=lambda k: (names.get(k, ""), k) if by_school else k)
        groups = [
            Tally(str(k), names.get(k, str(k)), tallies[k]["visited"], tallies[k]["total"])
            for k in order
        ]
        category_rows = sorted(by_category.items(), key=lambda kv: (-kv[1][1], kv[0]))
        in_window = [
            visits.c.status == VisitStatus.SUBMITTED.value,
            visits.c.submitted_at >= _at(window_start),
        ]
        if scope.school_id is not None:  # (visits of students deactivated since still count)
            in_window.append(
                visits.c.student_id.in_(
                    select(students.c.id).where(students.c.school_id == scope.school_id)
                )
            )
        hours = conn.execute(
            select(_hour_bucket(conn).label("hour"), func.count().label("n"))
            .where(*in_window)
            .group_by(literal_column("hour"))
        ).all()
        per_hour = [(_utc_hour(h), n) for h, n in hours]
        need_rows = conn.execute(
            select(
                followups.c.kind,
                func.count().label("found"),
                _count_if(followups.c.status.in_(OPEN)).label("open"),
                _count_if(followups.c.status == FollowUpStatus.DONE.value).label("done"),
                _count_if(and_(followups.c.status.in_(OPEN), followups.c.due_date < today)).label(
                    "overdue"
                ),
                _count_if(followups.c.status == FollowUpStatus.ESCALATED.value).label("escalated"),
            )
            .where(_of_students_in_scope(followups.c.student_id, scope))
            .group_by(followups.c.kind)
        ).all()
        order = list(self.kind_labels)
        needs = sorted(
            (NeedCount(r.kind, r.found, r.open, r.done) for r in need_rows),
            key=lambda n: order.index(n.kind) if n.kind in order else len(order),
        )
        teachers, teachers_total, unreachable_teachers = self._teachers(
            conn, scope, cut, today, channels
        )
        return Dashboard(
            visited=sum(t["visited"] for t in tallies.values()),
            total=sum(t["total"] for t in tallies.values()),
            due=sum(t["due"] for t in tallies.values()),
            overdue=sum(t["overdue"] for t in tallies.values()),
            never=sum(t["never"] for t in tallies.values()),
            unreachable_families=sum(t["unreachable"] for t in tallies.values()),
            groups=groups,
            categories=[Tally(c, c, v, n) for c, (v, n) in category_rows],
            per_hour=per_hour,
            needs=needs,
            open_followups=sum(r.open for r in need_rows),
            overdue_followups=sum(r.overdue for r in need_rows),
            escalated_followups=sum(r.escalated for r in need_rows),
            teachers=teachers,
            teachers_total=teachers_total,
            unreachable_teachers=unreachable_teachers,
        )

    def _teachers(
        self,
        conn: Connection,
        scope: Scope,
        cut: CycleCutoffs,
        today: date,
        channels: Sequence[str],
    ) -> tuple[list[TeacherRow], int, int]:
        """A school's teachers, those with most overdue follow-ups and unvisited students first;
        for every school, the `MAX_TEACHERS_ALL` with most overdue and open follow-ups."""
        open_ = (
            select(
                followups.c.owner_staff_id.label("staff_id"),
                func.count().label("open"),
                _count_if(followups.c.due_date < today).label("overdue"),
            )
            .where(
                followups.c.status.in_(OPEN), _of_students_in_scope(followups.c.student_id, scope)
            )
            .group_by(followups.c.owner_staff_id)
            .subquery("open_fu")
        )
        reachable = (
            exists().where(
                identities.c.staff_id == staff.c.id, identities.c.channel.in_(list(channels))
            )
            if channels
            else literal(False)
        )
        where = [staff.c.active.is_(True), staff.c.role == StaffRole.TEACHER.value]
        if scope.school_id is not None:
            where.append(staff.c.school_id == scope.school_id)
        n_open = func.coalesce(open_.c.open, 0)
        n_overdue = func.coalesce(open_.c.overdue, 0)
        query = (
            select(
                staff.c.id,
                staff.c.staff_no,
                staff.c.name,
                schools.c.name.label("school_name"),
                n_open.label("open"),
                n_overdue.label("overdue"),
                case((reachable, 1), else_=0).label("reachable"),
            )
            .select_from(
                staff.outerjoin(schools, schools.c.id == staff.c.school_id).outerjoin(
                    open_, open_.c.staff_id == staff.c.id
                )
            )
            .where(*where)
            .order_by(n_overdue.desc(), n_open.desc(), staff.c.staff_no)
        )
        if scope.everything:
            query = query.limit(MAX_TEACHERS_ALL)
        found = conn.execute(query).all()
        joined, state, _, _ = _status(scope, cut)
        load: dict[int, tuple[int, int]] = {}
        if found:
            for r in conn.execute(
                select(
                    assignments.c.staff_id,
                    state.label("state"),
                    func.count(distinct(students.c.id)).label("n"),
                )
                .select_from(joined.join(assignments, assignments.c.student_id == students.c.id))
                .where(assignments.c.staff_id.in_([r.id for r in found]), *_in_scope(scope))
                .group_by(assignments.c.staff_id, literal_column("state"))
            ):
                n_students, n_visited = load.get(r.staff_id, (0, 0))
                load[r.staff_id] = (n_students + r.n, n_visited + (r.n if r.state == 0 else 0))
        rows = [
            TeacherRow(
                r.id,
                r.staff_no,
                r.name,
                r.school_name,
                *load.get(r.id, (0, 0)),
                r.open,
                r.overdue,
                bool(r.reachable),
            )
            for r in found
        ]
        if not scope.everything:  # the whole school: most to do first
            rows.sort(key=lambda t: (-t.overdue, -(t.students - t.visited), t.staff_no))
        total, unreachable = conn.execute(
            select(func.count(), _count_if(~reachable)).select_from(staff).where(*where)
        ).one()
        return rows, int(total), int(unreachable or 0)

    # ------------------------------------------------------------------ lists
    async def choices(self, scope: Scope) -> Choices:
        def work(conn: Connection) -> Choices:
            school_q = select(schools.c.id, schools.c.name).order_by(schools.c.name)
            if scope.school_id is not None:
                school_q = school_q.where(schools.c.id == scope.school_id)
            if scope.everything:  # a city has too many classes and teachers for a menu
                classes: list[str] = []
                categories = _distinct_categories(conn)
            else:
                classes = list(
                    conn.execute(
                        select(students.c.class_name)
                        .distinct()
                        .where(*_in_scope(scope))
                        .order_by(students.c.class_name)
                    ).scalars()
                )
                categories = list(
                    conn.execute(
                        select(student_categories.c.category)
                        .distinct()
                        .select_from(
                            student_categories.join(
                                students, students.c.id == student_categories.c.student_id
                            )
                        )
                        .where(*_in_scope(scope))
                        .order_by(student_categories.c.category)
                    ).scalars()
                )
            teachers: list[tuple[str, str]] = []
            if scope.school_id is not None:
                teachers = list(
                    conn.execute(
                        select(staff.c.staff_no, staff.c.name)
                        .where(
                            staff.c.school_id == scope.school_id,
                            staff.c.active.is_(True),
                            staff.c.role == StaffRole.TEACHER.value,
                        )
                        .order_by(staff.c.staff_no)
                    )
                )
            return Choices(list(conn.execute(school_q)), classes, categories, teachers)

        return await self.db.run(work)

    async def students(
        self, scope: Scope, cut: CycleCutoffs, query: StudentQuery
    ) -> Page[StudentRow]:
        def work(conn: Connection) -> Page[StudentRow]:
            _analytic(conn)
            _, state, unreachable, never = _status(scope, cut)
            where: list[ColumnElement[bool]] = list(_in_scope(scope))
            states = {
                "unvisited": state != 0,
                "visited": state == 0,
                "due": state >= 2,
                "overdue": state == 3,
                "never": never == 1,
                "unreachable": unreachable == 1,
            }
            if query.state in states:
                where.append(states[query.state])
            if query.class_name:
                where.append(students.c.class_name == query.class_name)
            if query.school_id is not None:
                where.append(students.c.school_id == query.school_id)
            if query.category:
                where.append(
                    exists().where(
                        student_categories.c.student_id == students.c.id,
                        student_categories.c.category == query.category,
                    )
                )
            if query.teacher:
                where.append(
                    exists().where(
                        assignments.c.student_id == students.c.id,
                        assignments.c.staff_id == staff.c.id,
                        staff.c.staff_no == query.teacher,
                    )
                )
            total = conn.execute(select(func.count()).where(*where)).scalar_one()
            # Longest since a visit that reached the family first (never reached: first of
            # all), as the teachers' lists are ordered; the state is computed for the page only.
            last = students.c.last_reached_at
            sorts: dict[str, list[Any]] = {
                "urgency": [last.nulls_first()],
                "student_no": [students.c.student_no],
                "name": [students.c.name],
                "class": [students.c.class_name, students.c.name],
                "last_visit": [last.nulls_first()],
                "school": [schools.c.name, students.c.class_name],
            }
            keys = sorts.get(query.sort, sorts["urgency"])
            if query.descending:
                keys = [k.desc() for k in keys]
            source: Any = students
            if query.sort == "school":
                source = students.join(schools, schools.c.id == students.c.school_id)
            page = (
                select(students.c.id)
                .select_from(source)
                .where(*where)
                .order_by(*keys, students.c.student_no)
                .limit(query.per_page)
                .offset((max(query.page, 1) - 1) * query.per_page)
            )
            ids = [r.id for r in conn.execute(page)]
            found = (
                {
                    r.id: r
                    for r in conn.execute(
                        select(
                            students.c.id,
                            students.c.student_no,
                            students.c.name,
                            schools.c.name.label("school_name"),
                            students.c.class_name,
                            last.label("last_reached"),
                            state.label("state"),
                            unreachable.label("unreachable"),
                        )
                        .join(schools, schools.c.id == students.c.school_id)
                        .where(students.c.id.in_(ids))
                    )
                }
                if ids
                else {}
            )
            rows = [found[i] for i in ids if i in found]
            cats, teachers, open_counts = self._student_extras(conn, ids)
            return Page(
                [
                    StudentRow(
                        r.id,
                        r.student_no,
                        r.name,
                        r.school_name,
                        r.class_name,
                        tuple(cats.get(r.id, ())),
                        tuple(teachers.get(r.id, ())),
                        r.last_reached,
                        _STATE_CODES[int(r.state)],
                        bool(r.unreachable),
                        open_counts.get(r.id, 0),
                    )
                    for r in rows
                ],
                int(total),
                query.page,
                query.per_page,
            )

        return await self.db.run(work)

    @staticmethod
    def _student_extras(
        conn: Connection, ids: Sequence[int]
    ) -> tuple[dict[int, list[str]], dict[int, list[str]], dict[int, int]]:
        cats: dict[int, list[str]] = {}
        teachers: dict[int, list[str]] = {}
        open_counts: dict[int, int] = {}
        if not ids:
            return cats, teachers, open_counts
        for sid, cat in conn.execute(
            select(student_categories.c.student_id, student_categories.c.category)
            .where(student_categories.c.student_id.in_(ids))
            .order_by(student_categories.c.category)
        ):
            cats.setdefault(sid, []).append(cat)
        for sid, name in conn.execute(
            select(assignments.c.student_id, staff.c.name)
            .join(staff, staff.c.id == assignments.c.staff_id)
            .where(assignments.c.student_id.in_(ids))
            .order_by(assignments.c.role.desc())  # head_teacher before carer
        ):
            teachers.setdefault(sid, []).append(name)
        for sid, n in conn.execute(
            select(followups.c.student_id, func.count())
            .where(followups.c.student_id.in_(ids), followups.c.status.in_(OPEN))
            .group_by(followups.c.student_id)
        ):
            open_counts[sid] = n
        return cats, teachers, open_counts

    async def followups(self, scope: Scope, today: date, query: FollowUpQuery) -> Page[FollowUpRow]:
        def work(conn: Connection) -> Page[FollowUpRow]:
            _analytic(conn)
            return self._followups(conn, scope, today, query)

        return await self.db.run(work)

    def _followups(
        self, conn: Connection, scope: Scope, today: date, query: FollowUpQuery
    ) -> Page[FollowUpRow]:
        owner = staff.alias("owner")
        # The same rows twice: `where` over the page's joins, `alone` over `followups` by
        # itself for the count (semi- and anti-joins: a city's count reads no student rows).
        where = list(_in_scope(scope))
        alone = [_of_students_in_scope(followups.c.student_id, scope)]
        states: dict[str, ColumnElement[bool]] = {
            "open": followups.c.status.in_(OPEN),
            "overdue": and_(followups.c.status.in_(OPEN), followups.c.due_date < today),
            "escalated": followups.c.status == FollowUpStatus.ESCALATED.value,
            "done": followups.c.status == FollowUpStatus.DONE.value,
        }
        own: list[ColumnElement[bool]] = []
        if query.state in states:
            own.append(states[query.state])
        if query.kind:
            own.append(followups.c.kind == query.kind)
        if query.student_id is not None:
            own.append(followups.c.student_id == query.student_id)
        where += own
        alone += own
        if query.owner:
            where.append(owner.c.staff_no == query.owner)
            alone.append(
                followups.c.owner_staff_id.in_(
                    select(staff.c.id).where(staff.c.staff_no == query.owner)
                )
            )
        if query.school_id is not None:
            where.append(students.c.school_id == query.school_id)
            alone.append(
                followups.c.student_id.in_(
                    select(students.c.id).where(students.c.school_id == query.school_id)
                )
            )
        joined = (
            followups.join(students, students.c.id == followups.c.student_id)
            .join(schools, schools.c.id == students.c.school_id)
            .join(owner, owner.c.id == followups.c.owner_staff_id)
        )
        total = conn.execute(select(func.count()).where(*alone)).scalar_one()
        sorts: dict[str, list[Any]] = {
            "due": [followups.c.due_date],
            "created": [followups.c.created_at],
            "kind": [followups.c.kind, followups.c.due_date],
            "owner": [owner.c.staff_no, followups.c.due_date],
            "student": [students.c.name, followups.c.due_date],
        }
        keys = sorts.get(query.sort, sorts["due"])
        if query.descending:
            keys = [k.desc() for k in keys]
        rows = conn.execute(
            select(
                followups.c.id,
                followups.c.student_id,
                students.c.name.label("student_name"),
                students.c.class_name,
                schools.c.name.label("school_name"),
                followups.c.kind,
                followups.c.detail,
                owner.c.staff_no.label("owner_no"),
                owner.c.name.label("owner_name"),
                followups.c.due_date,
                followups.c.status,
                followups.c.created_at,
                followups.c.closed_at,
                followups.c.note,
            )
            .select_from(joined)
            .where(*where)
            .order_by(*keys, followups.c.id)
            .limit(query.per_page)
            .offset((max(query.page, 1) - 1) * query.per_page)
        ).all()
        shown = [r.id for r in rows]
        steps = (
            histories(conn, select(followups.c.id).where(followups.c.id.in_(shown)), self.tz)
            if shown
            else {}
        )
        return Page(
            [
                FollowUpRow(
                    r.id,
                    r.student_id,
                    r.student_name,
                    r.class_name,
                    r.school_name,
                    r.kind,
                    r.detail,
                    r.owner_no,
                    r.owner_name,
                    r.due_date,
                    FollowUpStatus(r.status),
                    r.created_at,
                    r.closed_at,
                    r.note,
                    steps.get(r.id, ""),
                )
                for r in rows
            ],
            int(total),
            query.page,
            query.per_page,
        )

    async def student(
        self, scope: Scope, student_id: int, cut: CycleCutoffs, viewer: Principal, now: datetime
    ) -> StudentDetail | None:
        def work(conn: Connection) -> StudentDetail | None:
            where = [students.c.id == student_id]
            if scope.school_id is not None:
                where.append(students.c.school_id == scope.school_id)
            row = conn.execute(
                select(
                    students.c.id,
                    students.c.student_no,
                    students.c.name,
                    students.c.school_id,
                    schools.c.name.label("school_name"),
                    students.c.class_name,
                    students.c.active,
                )
                .join(schools, schools.c.id == students.c.school_id)
                .where(*where)
            ).first()
            if row is None:
                return None
            cats = (
                conn.execute(
                    select(student_categories.c.category)
                    .where(student_categories.c.student_id == student_id)
                    .order_by(student_categories.c.category)
                )
                .scalars()
                .all()
            )
            people = [
                (r.role, r.staff_no, r.name)
                for r in conn.execute(
                    select(assignments.c.role, staff.c.staff_no, staff.c.name)
                    .join(staff, staff.c.id == assignments.c.staff_id)
                    .where(assignments.c.student_id == student_id)
                    .order_by(assignments.c.role.desc())
                )
            ]
            records = [
                VisitRecord(
                    r.id,
                    r.submitted_at,
                    r.name,
                    r.staff_no,
                    r.method,
                    r.reached,
                    r.form_version,
                    dict(r.answers),
                )
                for r in conn.execute(
                    select(
                        visits.c.id,
                        visits.c.submitted_at,
                        staff.c.name,
                        staff.c.staff_no,
                        visits.c.method,
                        visits.c.reached,
                        visits.c.form_version,
                        visits.c.answers,
                    )
                    .join(staff, staff.c.id == visits.c.staff_id)
                    .where(
                        visits.c.student_id == student_id,
                        visits.c.status == VisitStatus.SUBMITTED.value,
                    )
                    .order_by(visits.c.submitted_at.desc(), visits.c.id.desc())
                )
            ]
            fu = self._followups(
                conn,
                Scope(row.school_id),
                now.date(),
                FollowUpQuery(student_id=student_id, sort="created", descending=True, per_page=500),
            ).rows
            facts = _facts(Scope(row.school_id), cut).subquery("facts")
            code = conn.execute(select(facts.c.state).where(facts.c.id == student_id)).scalar()
            _audit(
                conn,
                now,
                viewer.staff_no,
                "student_view",
                {"student_no": row.student_no},
                row.school_id,
            )
            return StudentDetail(
                row.id,
                row.student_no,
                row.name,
                row.school_name,
                row.class_name,
                bool(row.active),
                tuple(cats),
                people,
                _STATE_CODES.get(int(code), VisitState.DUE) if code is not None else VisitState.DUE,
                records,
                fu,
            )

        return await self.db.run(work)

    # ------------------------------------------------------------------ roster upload
    async def roster(
        self,
        principal: Principal,
        files: Sequence[UploadedFile] | None,
        upload_id: str,
        apply: bool,
        now: datetime,
    ) -> RosterOutcome:
        if files is None:
            stash = await self.db.run(
                lambda conn: self._load_stash(conn, principal, upload_id, now)
            )
            if stash is None:
                return RosterOutcome(False, [Problem("", None, "", _STASH_GONE)])
            files = stash
        try:
            roster = await asyncio.to_thread(_read_upload, files)
        except RosterError as exc:
            return RosterOutcome(False, [split_problem(p) for p in exc.problems])
        stash_id = "" if apply else new_secret()

        def work(conn: Connection) -> RosterOutcome:
            if principal.scope.school_id is not None:
                problems = _school_problems(
                    conn, roster, principal.scope.school_id, principal.school_name or ""
                )
                if problems:
                    return RosterOutcome(False, [split_problem(p) for p in problems])
            savepoint = conn.begin_nested()
            try:
                report = import_roster(
                    conn,
                    roster,
                    now=now,
                    actor=principal.staff_no,
                    audit_school_id=principal.scope.school_id,
                )
            except RosterError as exc:
                savepoint.rollback()
                return RosterOutcome(False, [split_problem(p) for p in exc.problems])
            counts = asdict(report)
            if not apply:
                savepoint.rollback()
                conn.execute(
                    insert(console_uploads).values(
                        upload_hash=secret_hash(stash_id),
                        session_hash=principal.session_hash,
                        created_at=now,
                        files=[
                            {"name": f.name, "data": base64.b64encode(f.data).decode("ascii")}
                            for f in files
                        ],
                    )
                )
                return RosterOutcome(False, [], counts, stash_id)
            savepoint.commit()
            if upload_id:
                conn.execute(
                    delete(console_uploads).where(
                        console_uploads.c.upload_hash == secret_hash(upload_id)
                    )
                )
            return RosterOutcome(True, [], counts)

        return await self.db.run(work)

    @staticmethod
    def _load_stash(
        conn: Connection, principal: Principal, upload_id: str, now: datetime
    ) -> list[UploadedFile] | None:
        conn.execute(
            delete(console_uploads).where(console_uploads.c.created_at < _at(now - UPLOAD_TTL))
        )
        files = conn.execute(
            select(console_uploads.c.files).where(
                console_uploads.c.upload_hash == secret_hash(upload_id),
                console_uploads.c.session_hash == principal.session_hash,
            )
        ).scalar()
        if not isinstance(files, list):  # none, or another page's stash (a screening list)
            return None
        return [UploadedFile(f["name"], base64.b64decode(f["data"])) for f in files]

    # ------------------------------------------------------------------ export, audit
    async def export(
        self,
        principal: Principal,
        fmt: ExportFormat,
        since: date | None,
        table: str,
        now: datetime,
        sensitive_reason: str | None = None,
    ) -> ExportFile:
        include = sensitive_reason is not None
        policy = replace(self.sensitive, include=include, reason=sensitive_reason or "")

        def work(conn: Connection) -> ExportFile:
            with tempfile.TemporaryDirectory(prefix="homevisit-export-") as tmp:
                out = Path(tmp) / f"visits.{fmt}"
                report = export_visits(
                    conn,
                    out,
                    fmt,
                    self.columns,
                    self.kind_labels,
                    self.tz,
                    since,
                    actor=principal.staff_no,
                    now=now,
                    school_id=principal.scope.school_id,
                    sensitive=policy,
                )
                path = report.files[1] if fmt == "csv" and table == "followups" else report.files[0]
                kind = (
                    "text/csv; charset=utf-8"
                    if fmt == "csv"
                    else "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
                )
                return ExportFile(path.name, kind, path.read_bytes())

        return await self.db.run(work)

    async def audit(self, scope: Scope, page: int, per_page: int) -> Page[AuditRow]:
        def work(conn: Connection) -> Page[AuditRow]:
            where = [] if scope.everything else [audit_log.c.school_id == scope.school_id]
            total = conn.execute(
                select(func.count()).select_from(audit_log).where(*where)
            ).scalar_one()
            rows = conn.execute(
                select(audit_log.c.at, audit_log.c.actor, audit_log.c.action, audit_log.c.detail)
                .where(*where)
                .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
                .limit(per_page)
                .offset((max(page, 1) - 1) * per_page)
            ).all()
            return Page([AuditRow(*r) for r in rows], int(total), page, per_page)

        return await self.db.run(work)

    # ------------------------------------------------------------------ access and erasure
    async def student_data(
        self, principal: Principal, student_id: int, now: datetime
    ) -> ExportFile | None:
        def work(conn: Connection) -> ExportFile | None:
            student_no = student_no_in_scope(conn, student_id, principal.scope.school_id)
            if student_no is None:
                return None
            body = access_request(conn, student_no, now, actor=principal.staff_no)
            return ExportFile(f"{student_no}.json", "application/json; charset=utf-8", body)

        return await self.db.run(work)

    async def erase_student(
        self, principal: Principal, student_id: int, confirm_no: str, reason: str, now: datetime
    ) -> bool:
        def work(conn: Connection) -> bool:
            student_no = student_no_in_scope(conn, student_id, principal.scope.school_id)
            if student_no is None or student_no != confirm_no.strip() or not reason.strip():
                return False
            erase_student(conn, student_no, reason, now, actor=principal.staff_no)
            return True

        return await self.db.run(work)


_STASH_GONE = "上传已过期或不存在，请重新选择文件上传 / the upload expired, please upload again"
