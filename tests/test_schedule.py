"""Two school weeks of reminders and digests over a real database, with a controllable clock.

Demo roster: T001 (张示例) teaches 周小禾, 陈小树, 王小雨 (三年级1班) and cares for
王小雨 (四年级2班) and 沈小云; T002 (李示例) has four students; T003 (赵示例) has no chat
identity; C001 coordinates the school; B001 is bureau staff.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select

from bot.core.errors import SendError
from bot.deps import Deps
from bot.jobs import Jobs
from bot.outbox import OutboxDelivery
from bot.scheduler import JobScheduler, first_fire_on, job_trigger
from config.calendar import SchoolCalendar
from config.cron import weekdays
from config.settings import QuietHours, Settings
from storage.chunks import MAX_ATTEMPTS
from storage.schema import followups, identities, job_chunks, outbox, staff
from tests.conftest import ChatDriver, FakeClock
from tests.test_conversation import COUNSELLING, TABLET_VISIT

TZ = ZoneInfo("Asia/Shanghai")
HOLIDAY = date(2026, 3, 4)  # a Wednesday off
MAKEUP = date(2026, 3, 14)  # a Saturday of school (调休)


class Inbox:
    """A fake platform: records what each recipient got; can refuse some recipients for good."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[tuple[str, str]] = []
        self.refuse: set[str] = set()

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        await asyncio.sleep(0)
        if recipient in self.refuse:
            raise SendError("81013", permanent=True)
        self.got.append((recipient, text))

    def to(self, recipient: str) -> list[str]:
        return [t for r, t in self.got if r == recipient]


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=TZ).astimezone(UTC)


class World:
    def __init__(self, settings: Settings, deps: Deps, clock: FakeClock) -> None:
        self.clock = clock
        self.wecom, self.dingtalk, self.group = Inbox("wecom"), Inbox("dingtalk"), Inbox("group")
        senders = {"wecom": self.wecom, "dingtalk": self.dingtalk, "dingtalk_group": self.group}
        self.deps = deps
        self.delivery = OutboxDelivery(deps.outbox, senders, clock)
        self.jobs = Jobs(settings, deps, list(senders), self.delivery)

    async def at(self, moment: datetime, job: str | None = None) -> None:
        self.clock.current = moment
        if job:
            await self.jobs.run(job, moment)
        await self.delivery.run_once()


@pytest.fixture
def world(settings: Settings, deps: Deps, clock: FakeClock) -> World:
    with deps.db.begin() as conn:
        ids = {r.staff_no: r.id for r in conn.execute(select(staff.c.staff_no, staff.c.id))}
        conn.execute(
            insert(identities),
            [
                {"channel": "wecom", "external_id": "li", "staff_id": ids["T002"]},
                {"channel": "wecom", "external_id": "coord", "staff_id": ids["C001"]},
                {"channel": "dingtalk", "external_id": "bureau", "staff_id": ids["B001"]},
            ],
        )
    calendar = SchoolCalendar(frozenset({HOLIDAY}), frozenset({MAKEUP}))
    return World(settings, replace(deps, calendar=calendar), clock)


async def visit(bot: ChatDriver, name: str, answers: list[str]) -> None:
    await bot.say("家访")
    await bot.say(name)
    for a in answers:
        await bot.say(a)
    assert "已" in await bot.say("提交")


async def test_two_school_weeks(world: World, bot: ChatDriver) -> None:
    mon = date(2026, 3, 2)
    # ---- Monday 09:00: everyone with students is reminded once; T003 has no identity.
    await world.at(local(mon, 9), "remind")
    [t1] = world.wecom.to("zhanglaoshi")
    [t2] = world.wecom.to("li")
    assert t1.startswith("张示例老师，你好！3月2日的家访提醒：\n待家访学生5名")
    assert t1.count("从未家访") == 5 and "回复序号开始家访" in t1
    assert "待家访学生4名" in t2
    assert world.dingtalk.got == [] and world.group.got == []
    # Running the job again (a second instance, an operator) sends nothing more.
    await world.at(local(mon, 9, 5), "remind")
    assert len(world.wecom.got) == 2

    # ---- T001 visits two students: one needs a tablet, one family is unreachable.
    world.clock.current = local(mon, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    await visit(bot, "陈小树", ["联系不上", "电话没人接"])

    # ---- Monday 17:00 digest.
    await world.at(local(mon, 17), "digest")
    [school] = world.wecom.to("coord")
    assert school.startswith("【家访日报】示例区实验小学 3月2日\n家访覆盖：已访 1/12（8%）")
    assert "残疾 1/2" in school and "新发现需求（2月23日以来）：平板/电脑 1" in school
    assert "· 平板/电脑：周小禾（三年级1班）" in school  # who is behind each new need
    assert "· 张示例（T001）：已访 1/5，待跟进 1，逾期 0" in school
    assert "上次没联系上的家庭：陈小树（三年级1班）" in school
    assert "收不到提醒的老师（没有可用的聊天账号，可发绑定码让其绑定）：赵示例（T003）" in school
    [bureau] = world.dingtalk.to("bureau")
    assert "· 示例区实验小学：已访 1/12，新需求 1，待跟进 1（逾期 0），上报 0" in bureau
    assert [r for r, _ in world.group.got] == ["default"]

    # ---- Tuesday: 陈小树 is due again (family unreachable), 周小禾 is not.
    tue = date(2026, 3, 3)
    await world.at(local(tue, 9), "remind")
    t1_tue = world.wecom.to("zhanglaoshi")[-1]
    assert "待家访学生4名" in t1_tue and "周小禾" not in t1_tue
    assert "陈小树（三年级1班） · 上次没联系上，请尽快再联系" in t1_tue

    # ---- Wednesday is a holiday: nothing at all.
    before = len(world.wecom.got) + len(world.dingtalk.got) + len(world.group.got)
    await world.at(local(HOLIDAY, 9), "remind")
    await world.at(local(HOLIDAY, 17), "digest")
    assert len(world.wecom.got) + len(world.dingtalk.got) + len(world.group.got) == before

    # ---- Thursday: the digest is run late, inside quiet hours: it waits until 07:00 Friday.
    thu, fri = date(2026, 3, 5), date(2026, 3, 6)
    await world.at(local(thu, 9), "remind")
    world.wecom.refuse.add("li")  # T002's account leaves the app: the platform refuses for good
    await world.at(local(fri, 9), "remind")  # (Friday's reminder is tested after the restart)
    await world.at(local(thu, 22), "digest")
    assert len(world.wecom.to("coord")) == 1
    await world.at(local(fri, 6, 59))
    assert len(world.wecom.to("coord")) == 1
    await world.at(local(fri, 7))
    assert len(world.wecom.to("coord")) == 2

    # ---- A restart on Friday at 18:00: the digest, due at 17:00, was missed and runs once.
    restarted = JobScheduler(world.jobs, world.clock)
    world.clock.current = local(fri, 18)
    assert await restarted.catch_up() == ["digest"]
    await world.delivery.run_once()
    assert await restarted.catch_up() == []
    fri_digest = world.wecom.to("coord")[-1]
    assert (
        "3月6日" in fri_digest
        and "消息发送失败（平台拒收）：李示例（企业微信：81013）" in fri_digest
    )

    # ---- Week two: the tablet follow-up (due Thursday) is overdue by 3 school days on Tuesday
    # (Fri, Mon, Tue) and by more on Wednesday: escalated then, the coordinator told at once,
    # and shown in the digest; T001 closes it on Wednesday.
    tue2, wed2 = date(2026, 3, 10), date(2026, 3, 11)
    await world.at(local(tue2, 9), "remind")
    assert "待办跟进1项" in world.wecom.to("zhanglaoshi")[-1]
    await world.at(local(tue2, 17), "digest")
    assert "已上报" not in world.wecom.to("coord")[-1]
    await world.at(local(wed2, 9), "remind")
    told = world.wecom.to("coord")[-1]
    assert told.startswith("【跟进上报】以下跟进已逾期超过3个上学日")
    assert "1. 周小禾（三年级1班） · 平板/电脑" in told and "张示例（T001）" in told
    with world.deps.db.begin() as conn:
        assert conn.execute(select(followups.c.status)).scalar_one() == "escalated"
    world.clock.current = local(wed2, 10)
    await bot.say("待跟进")
    assert "已完成" in await bot.say("完成 1 平板已送到")

    # ---- The make-up Saturday is a school day; Sunday is not.
    await world.at(local(MAKEUP, 9), "remind")
    assert "3月14日的家访提醒" in world.wecom.to("zhanglaoshi")[-1]
    await world.at(local(date(2026, 3, 15), 9), "remind")

    # ---- Exactly who received what, over the two weeks.
    school_days = [mon, tue, thu, fri, date(2026, 3, 9), tue2, MAKEUP]
    reminder_days = [*(d for d in school_days if d not in (date(2026, 3, 9),)), wed2]
    assert len(world.wecom.to("zhanglaoshi")) == len(reminder_days)
    assert len(world.wecom.to("li")) == 3  # Mon, Tue, Thu; then refused for good
    # digests: Mon, Thu (held to Fri 07:00), Fri, Tue2; the escalation on Wed2
    assert len(world.wecom.to("coord")) == 5
    assert len(world.dingtalk.to("bureau")) == 4
    with world.deps.db.begin() as conn:
        keys = [r.idempotency_key for r in conn.execute(select(outbox))]
        statuses = Counter(r.status for r in conn.execute(select(outbox)))
    assert len(keys) == len(set(keys))
    assert statuses["pending"] == 0 and statuses["failed"] == 4  # li: Fri, Tue2, Wed2, Sat


def test_triggers_fire_on_weekdays_and_weekend_for_makeup_days() -> None:
    trigger = job_trigger("0 9 * * 1-5", TZ)
    sat = datetime(2026, 3, 14, tzinfo=TZ)
    assert first_fire_on(trigger, sat) == datetime(2026, 3, 14, 9, tzinfo=TZ)
    mon = datetime(2026, 3, 16, tzinfo=TZ)
    assert first_fire_on(trigger, mon) == datetime(2026, 3, 16, 9, tzinfo=TZ)
    assert first_fire_on(job_trigger("30 16 * * 2", TZ), mon) is None


async def test_quiet_hours_window(world: World, settings: Settings) -> None:
    jobs = Jobs(replace(settings, quiet_hours=QuietHours(time(21), time(7))), world.deps, [])
    assert jobs.quiet_until(local(date(2026, 3, 2), 20, 59)) is None
    assert jobs.quiet_until(local(date(2026, 3, 2), 23)) == local(date(2026, 3, 3), 7)
    assert jobs.quiet_until(local(date(2026, 3, 3), 6)) == local(date(2026, 3, 3), 7)


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("1-5", {1, 2, 3, 4, 5}),
        ("*", set(range(7))),
        ("0", {0}),
        ("7", {0}),
        ("6,0", {0, 6}),
        ("mon-fri", {1, 2, 3, 4, 5}),
        ("*/2", {0, 2, 4, 6}),
        ("1-7", set(range(7))),
    ],
)
def test_cron_day_of_week_uses_cron_numbering(field: str, days: set[int]) -> None:
    assert weekdays(field) == days


async def test_a_job_that_dies_half_way_leaves_nothing_and_runs_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import outbox as outbox_module

    real = outbox_module.enqueue_many

    def crash_after_writing(*args: Any, **kwargs: Any) -> int:
        real(*args, **kwargs)
        raise RuntimeError("killed")  # the job dies inside its transaction

    monday = date(2026, 3, 2)
    monkeypatch.setattr(outbox_module, "enqueue_many", crash_after_writing)
    await world.at(local(monday, 9), "remind")  # each chunk fails its attempts; the run ends
    with world.deps.db.begin() as conn:
        assert conn.execute(select(outbox)).all() == []  # rolled back with the transaction
        errors = conn.execute(
            select(job_chunks.c.status, job_chunks.c.attempts, job_chunks.c.error)
        ).all()
    assert {(status, attempts) for status, attempts, _ in errors} == {("failed", MAX_ATTEMPTS)}
    assert all(e.startswith("RuntimeError at ") and "killed" not in e for *_, e in errors)
    assert not await world.jobs.has_run("remind", monday)  # (so that it runs again)
    monkeypatch.setattr(outbox_module, "enqueue_many", real)

    restarted = JobScheduler(world.jobs, world.clock)
    world.clock.current = local(monday, 9, 30)
    assert await restarted.catch_up() == ["remind"]
    await world.delivery.run_once()
    assert await restarted.catch_up() == []
    assert len(world.wecom.to("zhanglaoshi")) == 1 and len(world.wecom.to("li")) == 1


async def test_catch_up_late_at_night_skips_instead_of_sending_tomorrow(world: World) -> None:
    world.clock.current = local(date(2026, 3, 2), 23)  # down all day, back at 23:00
    assert await JobScheduler(world.jobs, world.clock).catch_up() == []
    with world.deps.db.begin() as conn:
        assert conn.execute(select(outbox)).all() == []


async def test_a_job_run_for_a_past_time_gives_up_a_day_after_queuing_not_after_at(
    world: World,
) -> None:
    """`homevisit remind --at` 34 hours back during an outage: the messages are retried."""
    now = local(date(2026, 3, 3), 20)
    world.clock.current = now
    report = await world.jobs.run("remind", now - timedelta(hours=34))
    assert report.queued > 0

    async def outage(recipient: str, text: str, *, proactive: bool = True) -> None:
        raise SendError("503")

    world.wecom.send = outage  # type: ignore[method-assign]
    await world.delivery.run_once()
    with world.deps.db.begin() as conn:
        states = conn.execute(select(outbox.c.status, outbox.c.attempts)).all()
    assert states and all(s == ("pending", 1) for s in states)


async def test_replying_to_a_reminder_refers_to_its_numbers(world: World, bot: ChatDriver) -> None:
    """`1` starts the first student a reminder lists; `完成 N` closes follow-up N of it, not of
    an earlier 待跟进 list; the reminder's list becomes current only once it is delivered."""
    mon = date(2026, 3, 2)
    world.clock.current = local(mon, 10)
    await visit(bot, "周小禾", TABLET_VISIT)  # a tablet, due in 3 days
    await visit(bot, "陈小树", COUNSELLING)  # counselling, due in 2 days
    wecom = ChatDriver(bot.dispatcher, channel="wecom")
    todo = await wecom.say("待跟进", user="zhanglaoshi")  # numbered: tablet first? counselling?
    assert "1. " in todo and "2. " in todo

    thu = date(2026, 3, 5)  # both follow-ups due by now; three students still never visited
    await world.at(local(thu, 9), "remind")
    [reminder] = world.wecom.to("zhanglaoshi")[-1:]
    lines = {
        int(line.split(".", 1)[0]): line
        for line in reminder.splitlines()
        if line[:1].isdigit() and ". " in line
    }
    [psych] = [n for n, line in lines.items() if "心理疏导" in line]
    assert "完成 " in reminder and psych > 3  # follow-ups are numbered after the students
    done = await wecom.say(f"完成 {psych} 已联系心理老师", user="zhanglaoshi")
    assert f"已完成第{psych}项：陈小树（三年级1班） · 心理疏导" in done
    with world.deps.db.begin() as conn:
        kinds = dict(conn.execute(select(followups.c.kind, followups.c.status)).all())
    assert kinds == {"psych": "done", "device": "open"}  # the child's, not the tablet

    first_student = lines[1].split(". ", 1)[1].split(" · ")[0]
    assert f"开始登记 {first_student}" in await wecom.say("1", user="zhanglaoshi")
