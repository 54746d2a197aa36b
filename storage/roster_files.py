"""Roster files: read and check the students and staff lists (xlsx workbooks or CSV files).

`read_roster` only reads: an .xlsx workbook (sheets 学生/students and 教师/staff) or CSV files, each
CSV recognised by its header row. It collects every problem before failing, so an operator fixes a
file in one go; each problem names the file, the spreadsheet row (header = row 1) and the column.
A file over the size limits of `storage.filelimits` is refused before it is parsed, or as soon as
its rows pass a limit. Importing what it read into the database is `storage.roster`.

No student name ever reaches a log line or an error message: problems quote only numbers and ids.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from xml.etree.ElementTree import ParseError

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from bot.core.errors import RosterError
from bot.core.text import REPLACEMENT, xml_safe
from bot.core.types import StaffRole
from storage.filelimits import (
    ROSTER_LIMITS,
    UNREADABLE,
    RowLimiter,
    check_xlsx,
    limited_lines,
    read_limited,
)

STUDENTS = "students"
STAFF = "staff"
HEAD_TEACHER = "head_teacher"
CARER = "carer"
# Identity channel -> the roster column that carries it.
IDENTITY_COLUMNS = {
    "wecom": "wecom_userid",
    "dingtalk": "dingtalk_userid",
    "feishu": "feishu_user_id",  # the open_id Feishu events carry for this app
}
# How a platform compares its user ids, where it does not compare them exactly: two rows whose ids
# the platform takes for one account are refused, whatever the case they are written in.
# - WeCom: the member API's userid "系统进行唯一性检查时会忽略大小写" (uniqueness ignores case), so
#   QianLS and qianls cannot be two members: two rows with them are one account given twice, or a
#   typo that would leave one teacher unrecognised. Folded to lower case (userids are ASCII).
# - DingTalk: nothing we could read (PROTOCOLS.md, the user API's "员工唯一标识ID…企业内必须唯一")
#   says userids ignore case, and senderStaffId carries one exactly as the store matches it; so ids
#   differing only in case are taken for two accounts and both accepted. Should DingTalk turn out
#   to fold case, add it here.
ID_FOLDS: dict[str, Callable[[str], str]] = {"wecom": str.lower}

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
_DUPLICATE_IGNORING_CASE = (
    "与{zh}重复（企业微信账号不区分大小写）/ duplicate of {en} (WeCom UserIDs ignore case)"
)
_UNKNOWN_HEADER = (
    "第1行: 表头既不是学生名单也不是教师名单（需要 学籍号 或 工号 列）/ "
    "header matches neither a students nor a staff list (needs a student_no or staff_no column)"
)
_NO_SHEETS = (
    "找不到工作表 学生(students) 或 教师(staff) / no sheet named 学生/students or 教师/staff"
)
_EMPTY_FILE = "文件里没有工作表 / the workbook has no sheet"
_BAD_TYPE = "不支持的文件类型，请用 .xlsx 或 .csv / unsupported file type, use .xlsx or .csv"
_NOT_UTF8_OR_GB = "编码既不是 UTF-8 也不是 GB18030 / encoding is neither UTF-8 nor GB18030"
_NO_FILES = "没有名单文件 / no roster file given"
# A value with U+FFFD lost a character before it reached us (a broken encoding or copy). The import
# stores text exactly or not at all: above all names, since teachers tell children apart by name
# (one teacher may have two children called 王小雨), and a name with a letter missing or replaced
# is another child's name. So the row is refused, naming the column, and the operator retypes it.
_BROKEN = (
    "含有无法识别的字符（U+FFFD，原文件中的字符已损坏），请重新输入 / "
    "contains an unreadable character (U+FFFD: the file lost a character here), retype it"
)


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
    feishu_user_id: str | None = None

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
    _Column("飞书ID", "feishu_user_id", present=False, value=False, max_len=128),
)
_COLUMNS = {STUDENTS: STUDENT_COLUMNS, STAFF: STAFF_COLUMNS}
COLUMN = {c.en: c for c in (*STUDENT_COLUMNS, *STAFF_COLUMNS)}  # for labels: same text in both


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
            ("feishu_user_id", lambda s: s.feishu_user_id),
        ),
        problems,
    )
    if problems:
        raise RosterError(problems)
    return Roster(tuple(found_students), tuple(found_staff))


_READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    csv.Error,
    zipfile.BadZipFile,
    InvalidFileException,
    ParseError,  # a sheet that is not well-formed XML
)


def _tables(
    paths: Sequence[Path], problems: list[str], *, every_sheet: bool = False
) -> Iterator[_Table]:
    for path in paths:
        suffix = path.suffix.lower()
        try:
            if suffix in (".xlsx", ".xlsm"):
                yield from _read_xlsx(path, problems, every_sheet=every_sheet)
            elif suffix in (".csv", ".txt"):
                table = _read_csv(path, problems)
                if table is not None:
                    yield table
            else:
                problems.append(f"{path.name}: {_BAD_TYPE}")
        except RosterError as exc:  # over a size limit (storage.filelimits): names file and limit
            problems.extend(exc.problems)
        except _READ_ERRORS as exc:  # a missing file, a broken zip, a CSV with NUL bytes ...
            problems.append(f"{path.name}: {UNREADABLE.format(reason=type(exc).__name__)}")


def _read_csv(path: Path, problems: list[str]) -> _Table | None:
    """UTF-8 (BOM or not), else GB18030: a superset of GBK, what Excel writes on Chinese Windows."""
    data = read_limited(path)
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return _Table(path.name, None, _csv_rows(path.name, data, encoding))
        except UnicodeDecodeError:
            continue
    problems.append(f"{path.name}: {_NOT_UTF8_OR_GB}")
    return None


def _csv_rows(name: str, data: bytes, encoding: str) -> list[list[str]]:
    text = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")
    records = csv.reader(limited_lines(name, text))
    return [[_clean(cell) for cell in row] for row in RowLimiter(name).rows(name, records)]


def _read_xlsx(path: Path, problems: list[str], *, every_sheet: bool = False) -> Iterator[_Table]:
    data = read_limited(path)
    check_xlsx(path.name, data)  # before openpyxl sees a byte of it
    limiter = RowLimiter(path.name)
    with warnings.catch_warnings():  # openpyxl warns about styles it does not know: harmless here
        warnings.simplefilter("ignore")
        book = openpyxl.load_workbook(
            io.BytesIO(data), read_only=True, data_only=True, keep_links=False
        )
        tables: list[_Table] = []
        try:
            for sheet in book.worksheets:
                kind = _SHEETS.get(_norm(sheet.title))
                if kind is not None or every_sheet:
                    label = f"{path.name}[{sheet.title}]"
                    tables.append(_Table(label, kind, _sheet_rows(sheet, limiter, label)))
        finally:
            book.close()
    if not tables:
        problems.append(f"{path.name}: {_EMPTY_FILE if every_sheet else _NO_SHEETS}")
    yield from tables


def _sheet_rows(sheet: Any, limiter: RowLimiter, label: str) -> list[list[str]]:
    sheet.reset_dimensions()  # some writers store a wrong size; read to the real end
    # check_xlsx found no value beyond the column limit, so nothing is lost by stopping there.
    rows = sheet.iter_rows(values_only=True, max_col=ROSTER_LIMITS.columns)
    return [[_cell_text(v) for v in row] for row in limiter.rows(label, rows)]


def _cell_text(value: object) -> str:
    """A cell as text: Excel keeps numbers as floats, so 20230001.0 becomes "20230001"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _clean(str(value))


_CONTROL = dict.fromkeys(c for c in range(32))


def _clean(text: str) -> str:
    """Stripped, control characters dropped, any other character XML cannot carry (a lone
    surrogate, U+FFFE, U+FFFF) replaced by U+FFFD.

    Control characters are debris (a vertical tab pasted from Word, a line break typed in a cell)
    that break chat XML and can hide a formula; removing them loses nothing a reader could see.
    The others mean a character was lost on the way, so they are marked, and `_check_values`
    refuses a value so marked: see `_BROKEN`.
    """
    return xml_safe(text.translate(_CONTROL)).strip()


def _kind_of(header: list[str]) -> str | None:
    """Students or staff, by which list's own columns the header has more of (None: neither)."""
    votes = {
        kind: sum(1 for col in _COLUMNS[kind] for h in header if col.matches(h))
        - sum(1 for col in _COLUMNS[other] for h in header if col.matches(h))
        for kind, other in ((STUDENTS, STAFF), (STAFF, STUDENTS))
    }
    best = max(votes, key=lambda k: votes[k])
    return best if votes[best] > 0 else None


# ---------------------------------------------------------------------------- other lists
# Another department's list (民政, 残联): read by `read_list`. Any other column (an identity-card
# number above all) is never read into a value, so nothing downstream can keep it.
SCREEN_COLUMNS = (
    _Column("学籍号", "student_no", present=False, value=False, max_len=64),
    _Column("姓名", "name", max_len=100),
    _Column("学校", "school", max_len=200),
    _Column("班级", "class", max_len=100),
    _Column("资助类别", "categories"),
)


@dataclass(frozen=True, slots=True)
class ListRow:
    """One row of a list read by `read_list`: where it is, and its known columns' values."""

    origin: Origin
    values: dict[str, str | None]

    def categories(self) -> tuple[str, ...]:
        return split_categories(self.values.get("categories") or "")


def split_categories(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for c in _CATEGORY_SPLIT.split(text) if c))


def _list_tables(
    paths: Sequence[Path], columns: Sequence[_Column], problems: list[str]
) -> Iterator[_Table]:
    """Per file, the sheets whose header has a known column (a notes sheet is skipped); when none
    has, the first, so that its missing columns are named."""
    for path in paths:
        tables = list(_tables([path], problems, every_sheet=True))
        listed = [
            t for t in tables if any(c.matches(h) for c in columns for h in (t.rows or [[]])[0])
        ]
        yield from listed or tables[:1]


def read_list(paths: Sequence[Path], columns: Sequence[_Column] = SCREEN_COLUMNS) -> list[ListRow]:
    """The rows of .xlsx (every sheet whose header has one of `columns`) or CSV files, with the
    roster's checks and limits; raise `RosterError` listing every problem found."""
    if not paths:
        raise RosterError([_NO_FILES])
    problems: list[str] = []
    rows: list[ListRow] = []
    for table in _list_tables(paths, columns, problems):
        header = table.rows[0] if table.rows else []
        index = _header_index(table.source, header, columns, problems)
        if index is None:
            continue
        for row_no, cells in enumerate(table.rows[1:], start=2):
            if not any(cells):
                continue
            origin = Origin(table.source, row_no)
            values: _Values = {
                col.en: (cells[i] if i < len(cells) else "") if i is not None else None
                for col, i in ((c, index.get(c.en)) for c in columns)
            }
            if _check_values(origin, values, columns, problems):
                row = ListRow(origin, values)
                if any(len(c) > _CATEGORY_MAX for c in row.categories()):
                    column = COLUMN["categories"].label
                    problems.append(f"{origin.at(column)}: {_TOO_LONG.format(n=_CATEGORY_MAX)}")
                else:
                    rows.append(row)
    if problems:
        raise RosterError(problems)
    return rows


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
        elif value and REPLACEMENT in value:
            problems.append(f"{origin.at(col.label)}: {_BROKEN}")
            ok = False
    return ok


def _student(origin: Origin, v: _Values, problems: list[str]) -> StudentEntry | None:
    categories = tuple(dict.fromkeys(c for c in _CATEGORY_SPLIT.split(v["categories"] or "") if c))
    if any(len(c) > _CATEGORY_MAX for c in categories):
        column = COLUMN["categories"].label
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
        problems.append(f"{origin.at(COLUMN['role'].label)}: {_BAD_ROLE.format(v=v['role'])}")
        return None
    if role is not StaffRole.BUREAU and not v["school"]:
        problems.append(f"{origin.at(COLUMN['school'].label)}: {_EMPTY}")
        return None
    return StaffEntry(
        origin=origin,
        staff_no=v["staff_no"] or "",
        name=v["name"] or "",
        school=v["school"] or "",
        role=role,
        wecom_userid=v["wecom_userid"],
        dingtalk_userid=v["dingtalk_userid"],
        feishu_user_id=v["feishu_user_id"],
    )


def _check_unique(
    entries: Sequence[_E],
    keys: Iterable[tuple[str, Callable[[_E], str | None]]],
    problems: list[str],
) -> None:
    """Report every entry whose key (when filled) repeats an earlier one, as its platform would
    compare the two (`ID_FOLDS`)."""
    folds = {IDENTITY_COLUMNS[channel]: fold for channel, fold in ID_FOLDS.items()}
    for column, key_of in keys:
        fold = folds.get(column)
        seen: dict[str, tuple[Origin, str]] = {}
        for entry in entries:
            value = key_of(entry)
            if not value:
                continue
            key = fold(value) if fold else value
            first, first_value = seen.setdefault(key, (entry.origin, value))
            if first is not entry.origin:
                zh, en = first.refer_from(entry.origin)
                text = _DUPLICATE if first_value == value else _DUPLICATE_IGNORING_CASE
                where = entry.origin.at(COLUMN[column].label)
                problems.append(f"{where}: {text.format(zh=zh, en=en)}")
