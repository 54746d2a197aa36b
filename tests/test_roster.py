"""Roster import: reading CSV / XLSX files, checking them, upserting them (SQLite and PostgreSQL).

All names are fictional.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from sqlalchemy import Table, func, insert, select

from bot.core.errors import RosterError
from storage.db import Database
from storage.demo import DEMO_SCHOOL, load_demo
from storage.roster import ImportReport, import_files, read_roster
from storage.schema import (
    assignments,
    audit_log,
    identities,
    schools,
    staff,
    student_categories,
    students,
    visits,
)
from tests.conftest import FakeClock

STAFF_HEADER = ["工号", "姓名", "学校", "角色", "企业微信ID", "钉钉ID"]
STAFF_ROWS = [
    ["T001", "张示例", "第一示例小学", "教师", "zhang", ""],
    ["T002", "李示例", "第一示例小学", "教师", "", "dt_li"],
    ["C001", "王协调", "第一示例小学", "协调员", "", ""],
    ["B001", "局示例", "", "教育局", "", ""],
]
STUDENT_HEADER = ["学籍号", "姓名", "学校", "班级", "资助类别", "班主任工号", "包靠教师工号"]
STUDENT_ROWS = [
    ["S001", "学生甲", "第一示例小学", "三年级1班", "建档立卡、低保", "T001", ""],
    ["S002", "学生乙", "第一示例小学", "三年级1班", "", "T001", "T002"],
    ["S003", "学生丙", "第一示例小学", "四年级2班", "特困, 留守；孤儿", "T002", ""],
]
ROSTER_TABLES = (schools, staff, identities, students, student_categories, assignments)


def write_csv(
    path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8"
) -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def roster_files(
    tmp_path: Path,
    students_rows: list[list[str]] | None = None,
    staff_rows: list[list[str]] | None = None,
    encoding: str = "utf-8",
) -> list[Path]:
    return [
        write_csv(
            tmp_path / "students.csv", STUDENT_HEADER, students_rows or STUDENT_ROWS, encoding
        ),
        write_csv(tmp_path / "staff.csv", STAFF_HEADER, staff_rows or STAFF_ROWS, encoding),
    ]


def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the roster tables, plus the audit log's size: what an import may change."""
    with db.begin() as conn:
        rows = {t.name: sorted(tuple(r) for r in conn.execute(select(t))) for t in ROSTER_TABLES}
        rows["audit_log"] = [(conn.execute(select(func.count()).select_from(audit_log)).scalar(),)]
    return rows


def count(db: Database, table: Table) -> int:
    with db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def student(db: Database, student_no: str) -> dict[str, Any]:
    """A student's row with school name, sorted categories and staff numbers by assignment role."""
    with db.begin() as conn:
        row = conn.execute(
            select(students, schools.c.name.label("school"))
            .join(schools, schools.c.id == students.c.school_id)
            .where(students.c.student_no == student_no)
        ).one()
        cats = conn.execute(
            select(student_categories.c.category)
            .where(student_categories.c.student_id == row.id)
            .order_by(student_categories.c.category)
        ).scalars()
        links = conn.execute(
            select(assignments.c.role, staff.c.staff_no)
            .join(staff, staff.c.id == assignments.c.staff_id)
            .where(assignments.c.student_id == row.id)
        )
        return {
            **row._asdict(),
            "categories": sorted(cats),
            "links": dict(links.all()),
        }


def identities_of(db: Database) -> set[tuple[str, str, str]]:
    with db.begin() as conn:
        rows = conn.execute(
            select(identities.c.channel, identities.c.external_id, staff.c.staff_no).join(
                staff, staff.c.id == identities.c.staff_id
            )
        )
        return {tuple(r) for r in rows}


def run_import(db: Database, paths: list[Path], clock: FakeClock) -> ImportReport:
    return import_files(db, paths, now=clock.now())


# ---------------------------------------------------------------------------- good files
@pytest.mark.parametrize("reverse", [False, True], ids=["students-first", "staff-first"])
def test_csv_pair_in_either_order(
    db: Database, tmp_path: Path, clock: FakeClock, reverse: bool
) -> None:
    paths = roster_files(tmp_path)
    report = run_import(db, paths[::-1] if reverse else paths, clock)

    assert report == ImportReport(staff_added=4, students_added=3)
    s1 = student(db, "S001")
    assert (s1["name"], s1["school"], s1["class_name"], s1["active"]) == (
        "学生甲",
        "第一示例小学",
        "三年级1班",
        True,
    )
    assert s1["categories"] == ["低保", "建档立卡"]
    assert s1["links"] == {"head_teacher": "T001"}
    assert student(db, "S002")["links"] == {"head_teacher": "T001", "carer": "T002"}
    assert student(db, "S003")["categories"] == ["孤儿", "特困", "留守"]
    assert identities_of(db) == {("wecom", "zhang", "T001"), ("dingtalk", "dt_li", "T002")}
    with db.begin() as conn:
        bureau = conn.execute(select(staff).where(staff.c.staff_no == "B001")).one()
        audit = conn.execute(select(audit_log)).one()
    assert (bureau.role, bureau.school_id) == ("bureau", None)
    assert (audit.actor, audit.action) == ("cli", "roster_import")
    assert json.loads(audit.detail)["students_added"] == 3
    assert "学生甲" not in audit.detail


def test_xlsx_workbook_with_numbers_stored_as_floats(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "学生"
    sheet.append(STUDENT_HEADER)
    sheet.append([20230001.0, "学生甲", "第一示例小学", "三年级1班", "低保", 1001.0, None])
    sheet.append([None] * 7)  # an empty row in the middle is skipped
    sheet.append([20230002, "学生乙", "第一示例小学", "三年级1班", None, 1001, 1002])
    staff_sheet = book.create_sheet("Staff")
    staff_sheet.append(STAFF_HEADER)
    staff_sheet.append([1001.0, "张示例", "第一示例小学", "教师", "zhang", None])
    staff_sheet.append([1002, "李示例", "第一示例小学", "教师", None, None])
    book.create_sheet("说明").append(["这张表不是名单"])
    path = tmp_path / "roster.xlsx"
    book.save(path)

    report = run_import(db, [path], clock)

    assert report == ImportReport(staff_added=2, students_added=2)
    assert student(db, "20230001")["links"] == {"head_teacher": "1001"}
    assert student(db, "20230002")["links"] == {"head_teacher": "1001", "carer": "1002"}
    assert student(db, "20230002")["categories"] == []


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8-sig", "utf-8"])
def test_csv_encodings(db: Database, tmp_path: Path, clock: FakeClock, encoding: str) -> None:
    rows = [["S009", "学生镕", "第一示例小学", "三年级1班", "残疾", "T001", ""], *STUDENT_ROWS]
    paths = roster_files(tmp_path, students_rows=rows, encoding=encoding)
    if encoding == "utf-8-sig":
        assert paths[0].read_bytes().startswith(b"\xef\xbb\xbf")

    assert run_import(db, paths, clock).students_added == 4

    s9 = student(db, "S009")
    assert (s9["name"], s9["categories"]) == ("学生镕", ["残疾"])


def test_english_headers_any_case_and_spacing(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    paths = [
        write_csv(
            tmp_path / "a.csv",
            ["Staff_No", " Name ", "SCHOOL", "role", "WeCom_UserID"],
            [["T001", "张示例", "第一示例小学", "Teacher", "zhang"]],
        ),
        write_csv(
            tmp_path / "b.csv",
            ["student_no", "name", "school", "class", "categories", "head_teacher_no"],
            [[" S001 ", "学生甲", "第一示例小学", "三年级1班", "低保 留守", "T001"]],
        ),
    ]

    assert run_import(db, paths, clock) == ImportReport(staff_added=1, students_added=1)
    assert student(db, "S001")["categories"] == ["低保", "留守"]
    assert identities_of(db) == {("wecom", "zhang", "T001")}


def test_reimport_updates_rather_than_duplicates(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    before = snapshot(db)

    again = run_import(db, roster_files(tmp_path), clock)
    assert again == ImportReport()
    after = snapshot(db)
    assert {k: v for k, v in after.items() if k != "audit_log"} == {
        k: v for k, v in before.items() if k != "audit_log"
    }

    changed_students = [
        ["S001", "学生甲", "第一示例小学", "四年级2班", "低保", "T002", "T001"],
        *STUDENT_ROWS[1:],
    ]
    changed_staff = [
        ["T001", "张示例", "第一示例小学", "教师", "zhang2", "dt_zhang"],
        *STAFF_ROWS[1:],
    ]
    report = run_import(db, roster_files(tmp_path, changed_students, changed_staff), clock)

    assert report == ImportReport(staff_updated=1, students_updated=1)
    s1 = student(db, "S001")
    assert (s1["class_name"], s1["categories"]) == ("四年级2班", ["低保"])
    assert s1["links"] == {"head_teacher": "T002", "carer": "T001"}
    assert ("wecom", "zhang2", "T001") in identities_of(db)
    assert ("wecom", "zhang", "T001") not in identities_of(db)
    assert count(db, students) == 3
    assert count(db, staff) == 4


def test_missing_student_is_deactivated_and_keeps_visits(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    with db.begin() as conn:
        sid = conn.execute(select(students.c.id).where(students.c.student_no == "S003")).scalar()
        tid = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T002")).scalar()
        conn.execute(
            insert(visits).values(
                student_id=sid, staff_id=tid, form_id="home_visit", form_version="1",
                status="submitted", answers={}, started_at=clock.now(), updated_at=clock.now(),
                submitted_at=clock.now(),
            )
        )  # fmt: skip

    report = run_import(db, roster_files(tmp_path, STUDENT_ROWS[:2]), clock)

    assert report == ImportReport(students_deactivated=1)
    assert student(db, "S003")["active"] is False
    assert count(db, visits) == 1
    assert student(db, "S003")["links"] == {"head_teacher": "T002"}

    back = run_import(db, roster_files(tmp_path), clock)
    assert back == ImportReport(students_updated=1)
    assert student(db, "S003")["active"] is True


def test_students_of_other_schools_are_untouched(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    other = [["S100", "学生丁", "第二示例小学", "一年级1班", "低保", "T100", ""]]
    other_teacher = ["T100", "丁示例", "第二示例小学", "教师", "", ""]
    run_import(
        db, roster_files(tmp_path, [*STUDENT_ROWS, *other], [*STAFF_ROWS, other_teacher]), clock
    )

    # The next file lists only the first school, without S002.
    report = run_import(db, roster_files(tmp_path, [STUDENT_ROWS[0], STUDENT_ROWS[2]]), clock)

    assert report.students_deactivated == 1
    assert student(db, "S002")["active"] is False
    assert student(db, "S100")["active"] is True


def test_staff_only_import_keeps_students(db: Database, tmp_path: Path, clock: FakeClock) -> None:
    run_import(db, roster_files(tmp_path), clock)
    staff_file = write_csv(
        tmp_path / "only_staff.csv", STAFF_HEADER[:4], [["T003", "赵示例", "第一示例小学", "教师"]]
    )

    assert run_import(db, [staff_file], clock) == ImportReport(staff_added=1)
    assert count(db, students) == 3
    # Without identity columns the existing WeCom / DingTalk ids stay as they are.
    assert len(identities_of(db)) == 2


def test_students_file_may_name_staff_already_in_the_database(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    students_file = write_csv(
        tmp_path / "more.csv",
        STUDENT_HEADER[:6],
        [
            *(r[:6] for r in STUDENT_ROWS),
            ["S004", "学生戊", "第一示例小学", "三年级1班", "", "T002"],
        ],
    )

    assert run_import(db, [students_file], clock) == ImportReport(students_added=1)
    # No carer column: S002 keeps its carer.
    assert student(db, "S002")["links"] == {"head_teacher": "T001", "carer": "T002"}


def test_dry_run_reports_but_writes_nothing(db: Database, tmp_path: Path, clock: FakeClock) -> None:
    before = snapshot(db)

    report = import_files(db, roster_files(tmp_path), now=clock.now(), dry_run=True)

    assert report == ImportReport(staff_added=4, students_added=3)
    assert snapshot(db) == before


# ---------------------------------------------------------------------------- bad files
def _replace(rows: list[list[str]], index: int, column: int, value: str) -> list[list[str]]:
    copy = [list(r) for r in rows]
    copy[index][column] = value
    return copy


BAD_FILES = {
    "missing column": (
        lambda tmp: [
            write_csv(tmp / "students.csv", STUDENT_HEADER[:3] + STUDENT_HEADER[4:],
                      [r[:3] + r[4:] for r in STUDENT_ROWS]),
            write_csv(tmp / "staff.csv", STAFF_HEADER, STAFF_ROWS),
        ],
        ["students.csv 第1行 班级(class)", "缺少此列"],
    ),
    "duplicate student_no": (
        lambda tmp: roster_files(tmp, _replace(STUDENT_ROWS, 2, 0, "S001")),
        ["students.csv 第4行 学籍号(student_no)", "与第2行重复"],
    ),
    "duplicate staff_no": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 1, 0, "T001")),
        ["staff.csv 第3行 工号(staff_no)", "与第2行重复"],
    ),
    "duplicate wecom id": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 2, 4, "zhang")),
        ["staff.csv 第4行 企业微信ID(wecom_userid)", "与第2行重复"],
    ),
    "unknown teacher number": (
        lambda tmp: roster_files(tmp, _replace(STUDENT_ROWS, 1, 6, "T999")),
        ["students.csv 第3行 包靠教师工号(carer_no)", "T999"],
    ),
    "bad role": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 2, 3, "校长")),
        ["staff.csv 第4行 角色(role)", "未知角色"],
    ),
    "empty required value": (
        lambda tmp: roster_files(tmp, _replace(STUDENT_ROWS, 0, 1, " ")),
        ["students.csv 第2行 姓名(name)", "不能为空"],
    ),
    "teacher without school": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 0, 2, "")),
        ["staff.csv 第2行 学校(school)", "不能为空"],
    ),
    "header of neither kind": (
        lambda tmp: [write_csv(tmp / "notes.csv", ["姓名", "电话"], [["某人", "123"]])],
        ["notes.csv 第1行", "表头既不是学生名单也不是教师名单"],
    ),
    "unreadable xlsx": (
        lambda tmp: [_broken_xlsx(tmp / "broken.xlsx")],
        ["broken.xlsx", "无法读取"],
    ),
    "xlsx without the sheets": (
        lambda tmp: [_workbook(tmp / "book.xlsx", "Sheet1")],
        ["book.xlsx", "找不到工作表"],
    ),
    "unsupported file type": (
        lambda tmp: [tmp / "roster.xls"],
        ["roster.xls", "不支持的文件类型"],
    ),
    "coordinator as head teacher": (
        lambda tmp: roster_files(tmp, _replace(STUDENT_ROWS, 0, 5, "C001")),
        ["students.csv 第2行 班主任工号(head_teacher_no): 工号 C001 是协调员，不是教师",
         "staff number C001 is a coordinator, not a teacher"],
    ),
    "bureau as carer": (
        lambda tmp: roster_files(tmp, _replace(STUDENT_ROWS, 1, 6, "B001")),
        ["students.csv 第3行 包靠教师工号(carer_no): 工号 B001 是教育局人员，不是教师",
         "staff number B001 is bureau staff, not a teacher"],
    ),
    "teacher of another school": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 1, 2, "第二示例小学")),
        ["students.csv 第3行 包靠教师工号(carer_no): 工号 T002 是第二示例小学的教师",
         "students.csv 第4行 班主任工号(head_teacher_no)",
         "staff number T002 teaches at another school (第二示例小学)"],
    ),
    "wecom ids differing only in case": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 1, 4, "ZHANG")),
        ["staff.csv 第3行 企业微信ID(wecom_userid): 与第2行重复（企业微信账号不区分大小写）",
         "duplicate of row 2 (WeCom UserIDs ignore case)"],
    ),
    "a name that lost a character": (
        lambda tmp: roster_files(tmp, _replace(STUDENT_ROWS, 0, 1, "王\uffff雨")),
        ["students.csv 第2行 姓名(name): 含有无法识别的字符", "U+FFFD"],
    ),
    "a staff name with a non-character": (
        lambda tmp: roster_files(tmp, staff_rows=_replace(STAFF_ROWS, 0, 1, "张\ufffe")),
        ["staff.csv 第2行 姓名(name): 含有无法识别的字符"],
    ),
}  # fmt: skip


def _broken_xlsx(path: Path) -> Path:
    path.write_bytes(b"this is not a zip archive")
    return path


def _workbook(path: Path, title: str) -> Path:
    book = openpyxl.Workbook()
    book.active.title = title
    book.active.append(STUDENT_HEADER)
    book.save(path)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_names_file_row_and_column_and_writes_nothing(
    db: Database, tmp_path: Path, clock: FakeClock, case: str
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    run_import(db, roster_files(good), clock)
    before = snapshot(db)
    make, expected = BAD_FILES[case]
    files: list[Path] = make(tmp_path)  # type: ignore[no-untyped-call]

    with pytest.raises(RosterError) as err:
        run_import(db, files, clock)

    message = str(err.value)
    for part in expected:
        assert part in message
    assert snapshot(db) == before


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    rows = _replace(_replace(STUDENT_ROWS, 0, 3, ""), 2, 0, "S002")
    staff_rows = _replace(STAFF_ROWS, 1, 3, "校长")

    with pytest.raises(RosterError) as err:
        read_roster(roster_files(tmp_path, rows, staff_rows))

    assert err.value.problems == [
        "students.csv 第2行 班级(class): 不能为空 / must not be empty",
        "staff.csv 第3行 角色(role): 未知角色“校长”，应为 教师/协调员/教育局 / "
        "unknown role, use teacher/coordinator/bureau",
        "students.csv 第4行 学籍号(student_no): 与第3行重复 / duplicate of row 3",
    ]


def test_duplicate_across_two_files_names_the_other_file(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", STUDENT_HEADER, STUDENT_ROWS[:1])
    second = write_csv(tmp_path / "b.csv", STUDENT_HEADER, STUDENT_ROWS[:1])

    with pytest.raises(RosterError) as err:
        read_roster([first, second])

    assert err.value.problems == [
        "b.csv 第2行 学籍号(student_no): 与a.csv 第2行重复 / duplicate of a.csv row 2"
    ]


def test_platform_id_of_another_staff_member_is_refused(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    before = snapshot(db)
    newcomer = write_csv(
        tmp_path / "new_staff.csv",
        STAFF_HEADER,
        [["T005", "钱示例", "第一示例小学", "教师", "zhang", ""]],
    )

    with pytest.raises(RosterError) as err:
        run_import(db, [newcomer], clock)

    assert err.value.problems == [
        "new_staff.csv 第2行 企业微信ID(wecom_userid): 已被工号 T001 使用 / "
        "already used by staff number T001"
    ]
    assert snapshot(db) == before


def test_two_staff_members_may_swap_platform_ids(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    swapped = _replace(_replace(STAFF_ROWS, 0, 4, "li"), 1, 4, "zhang")

    report = run_import(db, roster_files(tmp_path, staff_rows=swapped), clock)

    assert report.staff_updated == 2
    assert {("wecom", "li", "T001"), ("wecom", "zhang", "T002")} <= identities_of(db)


# ---------------------------------------------------------------------------- demo
def test_demo_loads_twice_with_stable_counts(db: Database, clock: FakeClock) -> None:
    with db.begin() as conn:
        first = load_demo(conn, now=clock.now())
    counts = {t.name: count(db, t) for t in ROSTER_TABLES}
    with db.begin() as conn:
        second = load_demo(conn, now=clock.now())

    assert first == ImportReport(staff_added=5, students_added=12)
    assert second == ImportReport()
    assert {t.name: count(db, t) for t in ROSTER_TABLES} == counts
    assert ("wecom", "zhanglaoshi", "T001") in identities_of(db)
    assert ("dingtalk", "dt_zhang", "T001") in identities_of(db)


def test_demo_teacher_has_two_students_of_the_same_name(db: Database, clock: FakeClock) -> None:
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
        rows = conn.execute(
            select(students.c.name, students.c.class_name, assignments.c.role, staff.c.staff_no)
            .join(assignments, assignments.c.student_id == students.c.id)
            .join(staff, staff.c.id == assignments.c.staff_id)
        ).all()
        school = conn.execute(select(schools.c.name)).scalars().all()

    mine = [r for r in rows if r.staff_no == "T001"]
    same_name = {r.class_name for r in mine if r.name == "王小雨"}
    assert len(same_name) == 2
    carers = {(r.name, r.class_name): r.staff_no for r in rows if r.role == "carer"}
    heads = {(r.name, r.class_name): r.staff_no for r in rows if r.role == "head_teacher"}
    assert carers and all(heads[k] != v for k, v in carers.items())
    assert school == [DEMO_SCHOOL]


def test_demo_import_leaves_real_schools_alone(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    with db.begin() as conn:
        report = load_demo(conn, now=clock.now())

    assert report.students_deactivated == 0
    assert all(student(db, no)["active"] for no in ("S001", "S002", "S003"))


def test_read_roster_needs_a_file() -> None:
    with pytest.raises(RosterError):
        read_roster([])


def test_clock_times_are_recorded(db: Database, tmp_path: Path, clock: FakeClock) -> None:
    run_import(db, roster_files(tmp_path), clock)
    with db.begin() as conn:
        at = conn.execute(select(audit_log.c.at)).scalar_one()
    assert at == clock.now()
    assert isinstance(at, datetime)


def test_control_characters_in_roster_cells_are_dropped(tmp_path: Path) -> None:
    students_csv = tmp_path / "students.csv"
    students_csv.write_text(
        "学籍号,姓名,学校,班级,资助类别,班主任工号\nS1,\x01=王\x0b小雨,一小,一班,低保,T1\n",
        encoding="utf-8",
    )
    staff_csv = tmp_path / "staff.csv"
    staff_csv.write_text("工号,姓名,学校,角色\nT1,李老师,一小,教师\n", encoding="utf-8")
    roster = read_roster([students_csv, staff_csv])
    assert [s.name for s in roster.students] == ["=王小雨"]


def test_characters_xml_cannot_carry_are_cleaned_from_every_cell(tmp_path: Path) -> None:
    header = [*STUDENT_HEADER, "备注"]
    rows = [[*row, "备注\uffff\x01结束"] for row in STUDENT_ROWS]
    students_csv = write_csv(tmp_path / "students.csv", header, rows)
    roster = read_roster(
        [students_csv, write_csv(tmp_path / "staff.csv", STAFF_HEADER, STAFF_ROWS)]
    )
    assert [s.student_no for s in roster.students] == ["S001", "S002", "S003"]

    from storage.roster_files import _clean  # what every cell goes through, used columns or not

    assert _clean(" 备注\uffff\x01结束\ud800 ") == "备注\ufffd结束\ufffd"


def test_dingtalk_ids_differing_only_in_case_are_two_accounts(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    # DingTalk documents no case folding for userid (see storage.roster_files.ID_FOLDS).
    staff_rows = _replace(STAFF_ROWS, 0, 5, "DT_LI")

    run_import(db, roster_files(tmp_path, staff_rows=staff_rows), clock)

    assert {("dingtalk", "DT_LI", "T001"), ("dingtalk", "dt_li", "T002")} <= identities_of(db)


def test_a_wecom_id_held_by_another_in_other_case_is_refused(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)
    before = snapshot(db)
    newcomer = write_csv(
        tmp_path / "new_staff.csv",
        STAFF_HEADER,
        [["T005", "钱示例", "第一示例小学", "教师", "Zhang", ""]],
    )

    with pytest.raises(RosterError) as err:
        run_import(db, [newcomer], clock)

    assert err.value.problems == [
        "new_staff.csv 第2行 企业微信ID(wecom_userid): "
        "已被工号 T001 以 zhang 使用（企业微信账号不区分大小写）/ "
        "already used by staff number T001 as zhang (WeCom UserIDs ignore case)"
    ]
    assert snapshot(db) == before


def test_a_teacher_may_change_the_case_of_their_own_wecom_id(
    db: Database, tmp_path: Path, clock: FakeClock
) -> None:
    run_import(db, roster_files(tmp_path), clock)

    report = run_import(
        db, roster_files(tmp_path, staff_rows=_replace(STAFF_ROWS, 0, 4, "Zhang")), clock
    )

    assert report.staff_updated == 1
    assert ("wecom", "Zhang", "T001") in identities_of(db)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("C001", "工号 C001 是协调员，不是教师 / "
                 "staff number C001 is a coordinator, not a teacher"),
        ("T100", "工号 T100 是第二示例小学的教师，不是本学生学校的 / "
                 "staff number T100 teaches at another school (第二示例小学)"),
    ],
)  # fmt: skip
def test_a_students_file_alone_is_checked_against_the_staff_in_the_database(
    db: Database, tmp_path: Path, clock: FakeClock, head: str, expected: str
) -> None:
    elsewhere = ["T100", "丁示例", "第二示例小学", "教师", "", ""]
    run_import(db, roster_files(tmp_path, staff_rows=[*STAFF_ROWS, elsewhere]), clock)
    before = snapshot(db)
    pupils = write_csv(
        tmp_path / "pupils.csv", STUDENT_HEADER, _replace(STUDENT_ROWS[:1], 0, 5, head)
    )

    with pytest.raises(RosterError) as err:
        run_import(db, [pupils], clock)

    assert err.value.problems == [f"pupils.csv 第2行 班主任工号(head_teacher_no): {expected}"]
    assert snapshot(db) == before
