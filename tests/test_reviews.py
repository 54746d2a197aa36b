"""Aid reviews (资助认定) in chat over both databases and WeCom identities: a family found in
new hardship on a visit, and a student a teacher reports, reach the school's coordinator
(`待认定`), who approves (`认定 N 类别`) or declines (`不认定 N 原因`); the teacher is told either
way; an approved reported student is on the teacher's list, in the spring aid list, and merged
into the real one when the roster brings them. Bad input changes nothing."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from bot.app import build_dispatcher
from bot.core.console_ports import Principal
from bot.core.reviews import FOUND_ON_VISIT, ReviewError
from bot.core.types import RosterStaff, Staff, StaffRole
from bot.deps import Deps
from config.settings import Secret, Settings, WeComSettings
from storage.db import Database
from storage.erasure import erase_student, student_record
from storage.maintenance import apply_retention
from storage.reviews import SqlReviews, merge_provisional, open_review
from storage.roster import Origin, Roster, StaffEntry, StudentEntry, import_roster
from storage.schema import (
    aid_reviews,
    audit_log,
    identities,
    outbox,
    schools,
    staff,
    student_categories,
    students,
    visits,
)
from tests.conftest import ChatDriver
from tests.console_kit import ConsoleClient, add_school, start_console

WECOM = WeComSettings("corp", 1, Secret("s"), Secret("t"), Secret("k" * 43), "http://127.0.0.1:9")
TEACHER, COORD = "zhanglaoshi", "coord"  # T001's WeCom id, and the one given to C001 here
# method=电话, study=好, device_ok=是, life_hard=是, life_needs=父母无法返岗收入减少,
# life_note, emotion=稳定, relation=融洽, guardian=父母, risks=没有, online=能, other=无
HARDSHIP = ["3", "1", "1", "1", "1", "爸爸妈妈都没能返岗，家里断了收入", "1", "1", "1", "1"]
HARDSHIP += ["1", "无"]


@pytest.fixture
def chat(settings: Settings, deps: Deps) -> ChatDriver:
    with deps.db.begin() as conn:
        coord = conn.execute(select(staff.c.id).where(staff.c.staff_no == "C001")).scalar_one()
        conn.execute(insert(identities).values(staff_id=coord, channel="wecom", external_id=COORD))
    return ChatDriver(build_dispatcher(replace(settings, wecom=WECOM), deps), "wecom")


def rows(deps: Deps, table: Any) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(table)).all())


def categories(deps: Deps, student_no: str) -> dict[str, tuple[str, Any]]:
    with deps.db.begin() as conn:
        found = conn.execute(
            select(
                student_categories.c.category,
                student_categories.c.source,
                student_categories.c.since,
            )
            .join(students, students.c.id == student_categories.c.student_id)
            .where(students.c.student_no == student_no)
        )
        return {c: (s, since) for c, s, since in found}


def told(deps: Deps, recipient: str = TEACHER) -> list[str]:
    return [r.body for r in rows(deps, outbox) if r.kind == "review" and r.recipient == recipient]


async def test_a_hardship_found_on_a_visit_is_approved(chat: ChatDriver, deps: Deps) -> None:
    await chat.say("家访", TEACHER)
    await chat.say("周小禾", TEACHER)
    for answer in HARDSHIP:
        reply = await chat.say(answer, TEACHER)
    reply = await chat.say("提交", TEACHER)
    assert "已提交" in reply and "已转学校资助专员做资助认定" in reply
    [review] = rows(deps, aid_reviews)
    assert review.status == "open" and review.note == "爸爸妈妈都没能返岗，家里断了收入"
    [notice] = told(deps, COORD)  # the school's coordinator hears of it at once
    assert notice.startswith("【资助认定】张示例登记了周小禾（三年级1班）（家访发现新困难）")

    # the teacher is told 待认定 is not theirs; the coordinator sees it numbered
    assert "是学校资助协调员和教育局用的指令" in await chat.say("待认定", TEACHER)
    listing = await chat.say("待认定", COORD)
    assert "本校待资助认定1名" in listing
    assert "1. 周小禾（三年级1班） · 家访发现新困难 · 登记：张示例" in listing
    assert "爸爸妈妈都没能返岗" in listing

    # bad input first: nothing changes
    assert "没有“富裕”这个资助类别" in await chat.say("认定 1 富裕", COORD)
    assert "例如：认定 1 低保" in await chat.say("认定 1", COORD)
    assert "当前列表里没有第5项" in await chat.say("认定 5 低保", COORD)
    assert "例如：不认定 1" in await chat.say("不认定 1", COORD)
    assert rows(deps, aid_reviews)[0].status == "open"
    assert set(categories(deps, "DEMO0003")) == {"残疾"}

    reply = await chat.say("认定 1 临时困难", COORD)
    assert "已认定：周小禾（三年级1班） · 临时困难（来源：家访发现）" in reply
    assert "已通知张示例" in reply
    got = categories(deps, "DEMO0003")
    assert got["临时困难"][0] == FOUND_ON_VISIT and got["临时困难"][1] is not None
    [message] = told(deps)
    assert "周小禾（三年级1班）已认定为“临时困难”（甲协调认定）" in message
    # decided once: a second decision is refused with the list, fresh
    again = await chat.say("不认定 1 重复", COORD)
    assert "第1项已经认定过了" in again and "本校目前没有待认定的学生" in again
    assert len(told(deps)) == 1
    with deps.db.begin() as conn:
        actions = [a for (a,) in conn.execute(select(audit_log.c.action))]
    assert actions.count("aid_review") == 1

    # in the teacher's list (the cadence) and, two steps after the visit, in the spring aid list
    assert "周小禾" in await chat.say("家访", TEACHER)
    with deps.db.begin() as conn:
        c001 = conn.execute(select(staff).where(staff.c.staff_no == "C001")).one()
    me = Principal(c001.id, "C001", c001.name, StaffRole.COORDINATOR, c001.school_id, "", "", "")
    listed = (await SqlReviews(deps.db, UTC).aid_list(me, deps.clock.now())).decode("utf-8-sig")
    assert re.search(r"DEMO0003,周小禾,临时困难,家访发现,\d{4}-\d\d-\d\d", listed)


async def test_a_reported_student_is_added_then_merged_into_the_roster(
    chat: ChatDriver, deps: Deps
) -> None:
    assert "请写成：新增学生 姓名 班级 说明" in await chat.say("新增学生", TEACHER)
    assert "请写成" in await chat.say("新增学生 李小花 三年级2班", TEACHER)
    assert "姓名最多20字" in await chat.say("新增学生 " + "李" * 21 + " 三年级2班 说明", TEACHER)
    assert rows(deps, aid_reviews) == []
    reply = await chat.say("新增学生 李小花 三年级2班 父母都没能返岗，家里没有收入", TEACHER)
    assert "已登记：李小花（三年级2班）" in reply and "认定结果会通知你" in reply
    twice = await chat.say("新增学生 李小花 三年级2班 又说一遍", TEACHER)
    assert "已经在等待资助认定了" in twice and len(rows(deps, aid_reviews)) == 1
    [notice] = told(deps, COORD)
    assert "李小花（三年级2班）（老师上报的新增学生）：父母都没能返岗" in notice
    assert "李小花" not in await chat.say("家访", TEACHER)  # not on the list before approval

    assert "老师上报的新增学生" in await chat.say("待认定", COORD)
    reply = await chat.say("认定 1 低保", COORD)
    assert "已加入名单（临时学籍号 临时" in reply and "班主任 张示例" in reply
    [review] = rows(deps, aid_reviews)
    with deps.db.begin() as conn:
        added = conn.execute(select(students).where(students.c.id == review.student_id)).one()
    provisional = added.student_no
    assert provisional.startswith("临时") and added.name == "李小花" and added.active
    assert categories(deps, provisional)["低保"][0] == FOUND_ON_VISIT
    assert "这名学生已加入你的名单" in told(deps)[0]
    assert "李小花" in await chat.say("家访", TEACHER)  # now in the teacher's list

    # the teacher visits the new student; then the real roster brings her with her 学籍号
    await chat.say("李小花", TEACHER)
    for answer in ["3", "1", "1", "2", "1", "1", "1", "1", "1", "无"]:
        await chat.say(answer, TEACHER)
    assert "已提交" in await chat.say("提交", TEACHER)
    with deps.db.begin() as conn:
        school = conn.execute(select(schools.c.name).where(schools.c.id == added.school_id))
        school_name = school.scalar_one()
        report = import_roster(
            conn,
            Roster(
                students=(
                    StudentEntry(
                        Origin("t", 2), "G2026001", "李小花", school_name, "三年级2班", (), "T001"
                    ),
                ),
                staff=(
                    StaffEntry(Origin("t", 2), "T001", "张示例", school_name, StaffRole.TEACHER),
                ),
            ),
            now=datetime(2026, 3, 5, tzinfo=UTC),
        )
        merged = conn.execute(select(students).where(students.c.id == added.id)).one()
        visit_count = len(conn.execute(select(visits).where(visits.c.student_id == added.id)).all())
    assert merged.student_no == "G2026001" and merged.active and visit_count == 1
    assert report.students_added == 0  # one student, not two
    assert categories(deps, "G2026001")["低保"][0] == FOUND_ON_VISIT  # the roster keeps it


async def test_declined_reports_tell_the_teacher_and_scope_holds(
    chat: ChatDriver, deps: Deps
) -> None:
    add_school(deps.db)
    await chat.say("新增学生 李小花 三年级2班 父母都没能返岗", TEACHER)
    with deps.db.begin() as conn:  # a teacher of the other school reports one too
        other = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T101")).scalar_one()
        conn.execute(insert(identities).values(staff_id=other, channel="wecom", external_id="t101"))
    await chat.say("新增学生 王小明 一年级1班 父亲失业", "t101")
    listing = await chat.say("待认定", COORD)
    assert "李小花" in listing and "王小明" not in listing  # only the coordinator's school
    assert "原因最多200字" in await chat.say("不认定 1 " + "长" * 201, COORD)
    reply = await chat.say("不认定 1 已在民政低保名单，按原渠道资助", COORD)
    assert "已不予认定：李小花（三年级2班）。原因：已在民政低保名单，按原渠道资助" in reply
    assert "未予认定（甲协调）。原因：已在民政低保名单" in told(deps)[0]
    assert sorted(r.status for r in rows(deps, aid_reviews)) == ["declined", "open"]
    again = await chat.say("认定 1 低保", COORD)  # decided: refused, and the list shown fresh
    assert "第1项已经认定过了" in again and "本校目前没有待认定的学生" in again


def test_merging_never_guesses(deps: Deps) -> None:
    with deps.db.begin() as conn:
        school = conn.execute(select(schools.c.id)).scalars().first()
        assert school is not None
        for n in (1, 2):  # two provisional 李小花 in one class: neither is merged
            conn.execute(
                insert(students).values(
                    student_no=f"临时00000{n}",
                    name="李小花",
                    school_id=school,
                    class_name="三年级2班",
                    active=True,
                )
            )
        assert merge_provisional(conn, [("G1", "李小花", school, "三年级2班")]) == 0
        assert merge_provisional(conn, [("G1", "李小花", school, "三年级3班")]) == 0
        nos = set(conn.execute(select(students.c.student_no)).scalars())
    assert {"临时000001", "临时000002"} <= nos and "G1" not in nos


# ---------------------------------------------------------------------------- the console
@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def test_the_console_lists_reviews_and_the_spring_aid_list(
    web: ConsoleClient, bot: ChatDriver, deps: Deps
) -> None:
    other = add_school(deps.db)
    await bot.say("新增学生 李小花 三年级2班 父母都没能返岗，家里没有收入")
    await bot.say("新增学生 赵小北 四年级2班 母亲生病住院")
    await bot.say("新增学生 外校甲 一年级1班 父亲失业", "T101")
    await bot.say("待认定", "C001")
    assert "已认定" in await bot.say("认定 1 低保", "C001")

    await web.sign_in("C001")
    page = await web.text("/console/reviews")
    assert "待认定（1）" in page and "赵小北" in page and "母亲生病住院" in page
    assert re.search(r"<td>李小花</td><td>三年级2班</td><td>临时\d{6}</td><td>已认定</td>", page)
    assert "外校甲" not in page  # another school's
    async with await web.get("/console/reviews/aid-list.csv") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
        text = (await r.read()).decode("utf-8-sig")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["学校", "班级", "学籍号", "姓名", "资助类别", "来源", "认定日期"]
    by_name = {(row[3], row[4]): row for row in lines[1:]}
    li = by_name[("李小花", "低保")]
    assert li[5] == FOUND_ON_VISIT and re.fullmatch(r"\d{4}-\d\d-\d\d", li[6])
    assert by_name[("周小禾", "残疾")][5] == "名单导入"
    assert all(row[0] != "第二实验小学" for row in lines[1:]) and other
    with deps.db.begin() as conn:
        assert "aid_list" in set(conn.execute(select(audit_log.c.action)).scalars())

    web.forget_cookies()
    await web.sign_in("B001")
    page = await web.text("/console/reviews")
    assert "外校甲" in page and "待认定（2）" in page
    web.forget_cookies()
    async with await web.get("/console/reviews/aid-list.csv") as r:
        assert r.status == 303  # no session: nothing


async def test_erasure_and_retention_reach_the_reviews(bot: ChatDriver, deps: Deps) -> None:
    await bot.say("新增学生 李小花 三年级2班 父母都没能返岗")
    await bot.say("新增学生 赵小北 四年级2班 母亲生病住院")
    await bot.say("待认定", "C001")
    assert "已认定" in await bot.say("认定 1 低保", "C001")
    [approved] = [r for r in rows(deps, aid_reviews) if r.student_id is not None]
    with deps.db.begin() as conn:
        no = conn.execute(
            select(students.c.student_no).where(students.c.id == approved.student_id)
        ).scalar_one()
        record = student_record(conn, no)
        assert record["aid_reviews"][0]["note"] == "父母都没能返岗"
        erase_student(conn, no, "家长申请", deps.clock.now())
    [left] = rows(deps, aid_reviews)
    assert left.name == "赵小北" and left.note == "母亲生病住院"
    with deps.db.begin() as conn:
        later = deps.clock.now() + timedelta(days=800)
        apply_retention(conn, later, 730, frozenset(), lambda kind, detail: detail)
    [left] = rows(deps, aid_reviews)
    assert left.note is None and left.name != "赵小北"


async def test_deciding_in_the_console(web: ConsoleClient, bot: ChatDriver, deps: Deps) -> None:
    add_school(deps.db)
    await bot.say("新增学生 李小花 三年级2班 父母都没能返岗")
    await bot.say("新增学生 外校甲 一年级1班 父亲失业", "T101")
    by_name = {r.name: r.id for r in rows(deps, aid_reviews)}
    await web.sign_in("C001")
    csrf = await web.csrf()

    async def decide(review: int, token: str | None = csrf, **fields: str) -> tuple[int, str]:
        data = {**fields, **({"csrf_token": token} if token else {})}
        async with await web.post(f"/console/reviews/{review}", data=data) as r:
            return r.status, r.headers.get("Location", "") or await r.text()

    li = by_name["李小花"]
    assert (await decide(li, None, decision="approve", category="低保"))[0] == 403
    status, page = await decide(li, decision="approve", category="富裕")
    assert status == 400 and "请选择资助类别" in page
    status, page = await decide(li, decision="decline", reason="  ")
    assert status == 400 and "不予认定请写明原因" in page
    status, page = await decide(by_name["外校甲"], decision="approve", category="低保")
    assert status == 400 and "不在你的范围内" in page  # another school's
    assert {r.status for r in rows(deps, aid_reviews)} == {"open"}

    status, location = await decide(li, decision="approve", category="低保")
    assert (status, location) == (303, "/console/reviews?done=approved&told=0")
    page = await web.text(location)
    assert "已认定" in page and "未能通知" in page
    assert categories(deps, next(r.student_no for r in rows(deps, students) if r.name == "李小花"))
    status, page = await decide(li, decision="decline", reason="重复")
    assert status == 400 and "已经处理过了" in page


async def test_a_console_decision_tells_the_teacher_once(deps: Deps, settings: Settings) -> None:
    with deps.db.begin() as conn:
        me = conn.execute(select(staff).where(staff.c.staff_no == "C001")).one()
        teacher = conn.execute(select(staff).where(staff.c.staff_no == "T001")).one()
    coord = Principal(me.id, "C001", me.name, StaffRole.COORDINATOR, me.school_id, "", "x", "y")
    reporter = Staff(teacher.id, "T001", teacher.name, StaffRole.TEACHER, teacher.school_id)
    reached: list[str] = []

    def reach(person: RosterStaff) -> list[tuple[str, str]]:
        reached.append(person.staff_no)
        return [(c, u) for c, u in person.identities.items()]

    store = SqlReviews(deps.db, settings.tz, reach)
    with deps.db.begin() as conn:
        opened = open_review(conn, reporter, None, "李小花", "三年级2班", "无", deps.clock.now())
    assert opened is not None
    decided, told_teacher = await store.decide(coord, opened.id, None, "已有低保", deps.clock.now())
    assert told_teacher and reached == ["T001"] and decided.reason == "已有低保"
    [message] = told(deps)
    assert "李小花（三年级2班）未予认定（甲协调）。原因：已有低保" in message
    with pytest.raises(ReviewError):
        await store.decide(coord, opened.id, "低保", "", deps.clock.now())
    assert len(told(deps)) == 1


async def test_two_coordinators_deciding_at_once_decide_once(deps: Deps, db_url: str) -> None:
    """Three deciders, each on their own connection pool, decide one review at the same moment:
    one decision stands, the others are told it is decided; the student gains one category."""
    with deps.db.begin() as conn:
        me = conn.execute(select(staff).where(staff.c.staff_no == "C001")).one()
        teacher = conn.execute(select(staff).where(staff.c.staff_no == "T001")).one()
        reporter = Staff(teacher.id, "T001", teacher.name, StaffRole.TEACHER, teacher.school_id)
        opened = open_review(conn, reporter, None, "李小花", "三年级2班", "无", deps.clock.now())
    assert opened is not None
    coord = Principal(me.id, "C001", me.name, StaffRole.COORDINATOR, me.school_id, "", "x", "y")
    others = [Database(db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(
                SqlReviews(db, UTC).decide(coord, opened.id, category, "", deps.clock.now())
                for db, category in zip(others, ("低保", "特困", "孤儿"), strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        for db in others:
            db.close()
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(done) == 1 and len(refused) == 2
    assert all(isinstance(r, ReviewError) for r in refused)
    assert len(rows(deps, students)) == 13  # the demo's 12 and one added, once
    [review] = rows(deps, aid_reviews)
    assert review.status == "approved" and review.category == done[0][0].category
