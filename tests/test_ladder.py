"""Follow-ups that close (#14): the group digest, the escalation ladder, coordinators in chat.

Built on the two-week world of `tests.test_schedule` (demo roster, fake inboxes, a controllable
clock) over SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import csv
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from bot.app import build_dispatcher
from bot.core.errors import ConfigError
from bot.core.types import StaffRole, StudentRef
from config.calendar import SchoolCalendar
from config.settings import Secret, Settings, WeComSettings, load_settings
from handlers import states
from handlers.states import Check, Checking, OpenDraft
from storage import ladder
from storage.export import export_visits
from storage.schema import followup_events, followups, identities, schools, staff, students, visits
from tests.conftest import ChatDriver
from tests.test_conversation import COUNSELLING, TABLET_VISIT
from tests.test_schedule import TZ, World, local, visit, world

__all__ = ["world"]  # the fixture, used by name

MON = date(2026, 3, 2)


async def test_the_group_digest_carries_counts_only(world: World, bot: ChatDriver) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    await visit(bot, "陈小树", COUNSELLING)
    thu2 = date(2026, 3, 12)  # both overdue by more than 3 school days: escalated
    await world.at(local(thu2, 17), "digest")
    [(recipient, group)] = world.group.got
    [private] = [t for t in world.wecom.to("coord") if t.startswith("【家访日报】")]
    assert recipient == "default"
    assert "· 示例区实验小学：已访 2/12，新需求 0，待跟进 2（逾期 2），上报 2" in group
    # The coordinator's own digest names them; the group gets not one name nor detail.
    assert "周小禾" in private and "张示例" in private
    with world.deps.db.begin() as conn:
        names = [r.name for r in conn.execute(select(students.c.name))]
        teachers = [
            r.name
            for r in conn.execute(select(staff.c.name).where(staff.c.role != StaffRole.BUREAU))
        ]
        details = [r.detail for r in conn.execute(select(followups.c.detail))]
    leaked = [w for w in [*names, *teachers, *details] if w in group]
    assert leaked == []
    for kind in ("平板", "心理", "负责"):
        assert kind not in group


def history(world: World) -> list[tuple[str, str | None]]:
    """Every event of every follow-up, in order: (event, staff_no of the person)."""
    with world.deps.db.begin() as conn:
        rows = conn.execute(
            select(followup_events.c.event, staff.c.staff_no)
            .outerjoin(staff, staff.c.id == followup_events.c.staff_id)
            .order_by(followup_events.c.id)
        ).all()
    return [(r.event, r.staff_no) for r in rows]


async def test_an_escalation_is_told_once_and_climbs_to_the_bureau(
    world: World, bot: ChatDriver
) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)  # tablet due Thursday 3/5
    wed2, thu2, fri2 = date(2026, 3, 11), date(2026, 3, 12), date(2026, 3, 13)
    await world.at(local(date(2026, 3, 10), 9), "remind")  # 3 school days overdue: not yet
    assert world.wecom.to("coord") == [] and history(world) == []
    await world.at(local(wed2, 9), "remind")
    [told] = world.wecom.to("coord")
    assert "逾期6天" in told and "确认 序号 备注" in told
    await world.at(local(wed2, 17), "digest")  # the digest lists it; nobody is told again
    assert len([t for t in world.wecom.to("coord") if t.startswith("【跟进上报】")]) == 1
    assert world.dingtalk.to("bureau")[-1].startswith("【家访日报】全区汇总")
    await world.at(local(thu2, 9), "remind")  # one school day unacknowledged: stays
    assert not any(t.startswith("【跟进上报") for t in world.dingtalk.to("bureau"))
    await world.at(local(fri2, 9), "remind")  # two: climbs to the bureau, told once
    await world.at(local(fri2, 17), "digest")
    [climbed] = [t for t in world.dingtalk.to("bureau") if t.startswith("【跟进上报")]
    assert climbed.startswith("【跟进上报·教育局】以下跟进上报学校后2个上学日仍无人确认")
    assert "周小禾" in climbed
    assert history(world) == [
        ("escalated", None),
        ("notified", "C001"),
        ("climbed", None),
        ("notified", "B001"),
    ]


async def test_escalation_in_quiet_hours_waits(world: World, bot: ChatDriver) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    wed2 = date(2026, 3, 11)
    await world.at(local(wed2, 22), "digest")  # run late
    assert world.wecom.to("coord") == []
    await world.at(local(date(2026, 3, 12), 7))
    assert [t[:6] for t in world.wecom.to("coord")] == ["【跟进上报】", "【家访日报】"]


async def test_a_restart_between_escalation_and_notification_tells_once(
    world: World, bot: ChatDriver
) -> None:
    """An escalation committed without its notification (a crash, an older release) is told
    at the next run, exactly once."""
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    wed2 = date(2026, 3, 11)
    with world.deps.db.begin() as conn:
        assert ladder.escalate(conn, date(2026, 3, 6), local(wed2, 9)) == 1
    await world.at(local(wed2, 9, 1), "remind")
    await world.at(local(wed2, 9, 2), "remind")
    await world.at(local(wed2, 17), "digest")
    assert len([t for t in world.wecom.to("coord") if t.startswith("【跟进上报】")]) == 1
    assert history(world) == [("escalated", None), ("notified", "C001")]


def test_school_days_before_skips_weekends_and_holidays() -> None:
    calendar = SchoolCalendar(frozenset({date(2026, 3, 4)}), frozenset({date(2026, 3, 14)}))
    assert calendar.school_days_before(date(2026, 3, 10), 0) == date(2026, 3, 10)
    assert calendar.school_days_before(date(2026, 3, 10), 3) == date(2026, 3, 5)  # Mon, Fri, Thu
    assert calendar.school_days_before(date(2026, 3, 6), 2) == date(2026, 3, 3)  # Wed is off
    assert calendar.school_days_before(date(2026, 3, 16), 1) == date(2026, 3, 14)  # 调休 Sat


def test_the_bureau_setting_is_read_and_checked(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "sqlite:///x.db", "HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS": "5"}
    assert load_settings(env, env_file=None).escalate_bureau_after_days == 5
    assert (
        load_settings({"DATABASE_URL": "sqlite:///x.db"}, env_file=None).escalate_bureau_after_days
        == 2
    )
    with pytest.raises(ConfigError, match="HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS"):
        load_settings({**env, "HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS": "two"}, env_file=None)


# ---------------------------------------------------------------------------- coordinators in chat
WECOM = WeComSettings("corp", 1, Secret("s"), Secret("t"), Secret("k" * 43), "http://127.0.0.1:9")


@pytest.fixture
def chat(world: World, settings: Settings) -> ChatDriver:
    """The conversation over WeCom identities (coord, li, zhanglaoshi), as the world's jobs."""
    return ChatDriver(build_dispatcher(replace(settings, wecom=WECOM), world.deps), "wecom")


def add_staff(world: World, staff_no: str, name: str, role: str, school: str, user: str) -> None:
    with world.deps.db.begin() as conn:
        school_id = conn.execute(select(schools.c.id).where(schools.c.name == school)).scalar()
        if school_id is None:
            school_id = conn.execute(
                insert(schools).values(name=school).returning(schools.c.id)
            ).scalar_one()
        sid = conn.execute(
            insert(staff)
            .values(staff_no=staff_no, name=name, role=role, school_id=school_id, active=True)
            .returning(staff.c.id)
        ).scalar_one()
        conn.execute(insert(identities).values(channel="wecom", external_id=user, staff_id=sid))


async def escalated_twice(world: World, bot: ChatDriver) -> None:
    """Two needs of T001's, escalated on Wednesday of week two (the coordinator is told)."""
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    await visit(bot, "陈小树", COUNSELLING)
    await world.at(local(date(2026, 3, 11), 9), "remind")


async def test_a_coordinator_acknowledges_reassigns_and_the_teacher_is_told(
    world: World, bot: ChatDriver, chat: ChatDriver
) -> None:
    await escalated_twice(world, bot)
    [told] = world.wecom.to("coord")
    assert "1. 陈小树" in told and "2. 周小禾" in told  # earliest due first
    world.clock.current = local(date(2026, 3, 11), 10)
    # The numbers of the escalation message: 确认 2 is 周小禾's tablet.
    acked = await chat.say("确认 2 已联系家长，周五送到", user="coord")
    assert acked.startswith("已确认由你负责第2项：周小禾（三年级1班） · 平板/电脑")
    assert "已告知负责老师张示例" in acked
    await world.at(world.clock.current)
    teacher = world.wecom.to("zhanglaoshi")[-1]
    assert teacher.startswith("甲协调已确认负责你的跟进：周小禾（三年级1班） · 平板/电脑")
    assert "备注：已联系家长，周五送到" in teacher
    listed = await chat.say("上报", user="coord")
    assert "本校已上报的跟进2项" in listed and "未确认" in listed and "已确认（甲协调）" in listed
    # 转交 1 T002: 陈小树's counselling goes to 李示例, who is told and now sees it.
    moved = await chat.say("转交 1 T002", user="coord")
    assert moved == "已把第1项转交给李示例（T002）：陈小树（三年级1班） · 心理疏导。已通知对方。"
    await world.at(world.clock.current)
    assert world.wecom.to("li")[-1].startswith("甲协调把一项跟进转交给你：陈小树（三年级1班）")
    todo = await chat.say("待跟进", user="li")
    assert "陈小树" in todo
    done = await chat.say("完成 1 已约好心理老师", user="li")
    assert "已完成第1项：陈小树" in done
    # The coordinator closes the other one, with a note.
    assert "上报的跟进1项" in await chat.say("上报", user="coord")
    closed = await chat.say("完成 1 平板已送到", user="coord")
    assert closed == "已完成第1项：周小禾（三年级1班） · 平板/电脑：平板或电脑。备注：平板已送到"
    with world.deps.db.begin() as conn:
        statuses = dict(conn.execute(select(followups.c.kind, followups.c.status)).all())
    assert statuses == {"device": "done", "psych": "done"}
    events = [(e, who) for e, who in history(world) if e not in ("escalated", "notified")]
    assert events == [
        ("acknowledged", "C001"),
        ("reassigned", "T002"),
        ("done", "T002"),
        ("done", "C001"),
    ]
    # 撤销 takes the coordinator's 完成 back (10 minutes, as for a teacher): escalated again.
    undone = await chat.say("撤销", user="coord")
    assert undone.startswith("已撤销：周小禾（三年级1班） · 平板/电脑")
    with world.deps.db.begin() as conn:
        statuses = dict(conn.execute(select(followups.c.kind, followups.c.status)).all())
    assert statuses == {"device": "escalated", "psych": "done"}
    assert "上报的跟进1项" in await chat.say("上报", user="coord")


async def test_bad_coordinator_inputs_change_nothing(
    world: World, bot: ChatDriver, chat: ChatDriver
) -> None:
    await escalated_twice(world, bot)
    add_staff(world, "C900", "乙协调", "coordinator", "另一所学校", "other_coord")
    add_staff(world, "T900", "丙老师", "teacher", "另一所学校", "other_teacher")
    world.clock.current = local(date(2026, 3, 11), 10)
    before = history(world)
    no_item = await chat.say("确认 999", user="coord")
    assert no_item.startswith("当前列表里没有第999项。列表已更新：\n本校已上报的跟进2项")
    assert await chat.say("转交 1", user="coord") == "请写上序号和工号，例如：转交 1 T002。"
    assert await chat.say("转交 1 T404", user="coord") == "没有工号为T404的在职老师，请核对工号。"
    assert await chat.say("转交 1 t900", user="coord") == (
        "丙老师（T900）不是这名学生学校的老师；只能转交给同校老师。"
    )
    # Another school's coordinator: their own lists are empty, and numbers of ours mean nothing.
    assert await chat.say("上报", user="other_coord") == "本校目前没有已上报的跟进。"
    refused = await chat.say("确认 1", user="other_coord")
    assert refused.startswith("请先看列表，再用序号：")
    assert await chat.say("催办 T001", user="other_coord") == "张示例（T001）不是本校老师。"
    # A teacher sending a coordinator's word.
    assert (await chat.say("催办 T002", user="zhanglaoshi")).startswith(
        "“催办”是学校资助协调员和教育局用的指令。"
    )
    assert (await chat.say("确认 1 好", user="zhanglaoshi")).startswith("“确认”是学校资助协调员")
    assert history(world) == before
    # 催办 twice in a day: once.
    assert (await chat.say("催办 T002", user="coord")).startswith("已催办李示例（T002）：已访 0/4")
    assert await chat.say("催办 T002", user="coord") == (
        "今天已经催办过李示例（T002）了，每位老师每天一次。"
    )
    assert await chat.say("催办 T003", user="coord") == (
        "赵示例（T003）没有可用的聊天账号，无法催办。可发送“绑定码 T003”生成绑定码，请其绑定。"
    )
    await world.at(world.clock.current)
    [nudge] = [t for t in world.wecom.to("li") if t.startswith("【催办】")]
    assert "甲协调提醒你" in nudge
    # The nudge is T002's reminder: the students due, numbered; replying 1 starts the first.
    assert "待家访学生4名（最久未访在前）：" in nudge and "回复序号开始家访" in nudge
    first = nudge.split("\n1. ", 1)[1].split(" · ", 1)[0]
    assert (await chat.say("1", user="li")).startswith(f"开始登记 {first}（")
    await chat.say("放弃", user="li")
    await chat.say("是", user="li")
    # A stale number: T001 closes the tablet; the coordinator's 确认 2 is refused, list again.
    await bot.say("待跟进")
    await bot.say("完成 2 送到了")
    stale = await chat.say("确认 2", user="coord")
    assert stale.startswith("第2项已经完成了。列表已更新：\n本校已上报的跟进1项")
    help_text = await chat.say("帮助", user="coord")
    assert "确认 N 备注" in help_text and "催办 工号" in help_text
    assert "确认 N" not in await chat.say("帮助", user="zhanglaoshi")


async def test_two_coordinators_acknowledging_at_once_one_wins(
    world: World, bot: ChatDriver, chat: ChatDriver
) -> None:
    add_staff(world, "C002", "丁协调", "coordinator", "示例区实验小学", "coord2")
    await escalated_twice(world, bot)
    world.clock.current = local(date(2026, 3, 11), 10)
    first, second = await asyncio.gather(
        chat.say("确认 1", user="coord"), chat.say("确认 1", user="coord2")
    )
    won = [r for r in (first, second) if r.startswith("已确认由你负责第1项")]
    lost = [r for r in (first, second) if r.startswith("第1项已由")]
    assert len(won) == 1 and len(lost) == 1
    holder = "甲协调" if won[0] is first else "丁协调"
    assert lost[0] == f"第1项已由{holder}确认负责，不用再确认。"
    assert [e for e, _ in history(world)].count("acknowledged") == 1


async def test_overview_and_unvisited_per_role(
    world: World, bot: ChatDriver, chat: ChatDriver
) -> None:
    await escalated_twice(world, bot)
    world.clock.current = local(date(2026, 3, 11), 10)
    await chat.say("确认 1", user="coord")
    overview = await chat.say("概况", user="coord")
    assert overview.startswith("本校家访概况（近14天）：\n已访 2/12（16%）\n按班级：")
    assert "三年级1班 2/" in overview
    assert "需求（近14天新发现 / 仍未办结）：平板/电脑 1/1，心理疏导 1/1" in overview
    assert "逾期跟进 2 项；已上报 2 项，其中未确认 1 项。" in overview
    bureau = ChatDriver(chat.dispatcher, "console")
    whole = await bureau.say("概况", user="B001")
    assert whole.startswith("全区家访概况（近14天）：\n已访 2/12（16%）")
    assert "\n按学校：示例区实验小学 2/12\n" in whole
    unvisited = await chat.say("未访", user="coord")
    assert unvisited.startswith("本校近14天未访的学生10名（按班主任，从未家访和最久未访在前）：")
    assert "张示例（T001）" in unvisited and "周小禾" not in unvisited
    assert "（三年级1班，从未家访）" in unvisited
    # A teacher: 未访 lists their own students due; 概况 is for coordinators.
    assert "周小禾" not in await chat.say("未访", user="zhanglaoshi")
    assert (await chat.say("概况", user="zhanglaoshi")).startswith("“概况”是学校资助协调员")


# ---------------------------------------------------------------------------- the next visit asks
FINE_VISIT = ["3", "1", "1", "2", "1", "1", "1", "1", "1", "无"]  # no need this time


async def test_the_next_visit_asks_about_earlier_needs(world: World, bot: ChatDriver) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)  # device
    await visit(bot, "陈小树", COUNSELLING)  # psych
    world.clock.current = local(date(2026, 3, 3), 10)
    await bot.say("待跟进")
    assert "已完成" in await bot.say("完成 2 平板已送到")  # (earliest due first: psych is 1)
    world.clock.current = local(date(2026, 3, 16), 10)
    await bot.say("家访")
    started = await bot.say("周小禾")
    asked = "上次登记的需求：平板/电脑（3月3日已完成：平板已送到）。现在情况如何？"
    assert started.endswith(f"{asked}\n1. 已解决\n2. 仍需帮助")
    assert (await bot.say("3")).startswith("请回复 1（已解决）或 2（仍需帮助）。")
    first_question = await bot.say("仍需帮助")
    assert "怎么联系上" in first_question
    for answer in FINE_VISIT:
        await bot.say(answer)
    assert "已" in await bot.say("提交")
    # 陈小树's counselling is still open: asked too; "已解决" closes it.
    await bot.say("家访")
    assert "心理疏导（还未办结" in await bot.say("陈小树")
    await bot.say("1")
    for answer in FINE_VISIT:
        await bot.say(answer)
    await bot.say("提交")
    with world.deps.db.begin() as conn:
        rows = conn.execute(
            select(
                followups.c.id, followups.c.kind, followups.c.status, followups.c.reopens,
                followups.c.note,
            ).order_by(followups.c.id)
        ).all()  # fmt: skip
        answers = conn.execute(
            select(visits.c.answers).where(visits.c.status == "submitted").order_by(visits.c.id)
        ).all()
    device, psych, again = rows
    assert (device.status, psych.status, psych.note) == ("done", "done", "下次家访确认已解决")
    assert (again.kind, again.status, again.reopens) == ("device", "open", device.id)
    assert answers[2].answers["followup_checks"] == {
        str(device.id): {"answer": "仍需帮助", "kind": "device", "detail": "平板或电脑",
                         "was_done": True}
    }  # fmt: skip
    # A third visit to 周小禾 asks about the new, open one only.
    await bot.say("家访")
    assert "平板/电脑（还未办结" in await bot.say("周小禾")


def test_the_checking_state_survives_the_store_boundary() -> None:
    draft = OpenDraft(7, StudentRef(3, "周小禾", "三年级1班"), states.freeze({}), 2)
    checks = (Check(5, "device", "平板", date(2026, 3, 3), "已送到"), Check(6, "psych", "谈心"))
    conv = states.Conversation(Checking(draft, checks))
    assert states.load(*states.dump(conv)) == conv
    name, data, listing = states.dump(conv)
    assert states.load(name, {**data, "checks": []}, listing).state == states.Idle()


async def test_reminders_and_digests_show_who_holds_what(
    world: World, bot: ChatDriver, chat: ChatDriver
) -> None:
    await escalated_twice(world, bot)
    world.clock.current = local(date(2026, 3, 11), 10)
    await chat.say("转交 1 T002", user="coord")  # 陈小树's counselling to 李示例
    await chat.say("上报", user="coord")
    await chat.say("确认 2 我来跟进", user="coord")  # 周小禾's tablet
    thu2 = date(2026, 3, 12)
    await world.at(local(thu2, 9), "remind")
    li = world.wecom.to("li")[-1]
    assert "陈小树（三年级1班） · 心理疏导：需要心理疏导 · 已逾期8天（已上报）（甲协调转交）" in li
    await world.at(local(thu2, 17), "digest")
    [digest] = [t for t in world.wecom.to("coord") if t.startswith("【家访日报】")]
    assert (
        "已上报（逾期超过3个上学日）2 项：\n未确认 1 项：\n· 陈小树（三年级1班） · 心理疏导"
        in digest
    )
    assert "负责：李示例" in digest
    assert "已确认 1 项：\n· 周小禾（三年级1班） · 平板/电脑 · 逾期7天 · 负责：甲协调" in digest
    # each escalation's history, without the notes (free text stays out of digests)
    assert "  经过：3月11日 上报学校 → 3月11日 已通知 甲协调 → 3月11日 转交给 李示例\n" in digest
    assert digest.count("确认负责 甲协调") == 1 and "我来跟进" not in digest


# ---------------------------------------------------------------------------- three weeks
def numbered(message: str, name: str) -> int:
    """The number of the line naming `name` in a numbered message."""
    [n] = [int(line.split(".", 1)[0]) for line in message.splitlines() if f". {name}" in line]
    return n


def follow_up_history(world: World) -> dict[str, list[tuple[str, str | None]]]:
    """Each follow-up's steps, keyed by "student:kind" (a second need of one kind: "…:2")."""
    with world.deps.db.begin() as conn:
        fus = conn.execute(
            select(followups.c.id, students.c.name, followups.c.kind)
            .join(students, students.c.id == followups.c.student_id)
            .order_by(followups.c.id)
        ).all()
        rows = conn.execute(
            select(followup_events.c.followup_id, followup_events.c.event, staff.c.staff_no)
            .outerjoin(staff, staff.c.id == followup_events.c.staff_id)
            .order_by(followup_events.c.id)
        ).all()
    names: dict[int, str] = {}
    for fid, student, kind in fus:
        key = f"{student}:{kind}"
        names[fid] = key if key not in names.values() else f"{key}:2"
    found: dict[str, list[tuple[str, str | None]]] = {k: [] for k in names.values()}
    for fid, event, who in rows:
        found[names[fid]].append((event, who))
    return found


async def test_three_weeks_of_needs_that_close(
    world: World, bot: ChatDriver, chat: ChatDriver, tmp_path: Path
) -> None:
    # ---- Week one: T001 finds three needs; one is met the next day.
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    await visit(bot, "陈小树", COUNSELLING)
    await visit(bot, "沈小云", TABLET_VISIT)
    world.clock.current = local(date(2026, 3, 3), 10)
    todo = await bot.say("待跟进")
    assert "已完成" in await bot.say(f"完成 {numbered(todo, '沈小云')} 平板已送到")

    # ---- Week two, Wednesday: the other two are overdue by more than 3 school days.
    wed2, thu2, fri2 = date(2026, 3, 11), date(2026, 3, 12), date(2026, 3, 13)
    await world.at(local(wed2, 9), "remind")
    [told] = world.wecom.to("coord")
    world.clock.current = local(wed2, 10)
    ack = await chat.say(f"确认 {numbered(told, '周小禾')} 已联系家长", user="coord")
    assert ack.startswith("已确认由你负责") and "已告知负责老师张示例" in ack
    listed = await chat.say("上报", user="coord")
    moved = await chat.say(f"转交 {numbered(listed, '周小禾')} T002", user="coord")
    assert moved.endswith("已通知对方。")
    await world.at(local(wed2, 10, 5))
    todo = await chat.say("待跟进", user="li")
    assert "已完成" in await chat.say(f"完成 {numbered(todo, '周小禾')} 平板已借到", user="li")
    # ---- Thursday: 陈小树's is still unacknowledged; Friday it climbs to the bureau.
    await world.at(local(thu2, 9), "remind")
    assert world.dingtalk.to("bureau") == []
    await world.at(local(fri2, 9), "remind")
    [climbed] = world.dingtalk.to("bureau")
    assert (
        climbed.startswith("【跟进上报·教育局】")
        and "陈小树（三年级1班） · 示例区实验小学" in climbed
    )
    await world.at(local(fri2, 17), "digest")

    # ---- Week three: each next visit asks about the earlier needs.
    world.clock.current = local(date(2026, 3, 16), 10)
    await bot.say("家访")
    assert "平板/电脑（3月11日已完成：平板已借到）" in await bot.say("周小禾")
    await bot.say("1")
    for answer in FINE_VISIT:
        await bot.say(answer)
    await bot.say("提交")
    await bot.say("家访")
    assert "平板/电脑（3月3日已完成：平板已送到）" in await bot.say("沈小云")
    await bot.say("2")
    for answer in FINE_VISIT:
        await bot.say(answer)
    assert "平板/电脑" in await bot.say("提交")  # the need again, as a new follow-up
    await bot.say("家访")
    assert "心理疏导（还未办结" in await bot.say("陈小树")

    # ---- Exactly who received what.
    def kinds(messages: list[str]) -> list[str]:
        return [m.split("\n", 1)[0][:8] for m in messages]

    reminder = "张示例老师，你好！"[:8]
    assert kinds(world.wecom.to("zhanglaoshi")) == [
        reminder,  # Wed
        "甲协调已确认负责",
        reminder,  # Thu
        reminder,  # Fri
    ]
    li_reminder = "李示例老师，你好！"[:8]
    assert kinds(world.wecom.to("li")) == [
        li_reminder,
        "甲协调把一项跟进",
        li_reminder,
        li_reminder,
    ]
    assert kinds(world.wecom.to("coord")) == ["【跟进上报】以下", "【家访日报】示例"]
    assert kinds(world.dingtalk.to("bureau")) == ["【跟进上报·教育", "【家访日报】全区"]
    assert [r for r, _ in world.group.got] == ["default"]
    assert follow_up_history(world) == {
        "周小禾:device": [
            ("escalated", None),
            ("notified", "C001"),
            ("acknowledged", "C001"),
            ("reassigned", "T002"),
            ("done", "T002"),
        ],
        "陈小树:psych": [
            ("escalated", None),
            ("notified", "C001"),
            ("climbed", None),
            ("notified", "B001"),
        ],
        "沈小云:device": [("done", "T001")],
        "沈小云:device:2": [],
    }
    # ... and the export's 经过 column says the same, with dates, names and notes.
    out = tmp_path / "visits.csv"
    with world.deps.db.begin() as conn:
        export_visits(conn, out, "csv", [], world.deps.form.followup_kinds, TZ)
    with (tmp_path / "visits_followups.csv").open(encoding="utf-8-sig", newline="") as f:
        sheet = list(csv.reader(f))
    steps = {row[2]: row[-1] for row in sheet[1:] if row[4] == "平板/电脑" and row[8] == "已完成"}
    assert steps["周小禾"] == (
        "3月11日 上报学校；3月11日 已通知 甲协调；3月11日 确认负责 甲协调（已联系家长）；"
        "3月11日 甲协调 转交给 李示例；3月11日 完成 李示例（平板已借到）"
    )
    assert steps["沈小云"] == "3月3日 完成 张示例（平板已送到）"
