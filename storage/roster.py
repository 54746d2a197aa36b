"""Roster files: read and check the students and staff lists, then import them in one transaction.

`read_roster` only reads: an .xlsx workbook (sheets 学生/students and 教师/staff) or CSV files, each
CSV recognised by its header row. It collects every problem before failing, so an operator fixes a
file in one go; each problem names the file, the spreadsheet row (header = row 1) and the column.

`import_roster` writes inside the caller's transaction and raises `RosterError` before writing
anything when a row refers to a staff number or platform id it cannot resolve. Students missing from
the file are deactivated (never deleted) only in the schools the file lists, so a district may
import school by school. Importing the same roster twice changes nothing.

No student name ever reaches a log line or an error message: problems quote only numbers and ids.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from bot.core.errors import RosterError
from bot.core.types import StaffRole
from storage.db import Database
from storage.schema import (
    assignments,
    audit_log,
    identities,
    schools,
    staff,
    student_categories,
    students,
)

STUDENTS = "students"
STAFF = "staff"
HEAD_TEACHER = "head_teacher"
CARER = "carer"
# Identity channel -> the roster column that carries it.
IDENTITY_COLUMNS = {"wecom": "wecom_userid", "dingtalk": "dingtalk_userid"}

_ROLES = {
    "教师": StaffRole.TEACHER,
    "老师": StaffRole.TEACHER,
    "teacher": StaffRole.TEACHER,
    "协调员": StaffRole.COORDINATOR,
    "coordinator": StaffRole.COORDINATOR,
    "教育局": StaffRole.BUREAU,
    "bureau": StaffRole.BUREAU,
}
_SHEETS = {"学生": STUDENTS, "students": STUDENTS, "教师": STAFF, "staff": STAFF}
_CATEGORY_SPLIT = re.compile(r"[、，,;；\s]+")
_CATEGORY_MAX = 50

# Problem texts (Chinese / English), one place for the whole feature.
_EMPTY = "不能为空 / must not be empty"
_MISSING_COLUMN = "缺少此列 / missing column"
_DUPLICATE_COLUMN = "此列出现了两次 / column appears twice"
_TOO_LONG = "太长（最多 {n} 个字符）/ too long (at most {n} characters)"
_BAD_ROLE = "未知角色“{v}”，应为 教师/协调员/教育局 / unknown role, use teacher/coordinator/bureau"
_DUPLICATE = "与{zh}重复 / duplicate of {en}"
_UNKNOWN_STAFF = (
    "工号 {no} 既不在本名单中，也不是系统中的在职教师 / "
    "staff number {no} is neither in this roster nor an active staff member"
)
_ID_TAKEN = "已被工号 {no} 使用 / already used by staff number {no}"
_UNKNOWN_HEADER = (
    "第1行: 表头既不是学生名单也不是教师名单（需要 学籍号 或 工号 列）/ "
    "header matches neither a students nor a staff list (needs a student_no or staff_no column)"
)
_NO_SHEETS = (
    "找不到工作表 学生(students) 或 教师(staff) / no sheet named 学生/students or 教师/staff"
)
_UNREADABLE = "无法读取（{reason}）/ cannot read the file ({reason})"
_BAD_TYPE = "不支持的文件类型，请用 .xlsx 或 .csv / unsupported file type, use .xlsx or .csv"
_NOT_UTF8_OR_GB = "编码既不是 UTF-8 也不是 GB18030 / encoding is neither UTF-8 nor GB18030"
_NO_FILES = "没有名单文件 / no roster file given"


# ---------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class Origin:
    """Where a roster entry came from: a file (or sheet) label and its spreadsheet row."""

    source: str
    row: int

    def at(self, column: str) -> str:
        return f"{self.source} 第{self.row}行 {column}"

    def refer_from(self, other: Origin) -> tuple[str, str]:
        """This row as `other` should mention it (zh, en): the file only when it differs."""
        if other.source == self.source:
            return f"第{self.row}行", f"row {self.row}"
        return f"{self.source} 第{self.row}行", f"{self.source} row {self.row}"


@dataclass(frozen=True, slots=True)
class StaffEntry:
    """One staff line. An identity of None means the column is absent: keep what the DB has."""

    origin: Origin
    staff_no: str
    name: str
    school: str  # "" for none (bureau staff)
    role: StaffRole
    wecom_userid: str | None = None
    dingtalk_userid: str | None = None

    def identity(self, channel: str) -> str | None:
        """The wanted external id on `channel`: None keeps the current one, "" removes it."""
        value: str | None = getattr(self, IDENTITY_COLUMNS[channel])
        return value


@dataclass(frozen=True, slots=True)
class StudentEntry:
    """One student line. `carer_no` None means the column is absent: keep the current carer."""

    origin: Origin
    student_no: str
    name: str
    school: str
    class_name: str
    categories: tuple[str, ...]
    head_teacher_no: str
    carer_no: str | None = None


@dataclass(frozen=True, slots=True)
class Roster:
    """A checked roster: staff numbers, student numbers and platform ids are unique in it."""

    students: tuple[StudentEntry, ...] = ()
    staff: tuple[StaffEntry, ...] = ()


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


# ---------------------------------------------------------------------------- columns
@dataclass(frozen=True, slots=True)
class _Column:
    zh: str
    en: str
    present: bool = True  # the header must have this column
    value: bool = True  # every row must fill it
    max_len: int = 0  # 0: no limit (the database column length otherwise)

    @property
    def label(self) -> str:
        return f"{self.zh}({self.en})"

    def matches(self, header: str) -> bool:
        return _norm(header) in (_norm(self.zh), _norm(self.en))


STUDENT_COLUMNS = (
    _Column("学籍号", "student_no", max_len=64),
    _Column("姓名", "name", max_len=100),
    _Column("学校", "school", max_len=200),
    _Column("班级", "class", max_len=100),
    _Column("资助类别", "categories", value=False),
    _Column("班主任工号", "head_teacher_no", max_len=64),
    _Column("包靠教师工号", "carer_no", present=False, value=False, max_len=64),
)
STAFF_COLUMNS = (
    _Column("工号", "staff_no", max_len=64),
    _Column("姓名", "name", max_len=100),
    _Column("学校", "school", value=False, max_len=200),  # required unless the role is bureau
    _Column("角色", "role"),
    _Column("企业微信ID", "wecom_userid", present=False, value=False, max_len=128),
    _Column("钉钉ID", "dingtalk_userid", present=False, value=False, max_len=128),
)
_COLUMNS = {STUDENTS: STUDENT_COLUMNS, STAFF: STAFF_COLUMNS}
_COL = {c.en: c for c in (*STUDENT_COLUMNS, *STAFF_COLUMNS)}  # for labels: same text in both


def _norm(header: str) -> str:
    """Header comparison key: no spaces, underscores or dashes, lower case."""
    return re.sub(r"[\s_\-]+", "", header).lower()


# ---------------------------------------------------------------------------- reading files
@dataclass(frozen=True, slots=True)
class _Table:
    """The cells of one CSV file or one sheet; rows[0] is the header (spreadsheet row 1)."""

    source: str
    kind: str | None  # from the sheet name; None: tell by the header
    rows: list[list[str]]


def read_roster(paths: Sequence[Path]) -> Roster:
    """Read and check roster files; raise `RosterError` listing every problem found.

    Accepts .xlsx workbooks and .csv files in any order and number; entries of several files are
    merged (a student number appearing in two files is a duplicate).
    """
    problems: list[str] = []
    if not paths:
        raise RosterError([_NO_FILES])
    found_students: list[StudentEntry] = []
    found_staff: list[StaffEntry] = []
    for table in _tables(paths, problems):
        kind = table.kind or _kind_of(table.rows[0] if table.rows else [])
        if kind is None:
            problems.append(f"{table.source} {_UNKNOWN_HEADER}")
        elif kind == STUDENTS:
            found_students.extend(_parse(table, STUDENTS, _student, problems))
        else:
            found_staff.extend(_parse(table, STAFF, _staff, problems))
    _check_unique(found_students, (("student_no", lambda s: s.student_no),), problems)
    _check_unique(
        found_staff,
        (
            ("staff_no", lambda s: s.staff_no),
            ("wecom_userid", lambda s: s.wecom_userid),
            ("dingtalk_userid", lambda s: s.dingtalk_userid),
        ),
        problems,
    )
    if problems:
        raise RosterError(problems)
    return Roster(tuple(found_students), tuple(found_staff))


_READ_ERRORS = (OSError, ValueError, KeyError, csv.Error, zipfile.BadZipFile, InvalidFileException)


def _tables(paths: Sequence[Path], problems: list[str]) -> Iterator[_Table]:
    for path in paths:
        suffix = path.suffix.lower()
        try:
            if suffix in (".xlsx", ".xlsm"):
                yield from _read_xlsx(path, problems)
            elif suffix in (".csv", ".txt"):
                table = _read_csv(path, problems)
                if table is not None:
                    yield table
            else:
                problems.append(f"{path.name}: {_BAD_TYPE}")
        except _READ_ERRORS as exc:  # a missing file, a broken zip, a CSV with NUL bytes ...
            problems.append(f"{path.name}: {_UNREADABLE.format(reason=type(exc).__name__)}")


def _read_csv(path: Path, problems: list[str]) -> _Table | None:
    text = _decode(path.read_bytes())
    if text is None:
        problems.append(f"{path.name}: {_NOT_UTF8_OR_GB}")
        return None
    rows = [
        [_clean(cell) for cell in record] for record in csv.reader(io.StringIO(text, newline=""))
    ]
    return _Table(path.name, None, rows)


def _decode(data: bytes) -> str | None:
    """UTF-8 (BOM or not), else GB18030: a superset of GBK, what Excel writes on Chinese Windows."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    for encoding in ("utf-8", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def _read_xlsx(path: Path, problems: list[str]) -> Iterator[_Table]:
    with warnings.catch_warnings():  # openpyxl warns about styles it does not know: harmless here
        warnings.simplefilter("ignore")
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            tables = [
                _Table(
                    f"{path.name}[{sheet.title}]", _SHEETS[_norm(sheet.title)], _sheet_rows(sheet)
                )
                for sheet in book.worksheets
                if _norm(sheet.title) in _SHEETS
            ]
        finally:
            book.close()
    if not tables:
        problems.append(f"{path.name}: {_NO_SHEETS}")
    yield from tables


def _sheet_rows(sheet: Any) -> list[list[str]]:
    sheet.reset_dimensions()  # some writers store a wrong size; read to the real end
    return [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]


def _cell_text(value: object) -> str:
    """A cell as text: Excel keeps numbers as floats, so 20230001.0 becomes "20230001"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _clean(str(value))


_CONTROL = dict.fromkeys(c for c in range(32))


def _clean(text: str) -> str:
    """Stripped, without control characters: they break chat XML and can hide a formula."""
    return text.translate(_CONTROL).strip()


def _kind_of(header: list[str]) -> str | None:
    """Students or staff, by which list's own columns the header has more of (None: neither)."""
    votes = {
        kind: sum(1 for col in _COLUMNS[kind] for h in header if col.matches(h))
        - sum(1 for col in _COLUMNS[other] for h in header if col.matches(h))
        for kind, other in ((STUDENTS, STAFF), (STAFF, STUDENTS))
    }
    best = max(votes, key=lambda k: votes[k])
    return best if votes[best] > 0 else None


# ---------------------------------------------------------------------------- parsing rows
_Values = dict[str, str | None]  # column (English name) -> stripped text; None: column absent
_E = TypeVar("_E", StudentEntry, StaffEntry)


def _parse(
    table: _Table,
    kind: str,
    build: Callable[[Origin, _Values, list[str]], _E | None],
    problems: list[str],
) -> Iterator[_E]:
    """Entries built from the rows of `table`, after checking its header and required values."""
    columns = _COLUMNS[kind]
    header = table.rows[0] if table.rows else []
    index = _header_index(table.source, header, columns, problems)
    if index is None:
        return
    for row_no, cells in enumerate(table.rows[1:], start=2):
        if not any(cells):
            continue
        origin = Origin(table.source, row_no)
        values: _Values = {
            col.en: (cells[i] if i < len(cells) else "") if i is not None else None
            for col, i in ((c, index.get(c.en)) for c in columns)
        }
        filled = _check_values(origin, values, columns, problems)
        entry = build(origin, values, problems)  # checks the rest even when a value is missing
        if filled and entry is not None:
            yield entry


def _header_index(
    source: str, header: list[str], columns: Sequence[_Column], problems: list[str]
) -> dict[str, int] | None:
    """Column -> position in the header; None (and problems) when a required column is missing."""
    index: dict[str, int] = {}
    ok = True
    for col in columns:
        found = [i for i, h in enumerate(header) if col.matches(h)]
        if len(found) > 1:
            problems.append(f"{Origin(source, 1).at(col.label)}: {_DUPLICATE_COLUMN}")
            ok = False
        elif found:
            index[col.en] = found[0]
        elif col.present:
            problems.append(f"{Origin(source, 1).at(col.label)}: {_MISSING_COLUMN}")
            ok = False
    return index if ok else None


def _check_values(
    origin: Origin, values: _Values, columns: Sequence[_Column], problems: list[str]
) -> bool:
    ok = True
    for col in columns:
        value = values[col.en]
        if col.value and not value:
            problems.append(f"{origin.at(col.label)}: {_EMPTY}")
            ok = False
        elif value and col.max_len and len(value) > col.max_len:
            problems.append(f"{origin.at(col.label)}: {_TOO_LONG.format(n=col.max_len)}")
            ok = False
    return ok


def _student(origin: Origin, v: _Values, problems: list[str]) -> StudentEntry | None:
    categories = tuple(dict.fromkeys(c for c in _CATEGORY_SPLIT.split(v["categories"] or "") if c))
    if any(len(c) > _CATEGORY_MAX for c in categories):
        column = _COL["categories"].label
        problems.append(f"{origin.at(column)}: {_TOO_LONG.format(n=_CATEGORY_MAX)}")
        return None
    return StudentEntry(
        origin=origin,
        student_no=v["student_no"] or "",
        name=v["name"] or "",
        school=v["school"] or "",
        class_name=v["class"] or "",
        categories=categories,
        head_teacher_no=v["head_teacher_no"] or "",
        carer_no=v["carer_no"],
    )


def _staff(origin: Origin, v: _Values, problems: list[str]) -> StaffEntry | None:
    role = _ROLES.get((v["role"] or "").lower())
    if role is None:
        problems.append(f"{origin.at(_COL['role'].label)}: {_BAD_ROLE.format(v=v['role'])}")
        return None
    if role is not StaffRole.BUREAU and not v["school"]:
        problems.append(f"{origin.at(_COL['school'].label)}: {_EMPTY}")
        return None
    return StaffEntry(
        origin=origin,
        staff_no=v["staff_no"] or "",
        name=v["name"] or "",
        school=v["school"] or "",
        role=role,
        wecom_userid=v["wecom_userid"],
        dingtalk_userid=v["dingtalk_userid"],
    )


def _check_unique(
    entries: Sequence[_E],
    keys: Iterable[tuple[str, Callable[[_E], str | None]]],
    problems: list[str],
) -> None:
    """Report every entry whose key (when filled) repeats an earlier one."""
    for column, key_of in keys:
        seen: dict[str, Origin] = {}
        for entry in entries:
            key = key_of(entry)
            if not key:
                continue
            first = seen.setdefault(key, entry.origin)
            if first is not entry.origin:
                zh, en = first.refer_from(entry.origin)
                problems.append(
                    f"{entry.origin.at(_COL[column].label)}: {_DUPLICATE.format(zh=zh, en=en)}"
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
    )
)
_DEACTIVATE_STUDENT = (
    update(students).where(students.c.id == bindparam("b_id")).values(active=False)
)
_DELETE_IDENTITY = delete(identities).where(
    identities.c.staff_id == bindparam("b_staff_id"), identities.c.channel == bindparam("b_channel")
)
_DELETE_CATEGORIES = delete(student_categories).where(
    student_categories.c.student_id == bindparam("b_id")
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
    added, updated, deactivated = _upsert_students(conn, roster.students, school_ids, staff_ids)
    report = ImportReport(staff_added, staff_updated, added, updated, deactivated)
    conn.execute(
        insert(audit_log).values(
            at=now,
            actor=actor,
            action="roster_import",
            detail=json.dumps(asdict(report)),
            school_id=audit_school_id,
        )
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
    """Raise `RosterError` for staff numbers and platform ids this roster cannot resolve."""
    in_roster = {e.staff_no: e for e in roster.staff}
    known = in_roster.keys() | {no for no, row in staff_rows.items() if row.active}
    problems = [
        f"{s.origin.at(_COL[column].label)}: {_UNKNOWN_STAFF.format(no=no)}"
        for s in roster.students
        for column, no in (("head_teacher_no", s.head_teacher_no), ("carer_no", s.carer_no))
        if no and no not in known
    ]
    owners = {
        (r.channel, r.external_id): r.staff_no
        for r in conn.execute(
            select(identities.c.channel, identities.c.external_id, staff.c.staff_no)
            .join(staff, staff.c.id == identities.c.staff_id)
            .where(identities.c.channel.in_(IDENTITY_COLUMNS))
        )
    }
    for entry in roster.staff:
        for channel, column in IDENTITY_COLUMNS.items():
            owner = owners.get((channel, entry.identity(channel) or ""))
            if owner is None or owner == entry.staff_no:
                continue
            # The owner keeps the id unless this roster lists them with that column present.
            if owner not in in_roster or in_roster[owner].identity(channel) is None:
                problems.append(
                    f"{entry.origin.at(_COL[column].label)}: {_ID_TAKEN.format(no=owner)}"
                )
    if problems:
        raise RosterError(problems)


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
    """Give each entry exactly the ids its roster columns list; return the staff numbers changed."""
    current: dict[tuple[int, str], set[str]] = {}
    for channel, external_id, staff_id in conn.execute(
        select(identities.c.channel, identities.c.external_id, identities.c.staff_id).where(
            identities.c.channel.in_(IDENTITY_COLUMNS)
        )
    ):
        current.setdefault((staff_id, channel), set()).add(external_id)
    deletes: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    changed: set[str] = set()
    for entry in entries:
        staff_id = staff_ids[entry.staff_no]
        for channel in IDENTITY_COLUMNS:
            wanted = entry.identity(channel)
            if wanted is None or current.get((staff_id, channel), set()) == ({wanted} - {""}):
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
) -> tuple[int, int, int]:
    """Insert, update and deactivate students; return (added, updated, deactivated)."""
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
    relinked = _replace_links(conn, entries, ids, staff_ids)
    deactivated = _deactivate_missing(conn, entries, existing, school_ids)
    return len(new), len(changed.keys() | (relinked & existing.keys())), deactivated


def _replace_links(
    conn: Connection,
    entries: Sequence[StudentEntry],
    student_ids: Mapping[str, int],
    staff_ids: Mapping[str, int],
) -> set[str]:
    """Replace categories and assignments that differ from the roster; return who changed."""
    categories: dict[int, set[str]] = {}
    for student_id, category in conn.execute(
        select(student_categories.c.student_id, student_categories.c.category)
    ):
        categories.setdefault(student_id, set()).add(category)
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
        if have != set(entry.categories):
            changed.add(entry.student_no)
            if have:
                cleared_categories.append({"b_id": student_id})
            category_rows += [{"student_id": student_id, "category": c} for c in entry.categories]
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
) -> int:
    """Deactivate active students of the listed schools that the roster no longer lists."""
    listed_schools = {school_ids[e.school] for e in entries}
    listed = {e.student_no for e in entries}
    gone = [
        {"b_id": row.id}
        for no, row in existing.items()
        if row.active and row.school_id in listed_schools and no not in listed
    ]
    if gone:
        conn.execute(_DEACTIVATE_STUDENT, gone)
    return len(gone)
