"""Issue 6 item 3: two real `homevisit serve` processes on one PostgreSQL.

Each test gets a fresh PostgreSQL schema with the demo roster (`python -m bot demo`), a fake WeCom
server API in the test's event loop, and two `python -m bot serve` processes on loopback ports,
talked to over `POST /api/messages`. Messages of one teacher alternate between the two instances,
the same message id reaches both at once, a reminder job runs on two processes at the same moment,
and one instance is SIGKILLed during a load run; the database is then read directly.

The scheduler inside `serve` is kept quiet with a school calendar that makes the days around today
holidays: otherwise, on a weekday after 09:00, both servers would catch up today's reminder at
start-up and the fake WeCom server would see a second reminder besides the one under test.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from sqlalchemy import Engine, create_engine, select

from handlers import texts
from storage.schema import conversations, inbound_messages, job_runs, outbox, staff, visits
from tests import fake_wecom
from tests.conftest import make_db_url
from tests.fake_wecom import AGENT_ID, CORP_ID, SECRET, FakeWeCom
from tests.procs import BotServer, bot_env, run_bot
from tests.test_conversation import TABLET_ANSWERS, TABLET_VISIT

API_TOKEN = "instances-test-token-0123456789abcdef"
WECOM_TOKEN = "hvToken2026"
WECOM_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SHANGHAI = ZoneInfo("Asia/Shanghai")
REMIND_AT = "2026-03-02T09:00:00+08:00"  # a Monday school day, outside QUIET_HOURS (21:00-07:00)
REMIND_DAY = date(2026, 3, 2)

ANSWERS = TABLET_VISIT
EXPECTED_ANSWERS = TABLET_ANSWERS
# The check-ins of the load run: one student each, names unique in that teacher's list.
CHECKINS = {"T001": "周小禾", "T002": "孙小川", "T003": "冯小苗"}
KILL_DELAY = 0.002  # seconds between sending a request to the instance and SIGKILLing it


def checkin_script(student: str) -> list[tuple[str, str]]:
    """(message, a text its reply must contain) for a whole check-in of `student`."""
    steps = [("家访", "最久未访在前"), (student, f"开始登记 {student}")]
    steps += [(a, f"【第{n}题】") for n, a in enumerate(ANSWERS[:-1], start=2)]
    return [*steps, (ANSWERS[-1], f"请核对 {student}"), ("提交", f"已提交 {student}")]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    yield from make_db_url("postgresql", tmp_path)


@pytest.fixture
def db(pg_url: str) -> Iterator[Engine]:
    """The test's own read access to the schema the servers use."""
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with fake_wecom.running() as api:
        yield api


@pytest.fixture
def env(pg_url: str, fake: FakeWeCom, tmp_path: Path) -> dict[str, str]:
    today = datetime.now(SHANGHAI).date()
    quiet = (today - timedelta(days=1), today + timedelta(days=1))
    assert not quiet[0] <= REMIND_DAY <= quiet[1]
    calendar = tmp_path / "calendar.yaml"
    calendar.write_text(f"holidays:\n  - {quiet[0]}..{quiet[1]}\n", encoding="utf-8")
    # Quiet hours of a minute, half a day away: the default 21:00-07:00 would hold the reminder
    # (queued "now", whatever --at says) whenever the suite runs in the Shanghai evening.
    night = datetime.now(SHANGHAI) + timedelta(hours=12)
    quiet_hours = f"{night:%H:%M}-{night + timedelta(minutes=1):%H:%M}"
    return bot_env(
        DATABASE_URL=pg_url,
        API_TOKEN=API_TOKEN,
        HOMEVISIT_CALENDAR=str(calendar),
        QUIET_HOURS=quiet_hours,
        WECOM_CORP_ID=CORP_ID,
        WECOM_AGENT_ID=str(AGENT_ID),
        WECOM_SECRET=SECRET,
        WECOM_TOKEN=WECOM_TOKEN,
        WECOM_AES_KEY=WECOM_AES_KEY,
        WECOM_API_BASE=fake.base_url,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture
async def servers(
    env: dict[str, str], tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[list[BotServer]]:
    """The demo roster, then two serve processes on it, both healthy."""
    demo = await run_bot(env, tmp_path, "demo")
    assert demo.returncode == 0, demo.stderr
    pair = [BotServer("serve-a", env, tmp_path), BotServer("serve-b", env, tmp_path)]
    try:
        for server in pair:
            server.start()
        await asyncio.gather(*(s.wait_ready(http) for s in pair))
        yield pair
    finally:
        for server in pair:
            server.stop()


class Api:
    """The generic JSON channel of one server, as a client sees it."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"m{next(self._ids)}"

    async def say(self, server: BotServer, user: str, text: str, message_id: str) -> list[str]:
        async with self.http.post(
            f"{server.url}/api/messages",
            json={"user": user, "text": text, "message_id": message_id},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, (server.name, resp.status, body)
        replies: list[str] = body["replies"]
        return replies


@pytest.fixture
def api(http: aiohttp.ClientSession) -> Api:
    return Api(http)


# ---------------------------------------------------------------- reading the database


def version(db: Engine, user: str) -> int:
    with db.connect() as conn:
        found = conn.execute(
            select(conversations.c.version).where(
                conversations.c.channel == "api", conversations.c.user_id == user
            )
        ).scalar()
    return int(found or 0)


def visits_of(db: Engine, user: str) -> list[Any]:
    with db.connect() as conn:
        return list(
            conn.execute(
                select(visits)
                .join(staff, staff.c.id == visits.c.staff_id)
                .where(staff.c.staff_no == user)
                .order_by(visits.c.id)
            ).all()
        )


def stored_replies(db: Engine) -> dict[str, list[str]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(inbound_messages.c.message_id, inbound_messages.c.replies).where(
                inbound_messages.c.channel == "api"
            )
        ).all()
    return {r.message_id: r.replies for r in rows}


def no_failure(replies: list[str]) -> bool:
    return bool(replies) and not any(r in (texts.APOLOGY, texts.UNAVAILABLE) for r in replies)


# ---------------------------------------------------------------- the tests


async def test_checkin_alternating_between_two_instances(
    servers: list[BotServer], api: Api, db: Engine
) -> None:
    for n, (text, expected) in enumerate(checkin_script("周小禾")):
        server = servers[n % 2]
        reply = "\n\n".join(await api.say(server, "T001", text, api.new_id()))
        assert expected in reply, (server.name, text, reply)
        assert texts.APOLOGY not in reply and texts.UNAVAILABLE not in reply
    [visit] = visits_of(db, "T001")
    assert visit.status == "submitted" and visit.method == "电话" and visit.reached is True
    assert visit.answers == EXPECTED_ANSWERS
    assert version(db, "T001") == len(checkin_script("周小禾"))


async def test_each_message_id_is_processed_once_across_instances(
    servers: list[BotServer], api: Api, db: Engine
) -> None:
    a, b = servers
    # The same message id at both instances at the same moment, starting from no conversation.
    steps = checkin_script("周小禾")[:5]
    mids = [api.new_id() for _ in steps]
    for n, ((text, expected), mid) in enumerate(zip(steps, mids, strict=True), start=1):
        first, second = await asyncio.gather(
            api.say(a, "T001", text, mid), api.say(b, "T001", text, mid)
        )
        assert first == second, (text, first, second)
        assert expected in "\n".join(first) and no_failure(first)
        assert version(db, "T001") == n
    [draft] = visits_of(db, "T001")
    assert draft.status == "draft"
    assert draft.answers == {"method": "电话", "study": "好", "device_ok": "否"}
    # A late retry of an old id, at either instance, gets the old reply and changes nothing.
    old = await api.say(a, "T001", "3", mids[2])
    assert "【第2题】" in "\n".join(old) and await api.say(b, "T001", "3", mids[2]) == old
    assert version(db, "T001") == len(steps)

    # A burst of distinct messages of one teacher at both instances at once.
    burst = [("帮助", "可以随时发送这些指令"), ("进度", "近14天已家访"), ("名单", "最久未访在前")]
    start = version(db, "T002")
    sends = [(servers[i % 2], *burst[i % len(burst)], api.new_id()) for i in range(24)]
    results = await asyncio.gather(
        *(api.say(server, "T002", text, mid) for server, text, _, mid in sends)
    )
    for (server, text, expected, _), replies in zip(sends, results, strict=True):
        assert no_failure(replies), (server.name, text, replies)
        assert expected in "\n".join(replies), (server.name, text, replies)
    assert version(db, "T002") == start + len(sends)
    stored = stored_replies(db)
    assert len(stored) == len(steps) + len(sends)
    for (_, _, _, mid), replies in zip(sends, results, strict=True):
        assert stored[mid] == replies


async def test_reminder_job_on_two_instances_sends_once(
    servers: list[BotServer], env: dict[str, str], tmp_path: Path, fake: FakeWeCom, db: Engine
) -> None:
    # Both `remind` runs and both servers' outbox delivery race for the same rows.
    first, second = await asyncio.gather(
        run_bot(env, tmp_path, "remind", "--at", REMIND_AT),
        run_bot(env, tmp_path, "remind", "--at", REMIND_AT),
    )
    for run in (first, second):
        assert run.returncode == 0, run.stderr
        assert "remind 2026-03-02: 1 messages planned" in run.stdout, run.stdout
        assert "2 recipients without a usable channel" in run.stdout, run.stdout  # T002, T003

    def outbox_rows() -> list[Any]:
        with db.connect() as conn:
            return list(conn.execute(select(outbox).order_by(outbox.c.id)).all())

    # Bounded: a claimed row that was not sent would only come back after the 2-minute lease.
    deadline = asyncio.get_running_loop().time() + 15
    while not (fake.sent and all(r.status == "sent" for r in outbox_rows())):
        if asyncio.get_running_loop().time() > deadline:
            rows = [{k: v for k, v in r._mapping.items() if k != "body"} for r in outbox_rows()]
            pytest.fail(
                f"the reminder was not delivered within 15 s: WeCom got {fake.send_calls} sends; "
                f"outbox {rows}; remind output {first.stdout!r} {second.stdout!r} (a row still "
                "pending with attempts=1 was claimed by a process that stopped without sending "
                "or without recording the send)"
            )
        await asyncio.sleep(0.1)

    assert [m.touser for m in fake.sent] == ["zhanglaoshi"]
    assert fake.send_calls == 1  # not even a second attempt that the platform refused
    assert "周小禾" in fake.sent[0].content  # T001's never-visited students are due
    [row] = outbox_rows()
    assert row.idempotency_key == f"reminder:T001:{REMIND_DAY}"
    assert (row.channel, row.recipient, row.status, row.attempts) == (
        "wecom",
        "zhanglaoshi",
        "sent",
        1,
    )
    with db.connect() as conn:
        runs = conn.execute(select(job_runs.c.job, job_runs.c.run_date)).all()
    assert [tuple(r) for r in runs] == [("remind", REMIND_DAY)]
    assert all(s.alive for s in servers)


async def test_killing_one_instance_during_load_loses_nothing_acknowledged(
    servers: list[BotServer], api: Api, db: Engine
) -> None:
    survivor, victim = servers
    killed = asyncio.Event()
    kill_after = 12  # messages acknowledged before the kill
    kill_timer: list[asyncio.TimerHandle] = []
    acked: dict[str, tuple[list[str], bool]] = {}  # message id -> (replies, sent before the kill)
    answered_by: dict[str, str] = {}
    in_flight_at_kill: list[str] = []

    def kill_victim() -> None:
        victim.kill()
        killed.set()

    async def teacher(n: int, user: str, student: str) -> None:
        for step, (text, expected) in enumerate(checkin_script(student)):
            mid = f"{user}-{step}"
            target = servers[(n + step) % 2]
            sent_after_kill = killed.is_set()
            while True:
                if killed.is_set():
                    target = survivor
                elif target is victim and len(acked) >= kill_after and not kill_timer:
                    # SIGKILL while this request is on the wire or inside its transaction.
                    loop = asyncio.get_running_loop()
                    kill_timer.append(loop.call_later(KILL_DELAY, kill_victim))
                try:
                    replies = await api.say(target, user, text, mid)
                    break
                except (aiohttp.ClientError, TimeoutError):
                    # Only the killed instance may fail: resend the same id to the survivor.
                    assert target is victim and killed.is_set(), mid
                    in_flight_at_kill.append(mid)
                    target = survivor
            # (a reply may arrive from the victim just before the kill and be read just after)
            acked[mid] = (replies, not sent_after_kill)
            answered_by[mid] = target.name
            assert expected in "\n".join(replies) and no_failure(replies), (mid, replies)
            await asyncio.sleep(0.01)  # a teacher types; the other teachers' messages interleave

    try:
        await asyncio.wait_for(
            asyncio.gather(*(teacher(n, u, s) for n, (u, s) in enumerate(CHECKINS.items()))),
            timeout=40,
        )
    finally:
        for timer in kill_timer:
            timer.cancel()
    assert not victim.alive and survivor.alive, in_flight_at_kill
    before_kill = [mid for mid, (_, before) in acked.items() if before]
    assert len(before_kill) >= 12
    assert {answered_by[mid] for mid in before_kill} == {survivor.name, victim.name}
    assert len(acked) > len(before_kill)  # the survivor carried on after the kill

    # Everything acknowledged, before and after the kill, is in the database as it was answered.
    stored = stored_replies(db)
    total = sum(len(checkin_script(s)) for s in CHECKINS.values())
    assert len(acked) == total and set(stored) == set(acked)
    for mid, (replies, _) in acked.items():
        assert stored[mid] == replies, mid
    for user in CHECKINS:
        [visit] = visits_of(db, user)
        assert visit.status == "submitted" and visit.answers == EXPECTED_ANSWERS, user
        assert version(db, user) == len(checkin_script(CHECKINS[user])), user
