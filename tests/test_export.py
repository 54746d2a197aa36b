"""Export of visits and follow-ups to CSV and XLSX (SQLite and PostgreSQL). Names are fictional."""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import func, insert, select

from storage.db import Database
from storage.demo import load_demo
from storage.export import (
    FOLLOWUP_HEADER,
    VISIT_HEADER,
    ExportError,
    ExportReport,
    export_visits,
)
from storage.schema import audit_log, followups, staff, students, visits
from tests.conftest import FakeClock

TZ = ZoneInfo("Asia/Shanghai")
COLUMNS = [
    ("method", "家访方式"),
    ("device_missing", "缺少设备"),
    ("other", "其他情况"),
    ("children", "子女数"),
    ("skipped", "未答"),
]
KIND_LABELS = {"device": "平板/电脑"}
# 2026-03-01 16:30 UTC is already 2 March in Shanghai (00:30).
LATE = datetime(2026, 3, 1, 16, 30, tzinfo=UTC)
EARLY = datetime(2026, 2, 20, 2, 0, tzinfo=UTC)


def _ids(conn: Any, table: Any, column: Any, keys: list[str]) -> list[int]:
    return [conn.execute(select(table.c.id).where(column == k)).scalar_one() for k in keys]


def _visit(
    conn: Any, student_id: int, staff_id: int, status: str, at: datetime, **extra: Any
) -> int:
    values = {
        "student_id": student_id, "staff_id": staff_id, "form_id": "home_visit",
        "form_version": "2026.1", "status": status, "started_at": at, "updated_at": at,
        "submitted_at": at if status == "submitted" else None, "answers": {},
    }  # fmt: skip
    pk = conn.execute(insert(visits).values({**values, **extra})).inserted_primary_key
    return int(pk[0])


@pytest.fixture
def visited(db: Database, clock: FakeClock) -> Database:
    """The demo roster with two submitted visits, one draft and two follow-ups."""
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
        s1, s5 = _ids(conn, students, students.c.student_no, ["DEMO0001", "DEMO0005"])
        t1, t2 = _ids(conn, staff, staff.c.staff_no, ["T001", "T002"])
        late = _visit(conn, s1, t1, "submitted", LATE, answers={
            "method": "微信视频", "device_missing": ["平板或电脑", "网络或流量"],
            "other": '=HYPERLINK("http://x.invalid","点我")', "children": 2, "skipped": None,
        })  # fmt: skip
        early = _visit(conn, s5, t2, "submitted", EARLY, answers={"method": "电话"})
        _visit(conn, s1, t1, "draft", LATE, answers={"method": "上门"})
        conn.execute(insert(followups), [
            {"visit_id": early, "student_id": s5, "owner_staff_id": t2, "kind": "living_aid",
             "detail": "+送米面油", "due_date": date(2026, 2, 23), "status": "done",
             "created_at": EARLY, "closed_at": datetime(2026, 2, 22, 9, 5, tzinfo=UTC),
             "closed_by": t2, "note": "@已送达"},
            {"visit_id": late, "student_id": s1, "owner_staff_id": t1, "kind": "device",
             "detail": "缺少：平板或电脑", "due_date": date(2026, 3, 5), "status": "open",
             "created_at": LATE, "closed_at": None, "closed_by": None, "note": None},
        ])  # fmt: skip
    return db


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for the exported files (the SQLite database lives in tmp_path)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def export(db: Database, out: Path, fmt: str, since: date | None = None) -> ExportReport:
    with db.begin() as conn:
        return export_visits(
            conn, out, fmt, COLUMNS, KIND_LABELS, TZ, since=since,  # type: ignore[arg-type]
            now=datetime(2026, 3, 3, tzinfo=UTC),
        )  # fmt: skip


def read_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel on Chinese Windows needs the BOM
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


EXPECTED_HEADER = [*VISIT_HEADER, "家访方式", "缺少设备", "其他情况", "子女数", "未答"]
EARLY_ROW = [
    "DEMO0005", "孙小川", "示例区实验小学", "四年级2班", "T002", "李示例", "2026-02-20 10:00",
    "2026.1", "电话", "", "", "", "",
]  # fmt: skip
LATE_ROW = [
    "DEMO0001", "王小雨", "示例区实验小学", "三年级1班", "T001", "张示例", "2026-03-02 00:30",
    "2026.1", "微信视频", "平板或电脑、网络或流量", "'=HYPERLINK(\"http://x.invalid\",\"点我\")",
    "2", "",
]  # fmt: skip
DONE_FOLLOWUP = [
    "孙小川", "四年级2班", "living_aid", "'+送米面油", "T002", "2026-02-23", "已完成",
    "2026-02-22 17:05", "'@已送达", "",
]  # fmt: skip
OPEN_FOLLOWUP = [
    "王小雨", "三年级1班", "平板/电脑", "缺少：平板或电脑", "T001", "2026-03-05", "待跟进", "", "",
    "",
]  # fmt: skip


def test_csv_export_writes_submitted_visits_and_followups(visited: Database, out_dir: Path) -> None:
    out = out_dir / "visits.csv"

    report = export(visited, out, "csv")

    side = out_dir / "visits_followups.csv"
    assert report == ExportReport(visits=2, followups=2, files=(out, side))
    assert read_csv(out) == [EXPECTED_HEADER, EARLY_ROW, LATE_ROW]
    rows = read_csv(side)
    assert rows[0] == list(FOLLOWUP_HEADER)
    assert [r[2:] for r in rows[1:]] == [DONE_FOLLOWUP, OPEN_FOLLOWUP]
    assert [r[1] for r in rows[1:]] == ["DEMO0005", "DEMO0001"]
    assert all(r[0].isdigit() for r in rows[1:])
    assert sorted(p.name for p in out_dir.iterdir()) == ["visits.csv", "visits_followups.csv"]


def test_xlsx_export_has_two_sheets_and_no_formulas(visited: Database, out_dir: Path) -> None:
    out = out_dir / "export.xlsx"

    report = export(visited, out, "xlsx")

    assert report == ExportReport(visits=2, followups=2, files=(out,))
    book = openpyxl.load_workbook(out)
    assert book.sheetnames == ["家访记录", "跟进事项"]
    visit_rows = [list(r) for r in book["家访记录"].iter_rows(values_only=True)]
    assert visit_rows == [EXPECTED_HEADER, *([None if c == "" else c for c in row]
                                             for row in (EARLY_ROW, LATE_ROW))]  # fmt: skip
    formula_cell = book["家访记录"].cell(row=3, column=11)
    assert formula_cell.data_type == "s"
    followup_rows = [list(r) for r in book["跟进事项"].iter_rows(values_only=True)]
    assert followup_rows[0] == list(FOLLOWUP_HEADER)
    assert followup_rows[2][2:] == [None if c == "" else c for c in OPEN_FOLLOWUP]
    assert isinstance(followup_rows[1][0], int)
    book.close()


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_since_is_a_local_date(visited: Database, out_dir: Path, fmt: str) -> None:
    # LATE is 1 March in UTC but 2 March in Shanghai, so it belongs to "since 2 March".
    report = export(visited, out_dir / f"out.{fmt}", fmt, since=date(2026, 3, 2))
    assert (report.visits, report.followups) == (1, 1)

    report = export(visited, out_dir / f"later.{fmt}", fmt, since=date(2026, 3, 3))
    assert (report.visits, report.followups) == (0, 0)


def test_since_filters_rows_in_the_file(visited: Database, out_dir: Path) -> None:
    out = out_dir / "v.csv"
    export(visited, out, "csv", since=date(2026, 3, 2))

    assert read_csv(out) == [EXPECTED_HEADER, LATE_ROW]
    assert [r[2:] for r in read_csv(out_dir / "v_followups.csv")[1:]] == [OPEN_FOLLOWUP]


def test_export_is_audited_without_names(visited: Database, out_dir: Path) -> None:
    export(visited, out_dir / "v.xlsx", "xlsx")

    with visited.begin() as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.action == "export")).one()
    assert row.actor == "cli"
    assert json.loads(row.detail) == {
        "format": "xlsx",
        "visits": 2,
        "followups": 2,
        "since": None,
        "sensitive": False,
    }
    assert "王小雨" not in row.detail


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_failed_write_leaves_no_file_and_no_audit(
    visited: Database, out_dir: Path, fmt: str
) -> None:
    out = out_dir / f"v.{fmt}"
    out.mkdir()  # a folder where the file should go: refused before anything is written

    with pytest.raises(ExportError, match="is a folder"):
        export(visited, out, fmt)

    assert [p.name for p in out_dir.iterdir()] == [out.name]
    assert list(out.iterdir()) == []
    assert _export_audits(visited) == 0


def _export_audits(db: Database) -> int:
    with db.begin() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(audit_log).where(audit_log.c.action == "export")
            ).scalar_one()
        )


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_a_rename_that_fails_leaves_no_temporary_file(
    visited: Database, out_dir: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("storage.export.os.replace", refuse)

    with pytest.raises(ExportError, match=r"cannot write .*v\.\w+ \(Permission denied\)"):
        export(visited, out_dir / f"v.{fmt}", fmt)

    assert list(out_dir.iterdir()) == []
    assert _export_audits(visited) == 0


def test_unknown_format_is_refused(visited: Database, out_dir: Path) -> None:
    with pytest.raises(ValueError):
        export(visited, out_dir / "v.json", "json")
    assert list(out_dir.iterdir()) == []


def test_empty_database_exports_headers_only(db: Database, out_dir: Path) -> None:
    out = out_dir / "empty.csv"

    report = export(db, out, "csv")

    assert (report.visits, report.followups) == (0, 0)
    assert read_csv(out) == [EXPECTED_HEADER]
    assert read_csv(out_dir / "empty_followups.csv") == [list(FOLLOWUP_HEADER)]


def test_a_control_character_cannot_smuggle_a_formula_into_a_cell() -> None:
    from storage.export import _cell

    assert _cell('\x01=HYPERLINK("http://x.invalid","点我")') == (
        '\ufffd=HYPERLINK("http://x.invalid","点我")'
    )
    assert _cell('=\x01HYPERLINK("x")') == '\'=\ufffdHYPERLINK("x")'
    assert _cell("\ud800") == "\ufffd" and _cell(7) == 7


def _visit_with_answers(db: Database, clock: FakeClock, answers: dict[str, Any]) -> None:
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
        [s1] = _ids(conn, students, students.c.student_no, ["DEMO0001"])
        [t1] = _ids(conn, staff, staff.c.staff_no, ["T001"])
        _visit(conn, s1, t1, "submitted", LATE, answers=answers)


# Characters XML 1.0 cannot carry; "\t\n\r" it can. (A lone surrogate cannot reach the database:
# its JSON is UTF-8 text; `_cell` and `xml_safe` have their own tests for it.)
ILLEGAL_ANSWERS = {
    "other": "备注\uffff结束",
    "method": "a\x01b\ufffe\x1f",
    "device_missing": "x\ty\nz",
}


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_characters_xml_cannot_carry_become_replacement_characters(
    db: Database, clock: FakeClock, out_dir: Path, fmt: str
) -> None:
    _visit_with_answers(db, clock, ILLEGAL_ANSWERS)
    out = out_dir / f"v.{fmt}"

    export(db, out, fmt)

    if fmt == "xlsx":
        book = openpyxl.load_workbook(out)  # the point: the workbook opens at all
        row = [c.value for c in book["家访记录"][2]]
        book.close()
    else:
        row = read_csv(out)[1]
    answer_cells = row[len(VISIT_HEADER) :]
    assert answer_cells[:3] == ["a\ufffdb\ufffd\ufffd", "x\ty\nz", "备注\ufffd结束"]
