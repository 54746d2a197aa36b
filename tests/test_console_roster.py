"""Roster upload in the console: the CLI's importer, a preview that writes nothing, then apply;
a coordinator may only touch their own school. Over the real app and both databases."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openpyxl
import pytest
from sqlalchemy import func, select

from bot.deps import Deps
from config.settings import Settings
from storage.schema import audit_log, schools, staff, students
from tests.console_kit import ConsoleClient, add_school, start_console

SCHOOL = "示例区实验小学"
STAFF_CSV = (
    "工号,姓名,学校,角色\nC001,甲协调,{s},协调员\nT001,张示例,{s},教师\nT009,新老师,{s},教师\n"
)
STUDENTS_CSV = (
    "学籍号,姓名,学校,班级,资助类别,班主任工号\n"
    "DEMO0001,王小雨,{s},三年级1班,建档立卡,T001\n"
    "DEMO0002,陈小树,{s},三年级2班,低保、留守,T001\n"
    "NEW0001,新同学,{s},一年级1班,孤儿,T009\n"
)


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


def _form(csrf: str | None, files: dict[str, str | bytes], **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    for key, value in fields.items():
        form.add_field(key, value)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        form.add_field("files", data, filename=name, content_type="application/octet-stream")
    return form


async def upload(web: ConsoleClient, files: dict[str, str | bytes], **kw: Any) -> tuple[int, str]:
    csrf = kw.pop("csrf", None) or await web.csrf()
    async with await web.post("/console/roster", data=_form(csrf, files, **kw)) as r:
        return r.status, await r.text()


def counts(deps: Deps) -> tuple[int, int, int]:
    with deps.db.begin() as conn:
        active = conn.execute(
            select(func.count()).select_from(students).where(students.c.active.is_(True))
        ).scalar_one()
        people = conn.execute(select(func.count()).select_from(staff)).scalar_one()
        audits = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.action == "roster_import")
        ).scalar_one()
    return active, people, audits


def good_files(school: str = SCHOOL) -> dict[str, str | bytes]:
    return {"staff.csv": STAFF_CSV.format(s=school), "students.csv": STUDENTS_CSV.format(s=school)}


async def test_preview_writes_nothing_then_apply_imports(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    before = counts(web.deps)
    status, page = await upload(web, good_files())
    assert status == 200 and "预览" in page
    assert re.search(r"<th>学生新增</th><td>1</td>", page)
    assert re.search(r"<th>学生停用</th><td>10</td>", page)
    assert re.search(r"<th>教师新增</th><td>1</td>", page)
    assert counts(web.deps) == before  # nothing written
    upload_id = re.search(r'name="upload_id" value="([^"]+)"', page)
    assert upload_id

    csrf = await web.csrf()
    form = {"csrf_token": csrf, "upload_id": upload_id.group(1), "action": "apply"}
    async with await web.post("/console/roster", data=form) as r:
        assert r.status == 200 and "名单已导入" in await r.text()
    assert counts(web.deps) == (3, before[1] + 1, before[2] + 1)
    with web.deps.db.begin() as conn:
        entry = conn.execute(
            select(audit_log.c.actor, audit_log.c.school_id)
            .where(audit_log.c.action == "roster_import")
            .order_by(audit_log.c.id.desc())
        ).first()
        demo = conn.execute(select(schools.c.id).where(schools.c.name == SCHOOL)).scalar()
    assert entry == ("C001", demo)
    async with await web.post("/console/roster", data=form) as r:  # applied once only
        assert r.status == 400 and "已过期" in await r.text()


async def test_errors_come_as_a_table_of_file_row_and_column(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    before = counts(web.deps)
    bad = STUDENTS_CSV.format(s=SCHOOL).replace("DEMO0002,陈小树", "DEMO0001,陈小树")
    bad += "NEW0002,,示例区实验小学,一年级1班,,T404\n"
    status, page = await upload(web, {"staff.csv": STAFF_CSV.format(s=SCHOOL), "s.csv": bad})
    assert status == 400 and counts(web.deps) == before
    assert 'class="error-summary"' in page and "什么都没有导入" in page
    rows = re.findall(
        r'<tr id="problem-\d+"><td>([^<]*)</td><td>(\d*)</td><td>([^<]*)</td><td>([^<]*)</td>', page
    )
    assert ("s.csv", "3", "学籍号(student_no)") in [r[:3] for r in rows]  # the duplicate
    assert ("s.csv", "5", "姓名(name)") in [r[:3] for r in rows]
    assert 'href="#problem-1"' in page and "王小雨" not in page.split("<tbody>")[-1]


async def test_an_unreadable_file_is_an_error_naming_it(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    status, page = await upload(web, {"roster.xlsx": b"not a zip"})
    assert status == 400 and "roster.xlsx" in page and "无法读取" in page


async def test_an_xlsx_with_both_sheets_imports(web: ConsoleClient) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "学生"
    for line in STUDENTS_CSV.format(s=SCHOOL).splitlines():
        sheet.append(line.split(","))
    people = book.create_sheet("教师")
    for line in STAFF_CSV.format(s=SCHOOL).splitlines():
        people.append(line.split(","))
    buffer = io.BytesIO()
    book.save(buffer)
    await web.sign_in("C001")
    status, page = await upload(web, {"名单.xlsx": buffer.getvalue()})
    assert status == 200 and re.search(r"<th>学生新增</th><td>1</td>", page)


async def test_a_coordinator_cannot_import_another_schools_rows(web: ConsoleClient) -> None:
    other = add_school(web.deps.db)
    await web.sign_in("C001")
    before = counts(web.deps)
    mixed = STUDENTS_CSV.format(s=SCHOOL) + "X0001,外人,第二实验小学,一年级1班,,T101\n"
    status, page = await upload(web, {"staff.csv": STAFF_CSV.format(s=SCHOOL), "s.csv": mixed})
    assert status == 400 and "只能导入本校" in page and counts(web.deps) == before
    assert re.search(r"<td>s.csv</td><td>5</td><td>学校\(school\)</td>", page)

    # ... nor move the other school's student or teacher into theirs
    moved = STUDENTS_CSV.format(s=SCHOOL) + "OTHER001,外校生,示例区实验小学,一年级1班,,T101\n"
    status, page = await upload(web, {"staff.csv": STAFF_CSV.format(s=SCHOOL), "s.csv": moved})
    assert status == 400 and "其他学校" in page and "不是本校教师" in page
    staff_moved = STAFF_CSV.format(s=SCHOOL) + "C101,乙协调,示例区实验小学,协调员\n"
    status, page = await upload(web, {"staff.csv": staff_moved})
    assert status == 400 and "工号(staff_no)" in page
    with web.deps.db.begin() as conn:
        school = conn.execute(
            select(students.c.school_id).where(students.c.student_no == "OTHER001")
        ).scalar_one()
    assert school == other["school"]
    bureau = STAFF_CSV.format(s=SCHOOL) + "B009,新局员,,教育局\n"
    status, page = await upload(web, {"staff.csv": bureau})
    assert status == 400 and "教育局人员" in page


async def test_the_bureau_may_import_any_school(web: ConsoleClient) -> None:
    add_school(web.deps.db)
    await web.sign_in("B001")
    status, page = await upload(web, good_files("第二实验小学"))
    assert status == 200 and re.search(r"<th>学生新增</th><td>1</td>", page)


async def test_roster_upload_needs_the_csrf_token(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    before = counts(web.deps)
    async with await web.post("/console/roster", data=_form(None, good_files())) as r:
        assert r.status == 403
    async with await web.post("/console/roster", data=_form("nope", good_files())) as r:
        assert r.status == 403
    assert counts(web.deps) == before


async def test_another_sessions_preview_cannot_be_applied(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    _, page = await upload(web, good_files())
    m = re.search(r'name="upload_id" value="([^"]+)"', page)
    assert m
    before = counts(web.deps)
    web.forget_cookies()
    await web.sign_in("C001")  # a new session of the same person
    form = {"csrf_token": await web.csrf(), "upload_id": m.group(1), "action": "apply"}
    async with await web.post("/console/roster", data=form) as r:
        assert r.status == 400
    assert counts(web.deps) == before


async def test_an_upload_without_files_says_so(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    status, page = await upload(web, {})
    assert status == 400 and "没有选择文件" in page


async def test_a_roster_larger_than_the_api_body_limit_uploads(web: ConsoleClient) -> None:
    """A district's roster is far over the 64 KiB the chat callbacks accept."""
    lines = [STUDENTS_CSV.format(s=SCHOOL).splitlines()[0]]
    lines += [f"BIG{n:05d},学生{n},{SCHOOL},七年级1班,低保,T001" for n in range(3000)]
    big = "\n".join(lines) + "\n"
    assert len(big.encode()) > 150_000
    await web.sign_in("C001")
    status, page = await upload(web, {"students.csv": big})
    assert status == 200 and re.search(r"<th>学生新增</th><td>3000</td>", page)


async def test_an_upload_over_the_limit_is_refused(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    form = _form(await web.csrf(), {})
    form.add_field("files", io.BytesIO(b"x" * (10 * 1024 * 1024 + 1)), filename="huge.csv")
    async with await web.post("/console/roster", data=form) as r:
        assert r.status == 413 and "文件太大" in await r.text()
