"""The console's pages over the real app and both databases: numbers, drill-down, scope, export.

The dashboard's figures are checked against the coordinator digest's (`handlers.reminders`) on a
random visit history, so the console and the digest can never disagree about who is covered.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import openpyxl
import pytest
from sqlalchemy import insert, select

from bot.console.cycle import cutoffs, window_start
from bot.core.console_ports import Scope, StudentQuery, VisitState
from bot.deps import Deps, cadence
from config.settings import Settings
from handlers.reminders import View, school_figures
from storage.console import SqlConsole
from storage.schema import audit_log, followups, schools, staff, students, visits
from storage.snapshot import load_snapshot
from tests.conftest import ChatDriver, FakeClock
from tests.console_kit import ConsoleClient, add_school, start_console
from tests.test_conversation import TABLET_VISIT

DEMO_SCHOOL = "示例区实验小学"


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def visit_zhou(bot: ChatDriver) -> None:
    """T001 visits 周小禾 by phone: a tablet is missing (one device follow-up)."""
    await bot.say("家访")
    await bot.say("周小禾")
    for answer in TABLET_VISIT:
        await bot.say(answer)
    assert "已提交" in await bot.say("提交")


def ids(deps: Deps) -> dict[str, int]:
    with deps.db.begin() as conn:
        return dict(conn.execute(select(students.c.student_no, students.c.id)).all())


def console_store(settings: Settings, deps: Deps) -> SqlConsole:
    columns = [(q.key, q.label) for q in deps.form.questions]
    return SqlConsole(deps.db, columns, deps.form.followup_kinds, settings.tz)


# ---------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("seed", [1, 2])
async def test_dashboard_figures_equal_the_digest(
    settings: Settings, deps: Deps, clock: FakeClock, seed: int
) -> None:
    """Random visits (reached or not, some categories on 7-day cycles), seen on a weekday and
    on a Sunday: coverage per school and per category, due and unreachable match the digest."""
    other = add_school(deps.db)
    rnd = random.Random(seed)
    now = clock.now() + timedelta(days=20)
    with deps.db.begin() as conn:
        pupils = conn.execute(select(students.c.id, students.c.school_id)).all()
        teacher = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        rows = []
        for sid, _ in pupils:
            for _ in range(rnd.choice((0, 1, 1, 2, 3))):
                at = now - timedelta(days=rnd.randint(0, 25), hours=rnd.randint(0, 23))
                reached = rnd.random() > 0.3
                rows.append(
                    {
                        "student_id": sid,
                        "staff_id": teacher,
                        "form_id": "home_visit",
                        "form_version": "2026.1",
                        "status": "submitted",
                        "method": "电话" if reached else "联系不上",
                        "reached": reached,
                        "answers": {},
                        "started_at": at,
                        "updated_at": at,
                        "submitted_at": at,
                    }
                )
        conn.execute(insert(visits), rows)
    store = console_store(settings, deps)
    cad = cadence(settings, deps.calendar)
    for moment in (now, now + timedelta(days=5, hours=3)):  # a Sunday
        today = moment.astimezone(settings.tz).date()
        with deps.db.begin() as conn:
            snap = load_snapshot(conn, moment - timedelta(days=1), moment)
        view = View(snap, today, settings.tz, cad)
        figures = school_figures(snap, view, moment, [], [])
        cut = cutoffs(cad, today, settings.tz)
        d = await store.dashboard(Scope(None), cut, today, window_start(today, settings.tz), [])
        assert {int(g.key): (g.visited, g.total) for g in d.groups} == {
            sid: (f.visited, f.total) for sid, f in figures.items()
        }
        assert d.due == sum(1 for s in snap.students if view.is_due(s))
        mine = await store.dashboard(
            Scope(other["school"]), cut, today, window_start(today, settings.tz), []
        )
        assert {c.key: (c.visited, c.total) for c in mine.categories} == dict(
            figures[other["school"]].by_category
        )
        page = await store.students(Scope(None), cut, StudentQuery(per_page=100))
        states = {r.id: r.state for r in page.rows}
        for s in snap.students:
            due = view.due[s.id]
            want = (
                VisitState.VISITED
                if view.covered(s)
                else VisitState.OVERDUE
                if due is not None and due < today
                else VisitState.DUE
                if view.is_due(s)
                else VisitState.PENDING
            )
            assert states[s.id] == want, (s.id, due, today)


async def test_the_dashboard_shows_coverage_and_needs_with_links(
    web: ConsoleClient, bot: ChatDriver
) -> None:
    await visit_zhou(bot)
    await web.sign_in("C001")
    page = await web.text("/console/")
    assert re.search(r'id="n-visited"><span class="big">1/12</span>', page)
    assert "本周期已访（8%）" in page
    assert (
        'href="/console/students?state=unvisited&amp;class=%E4%B8%89%E5%B9%B4%E7%BA%A71%E7%8F%AD"'
        in page
    )
    assert "<svg" in page and "三年级1班" in page and "1/3 33%" in page  # chart and its text
    assert 'href="/console/followups?state=open&amp;kind=device"' in page
    assert "张示例（T001）" in page and "<td>是</td>" not in page  # no channel configured

    unvisited = await web.text("/console/students?state=unvisited")
    assert re.search(r'id="result-count">共 <b>11</b>', unvisited) and "周小禾" not in unvisited
    by_class = await web.text("/console/students?state=unvisited&class=三年级1班")
    assert "共 <b>2</b>" in by_class and "陈小树" in by_class and "孙小川" not in by_class
    needs = await web.text("/console/followups?state=open&kind=device")
    assert "共 <b>1</b>" in needs and "周小禾" in needs and "平板或电脑" in needs


async def test_the_bureau_sees_every_school(web: ConsoleClient) -> None:
    add_school(web.deps.db)
    await web.sign_in("B001")
    page = await web.text("/console/")
    assert "全区" in page and DEMO_SCHOOL in page and "第二实验小学" in page
    assert re.search(r'id="n-visited"><span class="big">0/13</span>', page)
    listing = await web.text("/console/students")
    assert "共 <b>13</b>" in listing and "外校生" in listing and "王小雨" in listing


async def test_a_students_page_shows_answers_in_the_forms_words(
    web: ConsoleClient, bot: ChatDriver
) -> None:
    await visit_zhou(bot)
    await web.sign_in("C001")
    zhou = ids(web.deps)["DEMO0003"]
    page = await web.text(f"/console/students/{zhou}")
    assert "周小禾" in page and "DEMO0003" in page and "残疾" in page
    assert "班主任：张示例（T001）" in page
    assert (
        "<dt>缺少设备</dt><dd>平板或电脑</dd>" in page and "<dt>家访方式</dt><dd>电话</dd>" in page
    )
    assert "平板/电脑" in page and "待跟进" in page  # the follow-up
    with web.deps.db.begin() as conn:
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "student_view")).one()
    assert entry.actor == "C001" and json.loads(entry.detail) == {"student_no": "DEMO0003"}
    assert "周小禾" not in entry.detail


async def test_lists_sort_and_page(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    page = await web.text("/console/students?sort=student_no&desc=1")
    numbers = re.findall(r"<td>(DEMO\d{4})</td>", page)
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 12
    page = await web.text("/console/students?sort=student_no")
    assert re.findall(r"<td>(DEMO\d{4})</td>", page)[0] == "DEMO0001"
    assert 'href="/console/students?sort=student_no&amp;desc=1"' in page  # click again: reverse


async def test_a_long_list_is_paginated(web: ConsoleClient, clock: FakeClock) -> None:
    from storage.roster import Origin, Roster, StudentEntry, import_roster

    roster = Roster(
        students=tuple(
            StudentEntry(
                Origin("t", n), f"BIG{n:04d}", f"学生{n}", DEMO_SCHOOL, "七年级1班", (), "T003"
            )
            for n in range(60)
        )
    )
    with web.deps.db.begin() as conn:
        import_roster(conn, roster, now=clock.now())  # (replaces the demo school's students)
    await web.sign_in("C001")
    first = await web.text("/console/students?sort=student_no")
    assert "共 <b>60</b>" in first and "第 1/2 页" in first
    assert len(re.findall(r"<td>BIG\d{4}</td>", first)) == 50
    second = await web.text("/console/students?sort=student_no&page=2")
    assert re.findall(r"<td>(BIG\d{4})</td>", second) == [f"BIG{n:04d}" for n in range(50, 60)]


async def test_followup_filters(web: ConsoleClient, bot: ChatDriver, clock: FakeClock) -> None:
    await visit_zhou(bot)
    await web.sign_in("C001")
    assert "共 <b>1</b>" in await web.text("/console/followups?state=open&owner=T001")
    assert "共 <b>0</b>" in await web.text("/console/followups?state=open&owner=T002")
    assert "共 <b>0</b>" in await web.text("/console/followups?state=done")
    assert "共 <b>0</b>" in await web.text("/console/followups?state=overdue")
    clock.advance(days=10)
    await web.sign_in("C001")  # (the session timed out meanwhile)
    assert "共 <b>1</b>" in await web.text("/console/followups?state=overdue")
    await bot.say("待跟进")
    await bot.say("完成 1 平板已送到")
    done = await web.text("/console/followups?state=done")
    assert "共 <b>1</b>" in done and "平板已送到" in done
    assert re.search(r"<td>\d+月\d+日 完成 张示例（平板已送到）</td>", done)  # its history (#14)


# ---------------------------------------------------------------------------- scope
async def test_another_schools_student_is_not_found(web: ConsoleClient) -> None:
    other = add_school(web.deps.db)
    await web.sign_in("C001")
    missing = await web.text("/console/students/999999", status=404)
    foreign = await web.text(f"/console/students/{other['student']}", status=404)
    assert "外校生" not in foreign and foreign == missing  # indistinguishable
    assert "共 <b>0</b>" in await web.text(f"/console/students?school={other['school']}")
    assert "外校生" not in await web.text("/console/students?teacher=T101")
    assert "外校生" not in await web.text("/console/followups?owner=T101")
    with web.deps.db.begin() as conn:
        views = conn.execute(select(audit_log).where(audit_log.c.action == "student_view")).all()
    assert views == []


async def test_a_coordinator_of_the_other_school_sees_only_theirs(web: ConsoleClient) -> None:
    add_school(web.deps.db)
    await web.sign_in("C101")
    page = await web.text("/console/")
    assert "第二实验小学" in page and DEMO_SCHOOL not in page
    assert re.search(r'id="n-visited"><span class="big">0/1</span>', page)
    listing = await web.text("/console/students")
    assert "外校生" in listing and "王小雨" not in listing
    zhou = ids(web.deps)["DEMO0003"]
    await web.text(f"/console/students/{zhou}", status=404)


# ---------------------------------------------------------------------------- export, audit
async def test_export_in_scope_with_a_sensible_name(
    web: ConsoleClient, bot: ChatDriver, deps: Deps
) -> None:
    await visit_zhou(bot)
    other = add_school(deps.db)
    with deps.db.begin() as conn:  # a visit of the other school's student
        t101 = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T101")).scalar_one()
        now = deps.clock.now()
        conn.execute(
            insert(visits).values(
                student_id=other["student"],
                staff_id=t101,
                form_id="home_visit",
                form_version="2026.1",
                status="submitted",
                method="电话",
                reached=True,
                answers={"method": "电话"},
                started_at=now,
                updated_at=now,
                submitted_at=now,
            )
        )
    await web.sign_in("C001")
    async with await web.get("/console/export?format=xlsx") as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        disposition = r.headers["Content-Disposition"]
        body = await r.read()
    assert disposition.startswith('attachment; filename="homevisit-export-2026-03-02.xlsx"')
    assert "filename*=UTF-8''" in disposition and "%E7%A4%BA%E4%BE%8B" in disposition  # 示例…
    book = openpyxl.load_workbook(io.BytesIO(body))
    rows = list(book["家访记录"].iter_rows(values_only=True))
    assert len(rows) == 2 and rows[1][0] == "DEMO0003" and "缺少设备" in rows[0]
    assert len(list(book["跟进事项"].iter_rows(values_only=True))) == 2

    async with await web.get("/console/export?format=csv&table=followups&since=2026-03-01") as r:
        text = (await r.read()).decode("utf-8-sig")
        assert r.status == 200 and "homevisit-followups" in r.headers["Content-Disposition"]
    assert [row[1] for row in csv.reader(io.StringIO(text))][1:] == ["DEMO0003"]

    await web.text("/console/export?format=xlsx&since=yesterday", status=400)
    await web.text("/console/export?format=pdf", status=400)

    web.forget_cookies()
    await web.sign_in("B001")
    async with await web.get("/console/export?format=csv") as r:
        text = (await r.read()).decode("utf-8-sig")
    assert "DEMO0003" in text and "OTHER001" in text
    with deps.db.begin() as conn:
        exports = conn.execute(
            select(audit_log.c.actor, audit_log.c.school_id).where(audit_log.c.action == "export")
        ).all()
        demo = conn.execute(select(schools.c.id).where(schools.c.name == DEMO_SCHOOL)).scalar()
    assert exports == [("C001", demo), ("C001", demo), ("B001", None)]


async def test_the_audit_page_shows_the_schools_entries(web: ConsoleClient) -> None:
    add_school(web.deps.db)
    await web.sign_in("C101")
    await web.text("/console/export?format=csv")
    web.forget_cookies()
    await web.sign_in("C001")
    page = await web.text("/console/audit")
    assert "C001" in page and "登录后台" in page and "C101" not in page
    web.forget_cookies()
    await web.sign_in("B001")
    page = await web.text("/console/audit")
    assert "C001" in page and "C101" in page and "导出数据" in page


async def test_followups_of_deactivated_students_leave_the_lists(
    web: ConsoleClient, bot: ChatDriver
) -> None:
    await visit_zhou(bot)
    with web.deps.db.begin() as conn:
        assert conn.execute(select(followups)).all()
        conn.execute(
            students.update().where(students.c.student_no == "DEMO0003").values(active=False)
        )
    await web.sign_in("C001")
    assert "共 <b>0</b>" in await web.text("/console/followups")
    assert "共 <b>11</b>" in await web.text("/console/students")
