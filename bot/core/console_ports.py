"""The coordinators' console: what it reads and writes, as plain values and one async port.

The console (`bot.console`) is an edge like a chat channel: it never sees SQL. `ConsoleStore` is
implemented over the database by `storage.console.SqlConsole`; every read takes a `Scope`, and a
row outside it is treated exactly like a row that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, Literal, Protocol, TypeVar

from bot.core.types import FollowUpStatus, StaffRole

R = TypeVar("R")
ExportFormat = Literal["csv", "xlsx"]
CONSOLE_ROLES = frozenset({StaffRole.COORDINATOR, StaffRole.BUREAU})


@dataclass(frozen=True, slots=True)
class Scope:
    """Which schools a reader may see: one school, or every school (`school_id` None)."""

    school_id: int | None

    @property
    def everything(self) -> bool:
        return self.school_id is None


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in console user, as their session says and the staff table still confirms."""

    staff_id: int
    staff_no: str
    name: str
    role: StaffRole
    school_id: int | None
    school_name: str | None
    csrf_token: str
    session_hash: str

    @property
    def scope(self) -> Scope:
        return Scope(None if self.role is StaffRole.BUREAU else self.school_id)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session about to be created: only hashes and the CSRF token are stored."""

    session_hash: str
    csrf_token: str
    method: str  # "link" | "wecom"


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_seconds: int = 30 * 60
    absolute_seconds: int = 8 * 3600


@dataclass(frozen=True, slots=True)
class CycleCutoffs:
    """The moments (UTC) that decide each student's visit status today.

    Derived from the cadence and the calendar by `bot.console.cycle`, so that storage needs
    neither. A student reached at or after their cycle's `since` is covered (not due); reached
    before `late` is overdue. A later attempt that did not reach the family makes the student due
    on the next school day instead: covered while that attempt is at or after `retry_since`,
    overdue when it is before `retry_late`. `by_category` lists (categories, since, late) from
    the shortest cycle up; a student takes the first that names one of their categories.
    """

    since: datetime
    late: datetime
    retry_since: datetime
    retry_late: datetime
    by_category: tuple[tuple[frozenset[str], datetime, datetime], ...] = ()


class VisitState(StrEnum):
    VISITED = "visited"  # reached within the cycle
    PENDING = "pending"  # not covered, not yet due (a failed attempt today)
    DUE = "due"  # due today, or never visited
    OVERDUE = "overdue"


# ------------------------------------------------------------------------------ dashboard
@dataclass(frozen=True, slots=True)
class Tally:
    """One row of a coverage breakdown; `key` is what the list filter takes for it."""

    key: str
    label: str
    visited: int
    total: int


@dataclass(frozen=True, slots=True)
class NeedCount:
    kind: str
    found: int
    open: int
    done: int


@dataclass(frozen=True, slots=True)
class TeacherRow:
    staff_id: int
    staff_no: str
    name: str
    school_name: str | None
    students: int
    visited: int
    open: int
    overdue: int
    reachable: bool


@dataclass(frozen=True, slots=True)
class Dashboard:
    visited: int
    total: int
    due: int
    overdue: int
    never: int
    unreachable_families: int
    groups: list[Tally]  # by class (one school) or by school (every school)
    categories: list[Tally]
    per_hour: list[tuple[datetime, int]]  # visits submitted, by UTC hour of the window
    needs: list[NeedCount]
    open_followups: int
    overdue_followups: int
    escalated_followups: int
    teachers: list[TeacherRow]
    teachers_total: int
    unreachable_teachers: int


# ------------------------------------------------------------------------------ lists
@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    rows: list[R]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True, slots=True)
class StudentQuery:
    state: str = ""  # "" | "unvisited" | "due" | "overdue" | "visited" | "unreachable"
    class_name: str = ""
    category: str = ""
    teacher: str = ""  # staff number
    school_id: int | None = None
    sort: str = "urgency"  # urgency | student_no | name | class | last_visit | school
    descending: bool = False
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True, slots=True)
class StudentRow:
    id: int
    student_no: str
    name: str
    school_name: str
    class_name: str
    categories: tuple[str, ...]
    teachers: tuple[str, ...]  # names of head teacher, carer
    last_visit: datetime | None
    state: VisitState
    unreachable: bool
    open_followups: int


@dataclass(frozen=True, slots=True)
class FollowUpQuery:
    state: str = ""  # "" | "open" | "overdue" | "escalated" | "done"
    kind: str = ""
    owner: str = ""  # staff number
    school_id: int | None = None
    student_id: int | None = None
    sort: str = "due"  # due | created | kind | owner | student
    descending: bool = False
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True, slots=True)
class FollowUpRow:
    id: int
    student_id: int
    student_name: str
    class_name: str
    school_name: str
    kind: str
    detail: str
    owner_no: str
    owner_name: str
    due_date: date
    status: FollowUpStatus
    created_at: datetime
    closed_at: datetime | None
    note: str | None
    history: str = ""  # every step (escalated, acknowledged, handed over, done …), dated


@dataclass(frozen=True, slots=True)
class Choices:
    """What the list filters offer, within the reader's scope."""

    schools: list[tuple[int, str]]
    classes: list[str]
    categories: list[str]
    teachers: list[tuple[str, str]]  # (staff number, name); empty for every school (too many)


@dataclass(frozen=True, slots=True)
class VisitRecord:
    id: int
    submitted_at: datetime
    staff_name: str
    staff_no: str
    method: str | None
    reached: bool | None
    form_version: str
    answers: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StudentDetail:
    id: int
    student_no: str
    name: str
    school_name: str
    class_name: str
    active: bool
    categories: tuple[str, ...]
    staff: list[tuple[str, str, str]]  # (role, staff number, name)
    state: VisitState
    visits: list[VisitRecord]
    followups: list[FollowUpRow]


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: datetime
    actor: str
    action: str
    detail: str


# ------------------------------------------------------------------------------ uploads, exports
@dataclass(frozen=True, slots=True)
class UploadedFile:
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Problem:
    """One roster problem, split for a table: the file, row and column it names (when it does)."""

    file: str
    row: int | None
    column: str
    message: str


@dataclass(frozen=True, slots=True)
class RosterOutcome:
    """A preview (nothing written) or an applied import: the counts, or every problem."""

    applied: bool
    problems: list[Problem] = field(default_factory=list)
    counts: Mapping[str, int] = field(default_factory=dict)
    upload_id: str = ""  # a preview's stash, to apply it without uploading again


@dataclass(frozen=True, slots=True)
class ExportFile:
    filename: str
    content_type: str
    data: bytes


# ------------------------------------------------------------------------------ the port
class ConsoleStore(Protocol):
    """Everything the console reads and writes. Each call is one transaction."""

    async def redeem_token(
        self, token_hash: str, session: NewSession, now: datetime
    ) -> Principal | None:
        """Use an unexpired, unused sign-in token of an active coordinator or bureau member
        (at most once) and open a session for them, audited; None for anything else."""
        ...

    async def sign_in_identity(
        self, channel: str, external_id: str, session: NewSession, now: datetime
    ) -> Principal | None:
        """Open a session for the active coordinator or bureau member with this platform id."""
        ...

    async def load_session(
        self, session_hash: str, now: datetime, policy: SessionPolicy
    ) -> Principal | None:
        """The session's user, if it is open, inside both timeouts, and its staff member is
        still active with the same role and school (otherwise it is ended now). Touches it."""
        ...

    async def end_session(self, session_hash: str, now: datetime) -> None: ...

    async def signin_attempt(
        self, address_hash: str, now: datetime, limit: int, window: timedelta
    ) -> bool:
        """Count a sign-in attempt from this (hashed) client address, for every instance
        sharing the database; False, and not counted, when `limit` attempts were already made
        within `window`."""
        ...

    async def dashboard(
        self,
        scope: Scope,
        cut: CycleCutoffs,
        today: date,
        window_start: datetime,
        channels: Sequence[str],
    ) -> Dashboard:
        """Figures of active students in scope; `per_hour` counts visits submitted since
        `window_start` by UTC hour (the console turns them into local school days). A teacher is
        reachable with an identity on one of `channels`."""
        ...

    async def choices(self, scope: Scope) -> Choices: ...

    async def students(
        self, scope: Scope, cut: CycleCutoffs, query: StudentQuery
    ) -> Page[StudentRow]: ...

    async def followups(self, scope: Scope, today: date, query: FollowUpQuery) -> Page[FollowUpRow]:
        """Follow-ups of active students in scope."""
        ...

    async def student(
        self, scope: Scope, student_id: int, cut: CycleCutoffs, viewer: Principal, now: datetime
    ) -> StudentDetail | None:
        """The student's page, audited as a view; None when missing or out of scope."""
        ...

    async def roster(
        self,
        principal: Principal,
        files: Sequence[UploadedFile] | None,
        upload_id: str,
        apply: bool,
        now: datetime,
    ) -> RosterOutcome:
        """Check an upload (new `files`, or the stash `upload_id` of this user's preview) with
        the CLI's importer; write it only when `apply`. A coordinator's rows must all be of
        their school, and may not move a student or staff member of another school."""
        ...

    async def export(
        self,
        principal: Principal,
        fmt: ExportFormat,
        since: date | None,
        table: str,
        now: datetime,
        sensitive_reason: str | None = None,
    ) -> ExportFile:
        """The CLI export's content in the user's scope (audited). CSV is one file per `table`
        ("visits" or "followups"); xlsx holds both. Sensitive answers and notes are left out
        unless `sensitive_reason` is given (it goes in the audit entry)."""
        ...

    async def audit(self, scope: Scope, page: int, per_page: int) -> Page[AuditRow]: ...

    async def student_data(
        self, principal: Principal, student_id: int, now: datetime
    ) -> ExportFile | None:
        """Everything held about one student in scope, as JSON (a guardian's access request),
        audited; None when missing or out of scope."""
        ...

    async def erase_student(
        self, principal: Principal, student_id: int, confirm_no: str, reason: str, now: datetime
    ) -> bool:
        """Erase one student in scope whose 学籍号 is `confirm_no` (typed to confirm), audited
        with `reason`; False when missing, out of scope or not confirmed."""
        ...
