"""Export submitted visits and their follow-ups as spreadsheets for coordinators and the bureau.

CSV: the visits go to the file asked for, the follow-ups to `<stem>_followups.csv` beside it, both
UTF-8 with a BOM so Excel on Chinese Windows opens them correctly. XLSX: one workbook with the
sheets 家访记录 and 跟进事项. Files are written under a temporary name in the same folder and then
renamed, so a failure never leaves a half-written export behind.

Cells are data, never formulas: text starting with = + - @ (or a tab / carriage return) gets a
leading apostrophe, so a teacher's free-text note cannot run in Excel. Characters XML cannot carry
(`bot.core.text.xml_safe`) become U+FFFD in both formats: in an .xlsx one of them would make the
whole workbook unreadable, and a lone surrogate cannot even be written as UTF-8.

A file that cannot be written (no such folder, a folder in the way, no permission) is an
`ExportError` naming it, raised before anything is left behind.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import openpyxl
from sqlalchemy import select
from sqlalchemy.engine import Connection

from bot.core.errors import HomevisitError
from bot.core.text import xml_safe
from bot.core.types import FollowUpStatus, StaffRole, VisitStatus
from storage.audit import record
from storage.ladder import histories
from storage.schema import followups, schools, staff, students, visits

ExportFormat = Literal["csv", "xlsx"]
Cell = str | int

VISITS_SHEET = "家访记录"
FOLLOWUPS_SHEET = "跟进事项"
VISIT_HEADER = (
    "学籍号",
    "学生姓名",
    "学校",
    "班级",
    "教师工号",
    "教师姓名",
    "家访时间",
    "问卷版本",
)
FOLLOWUP_HEADER = (
    "编号",
    "学籍号",
    "学生姓名",
    "班级",
    "类型",
    "内容",
    "负责教师工号",
    "截止日期",
    "状态",
    "完成时间",
    "备注",
    "经过",  # every step: escalated, told, acknowledged, climbed, handed over, done (#14)
)
STATUS_LABELS = {
    FollowUpStatus.OPEN.value: "待跟进",
    FollowUpStatus.DONE.value: "已完成",
    FollowUpStatus.ESCALATED.value: "已上报",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_FOLDER_MISSING = "文件夹 {folder} 不存在 / folder {folder} does not exist"
_NOT_A_FOLDER = "{folder} 不是文件夹 / {folder} is not a folder"
_IS_A_FOLDER = "{path} 是文件夹，请给出文件名 / {path} is a folder: give a file name"
_CANNOT_WRITE = "无法写入 {path}（{reason}）/ cannot write {path} ({reason})"


class ExportError(HomevisitError):
    """The export cannot be written where asked. Nothing was left behind; the audit row of the
    export rolls back with the caller's transaction."""


@dataclass(frozen=True, slots=True)
class ExportReport:
    """How many visits and follow-ups were written, and the files written (in that order)."""

    visits: int
    followups: int
    files: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Sensitive:
    """What an export leaves out unless sensitive answers are asked for: the answer columns of
    `keys`, the follow-ups' closing notes, and what `detail` removes from a follow-up's
    description (kind, description -> what may be shown). `include` with the `reason` asked."""

    keys: frozenset[str] = frozenset()
    detail: Callable[[str, str], str] = lambda kind, detail: detail
    include: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Sheet:
    title: str
    header: tuple[str, ...]
    rows: list[list[Cell]]


def export_visits(
    conn: Connection,
    out: Path,
    fmt: ExportFormat,
    columns: Sequence[tuple[str, str]],
    kind_labels: Mapping[str, str],
    tz: ZoneInfo,
    since: date | None = None,
    actor: str = "cli",
    *,
    now: datetime | None = None,
    school_id: int | None = None,
    sensitive: Sensitive | None = None,
) -> ExportReport:
    """Write the submitted visits and the follow-ups to `out`; record the export in the audit log.

    `columns` is the questionnaire, (answer key, column header) in order; `kind_labels` names the
    follow-up kinds. `since` keeps visits submitted, and follow-ups created, on or after that local
    date in `tz`. The audit row is written in the caller's transaction before the files, so a
    failed write rolls it back with the transaction. `school_id` limits both sheets to that
    school's students (the console's scope). Raises `ValueError` for an unknown `fmt` and
    `ExportError` when a file cannot be written there (checked before the database is read).
    `sensitive` says what is sensitive; without `sensitive.include` it is left out, with it the
    audit entry records that and the reason given. (None: nothing is marked sensitive.)
    """
    if fmt not in ("csv", "xlsx"):
        raise ValueError(f"unknown export format {fmt!r}")
    policy = sensitive or Sensitive(include=True)
    if not policy.include:
        columns = [(key, header) for key, header in columns if key not in policy.keys]
    files = _files(out, fmt)
    start = _start_of(since, tz)
    visit_sheet = _visit_sheet(conn, columns, tz, start, school_id)
    followup_sheet = _followup_sheet(conn, kind_labels, tz, start, school_id, policy)
    detail: dict[str, object] = {
        "format": fmt,
        "visits": len(visit_sheet.rows),
        "followups": len(followup_sheet.rows),
        "since": since.isoformat() if since else None,
        "sensitive": bool(sensitive and sensitive.include),
    }
    if sensitive and sensitive.include:
        detail["reason"] = sensitive.reason
    record(
        conn,
        at=now or datetime.now(UTC),
        actor=actor,
        action="export",
        detail=detail,
        school_id=school_id,
    )
    if fmt == "csv":
        writers = [_csv_writer(visit_sheet), _csv_writer(followup_sheet)]
    else:
        writers = [_xlsx_writer([visit_sheet, followup_sheet])]
    _write_atomically(list(zip(files, writers, strict=True)))
    return ExportReport(len(visit_sheet.rows), len(followup_sheet.rows), files)


def exporter_scope(conn: Connection, staff_no: str) -> int | None:
    """The school an exporter may export (None: every school, the bureau). HomevisitError for
    anyone else: a teacher, or a staff number unknown or deactivated."""
    row = conn.execute(
        select(staff.c.role, staff.c.school_id).where(
            staff.c.staff_no == staff_no, staff.c.active.is_(True)
        )
    ).first()
    if row is None:
        raise HomevisitError(
            f"工号 {staff_no} 不存在或已停用 / staff number {staff_no!r} not found"
        )
    if row.role == StaffRole.BUREAU.value:
        return None
    if row.role == StaffRole.COORDINATOR.value and row.school_id is not None:
        return int(row.school_id)
    raise HomevisitError(
        f"工号 {staff_no} 无权导出（只有协调员导出本校的、教育局导出全区的）/ staff {staff_no!r} "
        "may not export: only coordinators (their school) and bureau staff"
    )


def _files(out: Path, fmt: ExportFormat) -> tuple[Path, ...]:
    """The files an export to `out` writes, each checked to be a file name in an existing folder."""
    _check_target(out)
    if fmt == "xlsx":
        return (out,)
    followup_file = out.with_name(f"{out.stem}_followups.csv")
    _check_target(followup_file)
    return out, followup_file


def _check_target(path: Path) -> None:
    folder = path.parent
    if not folder.exists():
        raise ExportError(_FOLDER_MISSING.format(folder=folder))
    if not folder.is_dir():
        raise ExportError(_NOT_A_FOLDER.format(folder=folder))
    if path.is_dir():
        raise ExportError(_IS_A_FOLDER.format(path=path))


def _start_of(since: date | None, tz: ZoneInfo) -> datetime | None:
    """The first moment of the local date `since`, in UTC.

    None (no lower bound) when that moment comes before the earliest one a datetime can hold in
    UTC, as for `--since 0001-01-01` east of Greenwich: nothing can be older, so it means "all".
    """
    if since is None:
        return None
    try:
        return datetime.combine(since, time(0), tzinfo=tz).astimezone(UTC)
    except OverflowError:
        return None


# ---------------------------------------------------------------------------- reading
def _visit_sheet(
    conn: Connection,
    columns: Sequence[tuple[str, str]],
    tz: ZoneInfo,
    start: datetime | None,
    school_id: int | None,
) -> _Sheet:
    query = (
        select(
            visits.c.submitted_at,
            visits.c.form_version,
            visits.c.answers,
            students.c.student_no,
            students.c.name.label("student_name"),
            schools.c.name.label("school_name"),
            students.c.class_name,
            staff.c.staff_no,
            staff.c.name.label("staff_name"),
        )
        .join(students, students.c.id == visits.c.student_id)
        .join(schools, schools.c.id == students.c.school_id)
        .join(staff, staff.c.id == visits.c.staff_id)
        .where(visits.c.status == VisitStatus.SUBMITTED.value)
        .order_by(visits.c.submitted_at, visits.c.id)
    )
    if start is not None:
        query = query.where(visits.c.submitted_at >= start)
    if school_id is not None:
        query = query.where(students.c.school_id == school_id)
    rows: list[list[Cell]] = [
        [
            r.student_no,
            r.student_name,
            r.school_name,
            r.class_name,
            r.staff_no,
            r.staff_name,
            _local(r.submitted_at, tz),
            r.form_version,
            *(_answer_text(r.answers.get(key)) for key, _ in columns),
        ]
        for r in conn.execute(query)
    ]
    return _Sheet(VISITS_SHEET, (*VISIT_HEADER, *(header for _, header in columns)), rows)


def _followup_sheet(
    conn: Connection,
    kind_labels: Mapping[str, str],
    tz: ZoneInfo,
    start: datetime | None,
    school_id: int | None,
    policy: Sensitive,
) -> _Sheet:
    query = (
        select(
            followups.c.id,
            followups.c.kind,
            followups.c.detail,
            followups.c.due_date,
            followups.c.status,
            followups.c.closed_at,
            followups.c.note,
            students.c.student_no,
            students.c.name.label("student_name"),
            students.c.class_name,
            staff.c.staff_no,
        )
        .join(students, students.c.id == followups.c.student_id)
        .join(staff, staff.c.id == followups.c.owner_staff_id)
        .order_by(followups.c.created_at, followups.c.id)
    )
    if start is not None:
        query = query.where(followups.c.created_at >= start)
    if school_id is not None:
        query = query.where(students.c.school_id == school_id)
    ids = query.with_only_columns(followups.c.id).order_by(None)
    steps = histories(conn, ids, tz, notes=policy.include)
    rows: list[list[Cell]] = [
        [
            r.id,
            r.student_no,
            r.student_name,
            r.class_name,
            kind_labels.get(r.kind, r.kind),
            r.detail if policy.include else policy.detail(r.kind, r.detail),
            r.staff_no,
            r.due_date.isoformat(),
            STATUS_LABELS.get(r.status, r.status),
            _local(r.closed_at, tz),
            *([r.note or ""] if policy.include else []),
            steps.get(r.id, ""),
        ]
        for r in conn.execute(query)
    ]
    # without sensitive data: no 备注 (notes) column, and the history without its notes
    header = FOLLOWUP_HEADER if policy.include else tuple(h for h in FOLLOWUP_HEADER if h != "备注")
    return _Sheet(FOLLOWUPS_SHEET, header, rows)


def _local(moment: datetime | None, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M") if moment else ""


def _answer_text(value: object) -> str:
    """An answer as one cell: lists joined with 、, yes/no as 是/否, missing as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, list):
        return "、".join(_answer_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ---------------------------------------------------------------------------- writing
def safe_cell(value: Cell) -> Cell:
    """Text that a spreadsheet would read as a formula, made literal with a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _cell(value: Cell) -> Cell:
    """A cell as both formats write it: XML-safe text, then the formula guard (in that order, so
    no character replaced or removed later can uncover a formula)."""
    if isinstance(value, str):
        value = xml_safe(value)
    return safe_cell(value)


def _csv_writer(sheet: _Sheet) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with path.open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([_cell(c) for c in sheet.header])
            writer.writerows([_cell(c) for c in row] for row in sheet.rows)

    return write


def _xlsx_writer(sheets: Sequence[_Sheet]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        book = openpyxl.Workbook(write_only=True)
        for sheet in sheets:
            ws = book.create_sheet(xml_safe(sheet.title))
            ws.freeze_panes = "A2"
            ws.append([_cell(c) for c in sheet.header])
            for row in sheet.rows:
                ws.append([_cell(c) for c in row])
        book.save(path)

    return write


def _write_atomically(targets: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every target to a temporary file beside it, then rename them all into place.

    On any failure every temporary file is removed; an `OSError` becomes an `ExportError` naming
    the file it was for.
    """
    written: list[tuple[Path, Path]] = []
    current = targets[0][0]
    try:
        for current, write in targets:
            fd, name = tempfile.mkstemp(
                dir=current.parent, prefix=f".{current.name}.", suffix=".tmp"
            )
            os.close(fd)
            written.append((Path(name), current))
            write(Path(name))
        for temp, current in written:
            os.replace(temp, current)
    except BaseException as exc:
        for temp, _ in written:
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            reason = exc.strerror or type(exc).__name__
            raise ExportError(_CANNOT_WRITE.format(path=current, reason=reason)) from exc
        raise
