"""Screening lists (民政, 残联) matched against the roster: a report that writes nothing, then an
all-or-nothing apply with its source and date; ambiguous rows are never guessed. Over both
databases, and through the real `homevisit screen import` process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import func, select

from bot.core.errors import RosterError
from bot.deps import Deps
from storage.demo import DEMO_SCHOOL, demo_roster, load_demo
from storage.roster import Origin, Roster, StudentEntry, import_roster
from storage.roster_files import read_list
from storage.schema import audit_log, schools, student_categories, students
from storage.screening import screen_rows
from tests.conftest import FakeClock

ROOT = Path(__file__).resolve().parents[1]
ID_CARD = "110101201001011234"
LIST_CSV = (
    "学籍号,姓名,身份证号,学校,班级,资助类别,备注\n"
    f",陈小树,{ID_CARD},{DEMO_SCHOOL},三年级1班,特困,新增\n"  # by name: gains 特困
    f"DEMO0005,孙小川,{ID_CARD},{DEMO_SCHOOL},四年级2班,孤儿,\n"  # already has it
    f",王小雨,{ID_CARD},{DEMO_SCHOOL},三年级1班,低保,\n"  # two of that name in that class
    f",不存在,{ID_CARD},{DEMO_SCHOOL},一年级1班,低保,\n"  # nobody
    f"DEMO0010,别名也行,{ID_CARD},{DEMO_SCHOOL},六年级3班,残疾、低保,\n"  # by number
)


def with_twin(deps: Deps) -> None:
    """A second 王小雨 in 三年级1班, so that the name alone cannot tell them apart."""
    base = demo_roster()
    twin = StudentEntry(Origin("t", 99), "DEMO0013", "王小雨", DEMO_SCHOOL, "三年级1班", (), "T001")
    with deps.db.begin() as conn:
        import_roster(conn, Roster((*base.students, twin), base.staff), now=deps.clock.now())


def categories(deps: Deps, student_no: str) -> dict[str, str]:
    with deps.db.begin() as conn:
        rows = conn.execute(
            select(student_categories.c.category, student_categories.c.source)
            .join(students, students.c.id == student_categories.c.student_id)
            .where(students.c.student_no == student_no)
        ).all()
    return dict(rows)


def write_list(tmp_path: Path, text: str = LIST_CSV, name: str = "minzheng.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def audits(deps: Deps) -> list[str]:
    with deps.db.begin() as conn:
        return list(
            conn.execute(
                select(audit_log.c.detail).where(audit_log.c.action == "screen_import")
            ).scalars()
        )


def test_preview_reports_and_writes_nothing_then_apply_adds_with_source(
    deps: Deps, tmp_path: Path, clock: FakeClock
) -> None:
    with_twin(deps)
    rows = read_list([write_list(tmp_path)])
    assert all("身份证号" not in str(r.values) and ID_CARD not in str(r.values) for r in rows)
    with deps.db.begin() as conn:
        report = screen_rows(conn, rows, "民政", now=clock.now(), apply=False)
    assert [(c.student_no, c.added) for c in report.changes] == [
        ("DEMO0002", ("特困",)),
        ("DEMO0010", ("残疾", "低保")),
    ]
    assert report.changes[0].current == ("低保", "留守")
    assert report.unchanged == 1
    assert [(m.where, m.candidates) for m in report.ambiguous] == [("minzheng.csv 第4行", 2)]
    assert [(m.where, m.candidates) for m in report.unmatched] == [("minzheng.csv 第5行", 0)]
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster"}
    assert audits(deps) == []

    clock.advance(hours=1)
    with deps.db.begin() as conn:
        applied = screen_rows(conn, rows, "民政", now=clock.now(), apply=True, actor="B001")
    assert applied.applied and applied.categories_added == 3
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster", "特困": "民政"}
    assert categories(deps, "DEMO0010") == {"特困": "roster", "残疾": "民政", "低保": "民政"}
    assert categories(deps, "DEMO0001") == {"建档立卡": "roster"}  # ambiguous: untouched
    assert categories(deps, "DEMO0013") == {}
    with deps.db.begin() as conn:
        since = conn.execute(
            select(student_categories.c.since).where(student_categories.c.source == "民政")
        ).scalars()
        assert set(since) == {clock.now()}
    (detail,) = audits(deps)
    assert '"source": "民政"' in detail and '"categories": 3' in detail
    assert "陈小树" not in detail and ID_CARD not in detail

    # Applying the same list again changes nothing; a roster import keeps what the list added.
    with deps.db.begin() as conn:
        again = screen_rows(conn, rows, "民政", now=clock.now(), apply=True)
        assert again.changes == [] and again.unchanged == 3
        load_demo(conn, now=clock.now())
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster", "特困": "民政"}


def test_roster_names_a_category_a_list_added_first(deps: Deps, tmp_path: Path) -> None:
    """The roster later lists 特困 for a student the list already gave it: one row, kept."""
    rows = read_list([write_list(tmp_path)])
    with deps.db.begin() as conn:
        screen_rows(conn, rows, "民政", now=deps.clock.now(), apply=True)
        base = demo_roster()
        changed = tuple(
            StudentEntry(s.origin, s.student_no, s.name, s.school, s.class_name,
                         (*s.categories, "特困"), s.head_teacher_no, s.carer_no)
            if s.student_no == "DEMO0002" else s
            for s in base.students
        )  # fmt: skip
        import_roster(conn, Roster(changed, base.staff), now=deps.clock.now())
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster", "特困": "民政"}


def test_a_coordinator_may_screen_only_their_school(deps: Deps, tmp_path: Path) -> None:
    other = LIST_CSV + f",某某,{ID_CARD},别的学校,一年级1班,低保,\n"
    rows = read_list([write_list(tmp_path, other)])
    with deps.db.begin() as conn:
        school_id = conn.execute(
            select(schools.c.id).where(schools.c.name == DEMO_SCHOOL)
        ).scalar_one()
        with pytest.raises(RosterError) as caught:
            screen_rows(
                conn,
                rows,
                "民政",
                now=deps.clock.now(),
                apply=True,
                school=(school_id, DEMO_SCHOOL),
            )
    assert caught.value.problems == [
        f"minzheng.csv 第7行 学校(school): 只能导入本校（{DEMO_SCHOOL}）的数据 / "
        f"only rows of your own school ({DEMO_SCHOOL})"
    ]
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster"}
    assert audits(deps) == []


def test_bad_files_are_named_by_row_and_column(tmp_path: Path) -> None:
    missing = write_list(tmp_path, "姓名,学校,资助类别\n甲,乙,低保\n", "a.csv")
    with pytest.raises(RosterError) as caught:
        read_list([missing])
    assert caught.value.problems == ["a.csv 第1行 班级(class): 缺少此列 / missing column"]

    broken = tmp_path / "b.csv"
    broken.write_bytes("姓名,学校,班级,资助类别\n".encode() + b"\xff\xff,x,y,z\n")
    with pytest.raises(RosterError) as caught:
        read_list([broken])
    assert caught.value.problems == [
        "b.csv: 编码既不是 UTF-8 也不是 GB18030 / encoding is neither UTF-8 nor GB18030"
    ]

    empty = write_list(tmp_path, "姓名,学校,班级,资助类别\n甲,乙,一班,\n", "c.csv")
    with pytest.raises(RosterError) as caught:
        read_list([empty])
    assert caught.value.problems == [
        "c.csv 第2行 资助类别(categories): 不能为空 / must not be empty"
    ]

    long_line = write_list(
        tmp_path, "姓名,学校,班级,资助类别\n" + "甲" * 70_000 + ",x,y,z\n", "d.csv"
    )
    with pytest.raises(RosterError) as caught:
        read_list([long_line])
    assert caught.value.problems == [
        "d.csv: 第2行: 超过 64000 个字符 / line 2 is longer than 64000 characters"
    ]


def test_gb18030_csv_and_an_xlsx_with_a_notes_sheet(tmp_path: Path) -> None:
    gbk = tmp_path / "canlian.csv"
    gbk.write_bytes(
        "姓名,学校,班级,资助类别\n周小禾,示例区实验小学,三年级1班,残疾\n".encode("gb18030")
    )
    book = openpyxl.Workbook()
    book.active.title = "说明"
    book.active.append(["本表由残联提供"])
    sheet = book.create_sheet("名单")
    sheet.append(["序号", "姓名", "身份证号", "学校", "班级", "资助类别"])
    sheet.append([1, "卫小溪", ID_CARD, "示例区实验小学", "五年级1班", "残疾"])
    book.save(tmp_path / "canlian.xlsx")
    rows = read_list([gbk, tmp_path / "canlian.xlsx"])
    assert [(r.origin.source, r.origin.row, r.values["name"]) for r in rows] == [
        ("canlian.csv", 2, "周小禾"),
        ("canlian.xlsx[名单]", 2, "卫小溪"),
    ]
    assert ID_CARD not in repr(rows)


# ---------------------------------------------------------------------------- the CLI
def homevisit(db_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_reports_then_applies(db_url: str, tmp_path: Path) -> None:
    assert homevisit(db_url, tmp_path, "demo").returncode == 0
    path = write_list(tmp_path)
    report = homevisit(db_url, tmp_path, "screen", "import", str(path), "--source", "民政")
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()  # (one 王小雨 in 三年级1班 here: matched by name)
    assert lines[:3] == [
        f"+ DEMO0001 {DEMO_SCHOOL} 三年级1班: 低保",
        f"+ DEMO0002 {DEMO_SCHOOL} 三年级1班: 特困",
        f"+ DEMO0010 {DEMO_SCHOOL} 六年级3班: 残疾、低保",
    ]
    assert (
        f"- minzheng.csv 第5行 ({DEMO_SCHOOL} 一年级1班): 名单中找不到 / not in the roster" in lines
    )
    assert "加 --apply 写入" in lines[-1] and "预览，未写入" in lines[-1]
    assert "陈小树" not in report.stdout and ID_CARD not in report.stdout
    applied = homevisit(
        db_url, tmp_path, "screen", "import", str(path), "--source", "民政", "--apply"
    )
    assert applied.returncode == 0, applied.stderr
    assert "已写入" in applied.stdout and "4 个资助类别" in applied.stdout
    again = homevisit(db_url, tmp_path, "screen", "import", str(path), "--source", "民政")
    assert "0 名学生将新增" in again.stdout


def test_cli_errors_are_one_line_each_and_change_nothing(db_url: str, tmp_path: Path) -> None:
    assert homevisit(db_url, tmp_path, "demo").returncode == 0
    bad = write_list(tmp_path, "姓名,学校,资助类别\n甲,乙,低保\n", "bad.csv")
    result = homevisit(
        db_url, tmp_path, "screen", "import", str(bad), "--source", "民政", "--apply"
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "homevisit: bad.csv 第1行 班级(class): 缺少此列 / missing column\n"
    good = write_list(tmp_path)
    blank = homevisit(db_url, tmp_path, "screen", "import", str(good), "--source", " ", "--apply")
    assert blank.returncode == 1 and blank.stderr.count("\n") == 1 and "--source" in blank.stderr
    gone = homevisit(db_url, tmp_path, "screen", "import", "nope.xlsx", "--source", "残联")
    assert gone.returncode == 1 and gone.stderr.startswith("homevisit: nope.xlsx: ")
    assert "Traceback" not in result.stderr + blank.stderr + gone.stderr


def test_cli_counts_nothing_written_after_a_failed_apply(db_url: str, tmp_path: Path) -> None:
    assert homevisit(db_url, tmp_path, "demo").returncode == 0
    good = write_list(tmp_path)
    broken = tmp_path / "b.csv"
    broken.write_bytes(b"\xff\xff\n")
    result = homevisit(
        db_url, tmp_path, "screen", "import", str(good), str(broken), "--source", "民政", "--apply"
    )
    assert result.returncode == 1
    from storage.db import Database

    database = Database(db_url)
    try:
        with database.begin() as conn:
            added = conn.execute(
                select(func.count())
                .select_from(student_categories)
                .where(student_categories.c.source != "roster")
            ).scalar_one()
    finally:
        database.close()
    assert added == 0


def test_a_coordinators_row_may_not_name_another_schools_student(
    deps: Deps, tmp_path: Path
) -> None:
    """The row says our school, but its 学籍号 is a student of another school: refused."""
    from tests.console_kit import add_school

    add_school(deps.db)
    text = f"学籍号,姓名,学校,班级,资助类别\nOTHER001,外校生,{DEMO_SCHOOL},一年级1班,特困\n"
    rows = read_list([write_list(tmp_path, text)])
    with deps.db.begin() as conn:
        ours = conn.execute(select(schools.c.id).where(schools.c.name == DEMO_SCHOOL)).scalar_one()
        with pytest.raises(RosterError) as caught:
            screen_rows(
                conn, rows, "残联", now=deps.clock.now(), apply=True, school=(ours, DEMO_SCHOOL)
            )
    assert caught.value.problems[0].startswith(
        "minzheng.csv 第2行 学籍号(student_no): 只能导入本校"
    )
    assert categories(deps, "OTHER001") == {"低保": "roster"}
