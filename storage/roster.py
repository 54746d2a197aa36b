"""The roster import: a checked `Roster` (see `storage.roster_files`) written in one transaction.

`import_roster` writes inside the caller's transaction and raises `RosterError` before writing
anything when a row refers to a staff number or platform id it cannot resolve, or names as head
teacher or carer someone who is not a teacher of the student's school. Students missing from
the file are deactivated (never deleted) only in the schools the file lists, so a district may
import school by school. Importing the same roster twice changes nothing.

No student name ever reaches a log line or an error message: problems quote only numbers and ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from bot.core.errors import RosterError
from bot.core.reviews import PROVISIONAL_PREFIX
from bot.core.types import StaffRole
from storage.audit import record
from storage.db import Database
from storage.reviews import merge_provisional
from storage.roster_files import (
    CARER,
    COLUMN,
    HEAD_TEACHER,
    ID_FOLDS,
    IDENTITY_COLUMNS,
    Origin,
    Roster,
    StaffEntry,
    StudentEntry,
    read_roster,
)
from storage.schema import (
    assignments,
    identities,
    schools,
    staff,
    student_categories,
    students,
)

__all__ = [
    "ImportReport",
    "Origin",
    "Roster",
    "StaffEntry",
    "StudentEntry",
    "import_files",
    "import_roster",
    "read_roster",
]

ROSTER_SOURCE = "roster"  # student_categories.source of the roster's own categories

_UNKNOWN_STAFF = (
    "工号 {no} 既不在本名单中，也不是系统中的在职教师 / "
    "staff number {no} is neither in this roster nor an active staff member"
)
_ID_TAKEN = "已被工号 {no} 使用 / already used by staff number {no}"
_ID_TAKEN_IGNORING_CASE = (
    "已被工号 {no} 以 {other} 使用（企业微信账号不区分大小写）/ "
    "already used by staff number {no} as {other} (WeCom UserIDs ignore case)"
)
_NOT_A_TEACHER = "工号 {no} 是{zh}，不是教师 / staff number {no} is {en}, not a teacher"
_ROLE_NAMES = {
    StaffRole.COORDINATOR.value: ("协调员", "a coordinator"),
    StaffRole.BUREAU.value: ("教育局人员", "bureau staff"),
}
_OTHER_SCHOOL = (
    "工号 {no} 是{school}的教师，不是本学生学校的 / "
    "staff number {no} teaches at another school ({school})"
)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import changed. Unchanged rows count nowhere, so a repeated import is all zeros."""

    staff_added: int = 0
    staff_updated: int = 0
    students_added: int = 0
    students_updated: int = 0
    students_deactivated: int = 0

    def summary(self) -> str:
        a, b = self.staff_added, self.staff_updated
        c, d, e = self.students_added, self.students_updated, self.students_deactivated
        return (
            f"名单导入：教师新增 {a} 人、更新 {b} 人；学生新增 {c} 人、更新 {d} 人、停用 {e} 人 / "
            f"roster import: staff {a} added, {b} updated; "
            f"students {c} added, {d} updated, {e} deactivated"
        )


# ---------------------------------------------------------------------------- importing
@dataclass(frozen=True, slots=True)
class _StaffRow:
    id: int
    name: str
    school_id: int | None
    role: str
    active: bool


@dataclass(frozen=True, slots=True)
class _StudentRow:
    id: int
    name: str
    school_id: int
    class_name: str
    active: bool


_UPDATE_STAFF = (
    update(staff)
    .where(staff.c.id == bindparam("b_id"))
    .values(
        name=bindparam("b_name"),
        school_id=bindparam("b_school_id"),
        role=bindparam("b_role"),
        active=True,
    )
)
_UPDATE_STUDENT = (
    update(students)
    .where(students.c.id == bindparam("b_id"))
    .values(
        name=bindparam("b_name"),
        school_id=bindparam("b_school_id"),
        class_name=bindparam("b_class_name"),
        active=True,
        deactivated_at=None,
    )
)
# (deactivated_at starts the retention clock: `storage.maintenance.apply_retention`)
_DEACTIVATE_STUDENT = (
    update(students)
    .where(students.c.id == bindparam("b_id"))
    .values(active=False, deactivated_at=bindparam("b_now"))
)
_DELETE_IDENTITY = delete(identities).where(
    identities.c.staff_id == bindparam("b_staff_id"), identities.c.channel == bindparam("b_channel")
)
_DELETE_CATEGORIES = delete(student_categories).where(
    student_categories.c.student_id == bindparam("b_id"),
    student_categories.c.source == ROSTER_SOURCE,
)
_DELETE_ASSIGNMENTS = delete(assignments).where(assignments.c.student_id == bindparam("b_id"))


def import_roster(
    conn: Connection,
    roster: Roster,
    *,
    now: datetime,
    actor: str = "cli",
    audit_school_id: int | None = None,
) -> ImportReport:
    """Upsert `roster` inside the caller's transaction and write one audit row.

    Raises `RosterError` before writing anything when a student names a staff number that is
    neither in the roster nor active in the database, or a platform id belongs to another staff
    member who keeps it. Staff and students are matched by number and reactivated; their
    identities, categories and assignments are replaced by the roster's. Active students of a
    school the roster's students list names, missing from it, are deactivated.
    """
    staff_rows = _load_staff(conn)
    _check_references(conn, roster, staff_rows)
    school_ids = _ensure_schools(
        conn, {e.school for e in roster.students} | {e.school for e in roster.staff if e.school}
    )
    staff_added, staff_updated, staff_ids = _upsert_staff(
        conn, roster.staff, staff_rows, school_ids
    )
    added, updated, deactivated = _upsert_students(
        conn, roster.students, school_ids, staff_ids, now
    )
    report = ImportReport(staff_added, staff_updated, added, updated, deactivated)
    record(
        conn,
        at=now,
        actor=actor,
        action="roster_import",
        detail=asdict(report),
        school_id=audit_school_id,
    )
    return report


def import_files(
    db: Database, paths: Sequence[Path], *, now: datetime, dry_run: bool = False
) -> ImportReport:
    """Read, check and import roster files in one transaction; `dry_run` rolls it back.

    The report of a dry run says what a real import would change. Raises `RosterError`.
    """
    roster = read_roster(paths)
    with db.begin() as conn:
        savepoint = conn.begin_nested()
        report = import_roster(conn, roster, now=now)
        if dry_run:
            savepoint.rollback()
        else:
            savepoint.commit()
    return report


def _load_staff(conn: Connection) -> dict[str, _StaffRow]:
    rows = conn.execute(
        select(
            staff.c.id,
            staff.c.staff_no,
            staff.c.name,
            staff.c.school_id,
            staff.c.role,
            staff.c.active,
        )
    )
    return {r.staff_no: _StaffRow(r.id, r.name, r.school_id, r.role, r.active) for r in rows}


def _check_references(
    conn: Connection, roster: Roster, staff_rows: Mapping[str, _StaffRow]
) -> None:
    """Raise `RosterError` for staff numbers and platform ids this roster cannot resolve.

    A student's head teacher and carer must be active teachers (not coordinators or bureau staff,
    who see many schools' students) of the student's own school, as this roster lists them or,
    when it does not, as the database has them. A platform id may not belong to another staff
    member who keeps it (compared as the platform compares ids).
    """
    problems = _check_teachers(conn, roster, staff_rows)
    in_roster = {e.staff_no: e for e in roster.staff}
    owners: dict[tuple[str, str], tuple[str, str]] = {}  # (channel, key) -> (staff_no, id)
    for channel, external_id, staff_no in conn.execute(
        select(identities.c.channel, identities.c.external_id, staff.c.staff_no)
        .join(staff, staff.c.id == identities.c.staff_id)
        .where(identities.c.channel.in_(IDENTITY_COLUMNS))
    ):
        owners[(channel, _id_key(channel, external_id))] = (staff_no, external_id)
    for entry in roster.staff:
        for channel, column in IDENTITY_COLUMNS.items():
            wanted = entry.identity(channel)
            owner, held = owners.get((channel, _id_key(channel, wanted or "")), ("", ""))
            if not owner or owner == entry.staff_no:
                continue
            # The owner keeps the id unless this roster lists them with that column present.
            if owner not in in_roster or in_roster[owner].identity(channel) is None:
                text = (
                    _ID_TAKEN.format(no=owner)
                    if held == wanted
                    else _ID_TAKEN_IGNORING_CASE.format(no=owner, other=held)
                )
                problems.append(f"{entry.origin.at(COLUMN[column].label)}: {text}")
    if problems:
        raise RosterError(problems)


def _id_key(channel: str, external_id: str) -> str:
    fold = ID_FOLDS.get(channel)
    return fold(external_id) if fold else external_id


def _check_teachers(
    conn: Connection, roster: Roster, staff_rows: Mapping[str, _StaffRow]
) -> list[str]:
    """Problems with the head teachers and carers the students of `roster` name."""
    school_names: dict[int, str] = dict(conn.execute(select(schools.c.id, schools.c.name)).all())
    # staff number -> (role, school name) of every staff member a student may name
    known = {
        no: (row.role, school_names.get(row.school_id, "") if row.school_id else "")
        for no, row in staff_rows.items()
        if row.active
    }
    known.update((e.staff_no, (e.role.value, e.school)) for e in roster.staff)
    problems: list[str] = []
    for s in roster.students:
        for column, no in (("head_teacher_no", s.head_teacher_no), ("carer_no", s.carer_no)):
            if not no:
                continue
            where = s.origin.at(COLUMN[column].label)
            role, school = known.get(no, ("", ""))
            if not role:
                problems.append(f"{where}: {_UNKNOWN_STAFF.format(no=no)}")
            elif role != StaffRole.TEACHER.value:
                zh, en = _ROLE_NAMES.get(role, (role, role))
                problems.append(f"{where}: {_NOT_A_TEACHER.format(no=no, zh=zh, en=en)}")
            elif school != s.school:
                problems.append(f"{where}: {_OTHER_SCHOOL.format(no=no, school=school)}")
    return problems


def _ensure_schools(conn: Connection, names: set[str]) -> dict[str, int]:
    """School name -> id, inserting the names the database does not have yet."""
    existing = dict(conn.execute(select(schools.c.name, schools.c.id)).all())
    missing = sorted(names - existing.keys())
    if missing:
        conn.execute(insert(schools), [{"name": n} for n in missing])
        existing = dict(conn.execute(select(schools.c.name, schools.c.id)).all())
    return existing


def _upsert_staff(
    conn: Connection,
    entries: Sequence[StaffEntry],
    existing: Mapping[str, _StaffRow],
    school_ids: Mapping[str, int],
) -> tuple[int, int, dict[str, int]]:
    """Insert new staff, update changed ones, replace identities.

    Returns (added, updated, staff number -> id of every staff member in the database).
    """
    new = [e for e in entries if e.staff_no not in existing]
    if new:
        conn.execute(
            insert(staff),
            [
                {
                    "staff_no": e.staff_no,
                    "name": e.name,
                    "school_id": school_ids.get(e.school),
                    "role": e.role.value,
                    "active": True,
                }
                for e in new
            ],
        )
    changed = {
        e.staff_no: {
            "b_id": row.id,
            "b_name": e.name,
            "b_school_id": school_ids.get(e.school),
            "b_role": e.role.value,
        }
        for e in entries
        if (row := existing.get(e.staff_no)) is not None
        and row != _StaffRow(row.id, e.name, school_ids.get(e.school), e.role.value, True)
    }
    if changed:
        conn.execute(_UPDATE_STAFF, list(changed.values()))
    ids = dict(conn.execute(select(staff.c.staff_no, staff.c.id)).all())
    relinked = _replace_identities(conn, entries, ids)
    return len(new), len(changed.keys() | (relinked & existing.keys())), ids


def _replace_identities(
    conn: Connection, entries: Sequence[StaffEntry], staff_ids: Mapping[str, int]
) -> set[str]:
    """Give each entry exactly the ids its roster columns list; return the staff numbers changed.

    An empty cell keeps an id bound with a code (`绑定`): the roster does not know it."""
    current: dict[tuple[int, str], set[str]] = {}
    bound: set[tuple[int, str]] = set()
    for channel, external_id, staff_id, bound_at in conn.execute(
        select(
            identities.c.channel,
            identities.c.external_id,
            identities.c.staff_id,
            identities.c.bound_at,
        ).where(identities.c.channel.in_(IDENTITY_COLUMNS))
    ):
        current.setdefault((staff_id, channel), set()).add(external_id)
        if bound_at is not None:
            bound.add((staff_id, channel))
    deletes: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    changed: set[str] = set()
    for entry in entries:
        staff_id = staff_ids[entry.staff_no]
        for channel in IDENTITY_COLUMNS:
            wanted = entry.identity(channel)
            if wanted is None or current.get((staff_id, channel), set()) == ({wanted} - {""}):
                continue
            if wanted == "" and (staff_id, channel) in bound:
                continue
            changed.add(entry.staff_no)
            deletes.append({"b_staff_id": staff_id, "b_channel": channel})
            if wanted:
                inserts.append({"channel": channel, "external_id": wanted, "staff_id": staff_id})
    # All deletes first, so two staff members may swap ids within one import.
    if deletes:
        conn.execute(_DELETE_IDENTITY, deletes)
    if inserts:
        conn.execute(insert(identities), inserts)
    return changed


def _upsert_students(
    conn: Connection,
    entries: Sequence[StudentEntry],
    school_ids: Mapping[str, int],
    staff_ids: Mapping[str, int],
    now: datetime,
) -> tuple[int, int, int]:
    """Insert, update and deactivate students; return (added, updated, deactivated)."""
    # A student a review added with a provisional 学籍号 takes the real one of a new row with
    # the same name, school and class (one each, never guessed), keeping their visits.
    known = set(conn.execute(select(students.c.student_no)).scalars())
    merge_provisional(
        conn,
        [
            (e.student_no, e.name, school_ids[e.school], e.class_name)
            for e in entries
            if e.student_no not in known
        ],
    )
    existing = {
        r.student_no: _StudentRow(r.id, r.name, r.school_id, r.class_name, r.active)
        for r in conn.execute(
            select(
                students.c.id,
                students.c.student_no,
                students.c.name,
                students.c.school_id,
                students.c.class_name,
                students.c.active,
            )
        )
    }
    new = [e for e in entries if e.student_no not in existing]
    if new:
        conn.execute(
            insert(students),
            [
                {
                    "student_no": e.student_no,
                    "name": e.name,
                    "school_id": school_ids[e.school],
                    "class_name": e.class_name,
                    "active": True,
                }
                for e in new
            ],
        )
    changed = {
        e.student_no: {
            "b_id": row.id,
            "b_name": e.name,
            "b_school_id": school_ids[e.school],
            "b_class_name": e.class_name,
        }
        for e in entries
        if (row := existing.get(e.student_no)) is not None
        and row != _StudentRow(row.id, e.name, school_ids[e.school], e.class_name, True)
    }
    if changed:
        conn.execute(_UPDATE_STUDENT, list(changed.values()))
    ids = dict(conn.execute(select(students.c.student_no, students.c.id)).all())
    relinked = _replace_links(conn, entries, ids, staff_ids, now)
    deactivated = _deactivate_missing(conn, entries, existing, school_ids, now)
    return len(new), len(changed.keys() | (relinked & existing.keys())), deactivated


def _replace_links(
    conn: Connection,
    entries: Sequence[StudentEntry],
    student_ids: Mapping[str, int],
    staff_ids: Mapping[str, int],
    now: datetime,
) -> set[str]:
    """Replace categories and assignments that differ from the roster; return who changed."""
    # The roster owns only its own categories: one a screening list added (source 民政 ...)
    # stays, and is not added again when the roster names it too.
    categories: dict[int, set[str]] = {}
    others: dict[int, set[str]] = {}
    for student_id, category, source in conn.execute(
        select(
            student_categories.c.student_id,
            student_categories.c.category,
            student_categories.c.source,
        )
    ):
        mine = categories if source == ROSTER_SOURCE else others
        mine.setdefault(student_id, set()).add(category)
    assigned: dict[int, dict[str, int]] = {}
    for student_id, role, staff_id in conn.execute(
        select(assignments.c.student_id, assignments.c.role, assignments.c.staff_id)
    ):
        assigned.setdefault(student_id, {})[role] = staff_id
    category_rows: list[dict[str, Any]] = []
    assignment_rows: list[dict[str, Any]] = []
    cleared_categories: list[dict[str, Any]] = []
    cleared_assignments: list[dict[str, Any]] = []
    changed: set[str] = set()
    for entry in entries:
        student_id = student_ids[entry.student_no]
        have = categories.get(student_id, set())
        wanted_categories = [c for c in entry.categories if c not in others.get(student_id, ())]
        if have != set(wanted_categories):
            changed.add(entry.student_no)
            if have:
                cleared_categories.append({"b_id": student_id})
            category_rows += [
                {"student_id": student_id, "category": c, "source": ROSTER_SOURCE, "since": now}
                for c in wanted_categories
            ]
        current = assigned.get(student_id, {})
        wanted = _wanted_assignments(entry, current, staff_ids)
        if current != wanted:
            changed.add(entry.student_no)
            if current:
                cleared_assignments.append({"b_id": student_id})
            assignment_rows += [
                {"student_id": student_id, "role": role, "staff_id": staff_id}
                for role, staff_id in wanted.items()
            ]
    for statement, rows in (
        (_DELETE_CATEGORIES, cleared_categories),
        (_DELETE_ASSIGNMENTS, cleared_assignments),
        (insert(student_categories), category_rows),
        (insert(assignments), assignment_rows),
    ):
        if rows:
            conn.execute(statement, rows)
    return changed


def _wanted_assignments(
    entry: StudentEntry, current: Mapping[str, int], staff_ids: Mapping[str, int]
) -> dict[str, int]:
    wanted = {HEAD_TEACHER: staff_ids[entry.head_teacher_no]}
    if entry.carer_no:
        wanted[CARER] = staff_ids[entry.carer_no]
    elif entry.carer_no is None and CARER in current:  # no carer column: keep the carer
        wanted[CARER] = current[CARER]
    return wanted


def _deactivate_missing(
    conn: Connection,
    entries: Sequence[StudentEntry],
    existing: Mapping[str, _StudentRow],
    school_ids: Mapping[str, int],
    now: datetime,
) -> int:
    """Deactivate active students of the listed schools that the roster no longer lists."""
    listed_schools = {school_ids[e.school] for e in entries}
    listed = {e.student_no for e in entries}
    gone = [  # (a provisional student, added by a review, is on no roster yet: kept)
        {"b_id": row.id, "b_now": now}
        for no, row in existing.items()
        if row.active
        and row.school_id in listed_schools
        and no not in listed
        and not no.startswith(PROVISIONAL_PREFIX)
    ]
    if gone:
        conn.execute(_DEACTIVATE_STUDENT, gone)
    return len(gone)
