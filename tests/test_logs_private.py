"""Logs carry no personal data, proven (issue 16 item 4).

One scenario on both databases, with every logger at DEBUG: check-ins with names, notes and needs
over WeCom (encrypted callbacks), the generic JSON channel and the console chat; wrong answers,
bad signatures, malformed and oversized bodies, a wrong bearer token; a crash inside a turn whose
exception message quotes a child's name and note; reminders and digests; the coordinator console
(sign-in, student page, export); the CLI's exports, student export and erasure and their error
paths. Then each other channel on its own, against its local fake platform: DingTalk's HTTP
callbacks, the WeChat Official Account (safe mode) and Feishu (webhook and long connection), the
last two also with binding by code (`绑定 工号 码`), a reply or reminder pushed through the fake
server API after a failed first send, and refused callbacks or frames quoting a note. No log
record (message, arguments, exception text) may hold a student's or a staff member's name, an
answer, a note, a platform user id (OpenID, open_id), a binding code, an app secret or a token.
Names are fictional.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar, web
from aiohttp.test_utils import TestServer
from alembic import command
from sqlalchemy import func, insert, select

from bot.app import JOBS, create_app
from bot.channels import wechat
from bot.cli import main as homevisit
from bot.core.binding import ALPHABET
from bot.deps import Deps
from bot.jobs import DIGEST, REMIND
from bot.web import DELIVERY
from config.forms import Form
from config.settings import Settings
from handlers import texts
from storage.migrate import alembic_config
from storage.schema import identities, staff, visits
from tests import fake_wechat
from tests import test_dingtalk as dt
from tests import test_feishu as fs
from tests import test_wechat as wc
from tests.conftest import ChatDriver, FakeClock
from tests.console_kit import ConsoleClient, issue_link
from tests.fake_dingtalk import FakeDingTalk
from tests.fake_feishu import FakeFeishu
from tests.fake_wecom import SECRET
from tests.test_binding import code_for
from tests.test_schedule import World, local, world  # noqa: F401  (fixtures)
from tests.test_sensitive import CHECKIN, NOTE, OTHER
from tests.test_wecom import (  # noqa: F401  (fixtures)
    AES_KEY,
    TOKEN,
    USER,
    Peer,
    app,
    fake,
    http,
    server,
    wecom_settings,
    wx,
)

API_NOTE = "爸爸住院欠了医药费"
DONE_NOTE = "平板已送到奶奶手里"
CRASH_NOTE = "孩子身上有伤说是摔的"
STUDENTS = ("王小雨", "陈小树", "周小禾", "孙小川", "吴小岚", "郑小石", "冯小苗", "卫小溪")
STAFF = ("张示例", "李示例", "赵示例", "甲协调", "示例局员")
ANSWERS = ("需要心理疏导", "食品和生活物资", "父母无法返岗收入减少")


OURS = ("bot", "handlers", "storage", "config", "homevisit", "aiohttp", "asyncio", "apscheduler")


@pytest.fixture
def debug_everything(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every logger at DEBUG (their levels restored afterwards), but for two that serve sets
    itself: the access log (off in `homevisit serve`: its lines would carry sign-in links) and
    SQLAlchemy's engine, which `storage.db` pins at WARNING (at DEBUG it logs result rows)."""
    caplog.set_level(logging.DEBUG)
    names = [n for n in [*logging.root.manager.loggerDict, *OURS] if not n.startswith("sqlalchemy")]
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def formatted(record: logging.LogRecord) -> str:
    text = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
    return f"{text} {record.args!r} {record.stack_info or ''}"


async def test_no_personal_data_in_any_log_record(
    debug_everything: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    wx: Peer,  # noqa: F811
    server: TestServer,  # noqa: F811
    http: ClientSession,  # noqa: F811
    bot: ChatDriver,
    world: World,  # noqa: F811
    settings: Settings,
    deps: Deps,
) -> None:
    secrets: list[str] = [*STUDENTS, *STAFF, *ANSWERS, NOTE, OTHER, API_NOTE, DONE_NOTE]
    secrets += [CRASH_NOTE, USER, "dt_zhang", "t" * 32, TOKEN, AES_KEY, SECRET]

    # WeCom: T001 visits 周小禾 by name, with wrong answers on the way, then closes a follow-up
    await wx.say("家访")
    await wx.say("周小禾")
    await wx.say("99")
    for answer in CHECKIN:
        await wx.say(answer)
    await wx.say("提交")
    await wx.say("待跟进")
    await wx.say(f"完成 1 {DONE_NOTE}")
    assert (await wx.post_raw({"msg_signature": "x", "timestamp": "1", "nonce": "2"}, b"<x/>"))[
        0
    ] in (400, 401, 403)

    # the generic JSON channel: T002 visits 孙小川; bad token, malformed and oversized bodies
    api = server.make_url("/api/messages")
    auth = {"Authorization": "Bearer " + "t" * 32}
    lines = ["家访", "孙小川", "3", "1", "1", "1", "3", API_NOTE, "1", "1", "1", "1", "1"]
    for n, line in enumerate([*lines, "无", "提交"]):
        async with http.post(api, json={"user": "T002", "text": line, "message_id": f"a{n}"},
                             headers=auth) as r:  # fmt: skip
            assert r.status == 200
    async with http.post(api, json={"user": "T002", "text": NOTE}, headers={
        "Authorization": "Bearer wrong-token-孙小川"}) as r:  # fmt: skip
        assert r.status == 401
    async with http.post(api, data=f'{{"user": "T002", "text": "{NOTE}"', headers=auth) as r:
        assert r.status == 400
    async with http.post(api, data=("周小禾" * 30000).encode(), headers=auth) as r:
        assert r.status == 413

    # a crash inside a turn, its exception quoting a child's name and a note
    quoted = f"周小禾 {CRASH_NOTE} T003"  # (in a variable, as real data is: not in the source)

    def crash(self: Form, answers: object, today: date) -> list[object]:
        raise RuntimeError(quoted)

    monkeypatch.setattr(Form, "followups", crash)
    await bot.say("家访", user="T003")
    await bot.say("郑小石", user="T003")
    for answer in ["3", "1", "1", "2", "1", "1", "1", "1", "1", CRASH_NOTE]:
        await bot.say(answer, user="T003")
    assert await bot.replies("提交", user="T003") == [texts.APOLOGY]
    monkeypatch.undo()

    # reminders and digests
    await world.at(local(date(2026, 3, 2), 9, 5), REMIND)
    await world.at(local(date(2026, 3, 2), 17, 5), DIGEST)
    assert world.wecom.got or world.dingtalk.got

    # the console: sign-in, the student page, an export with and without sensitive answers
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as browser_http:
        web = ConsoleClient(server, browser_http, deps)
        token = issue_link(deps.db, "C001", deps)
        secrets.append(token)
        async with await web.get(f"/console/login?token={token}") as r:
            assert r.status == 303
        await web.text("/console/students")
        await web.text("/console/followups")
        async with await web.get("/console/export?format=xlsx") as r:
            assert r.status == 200
        async with await web.get("/console/login?token=wrong-token") as r:
            assert r.status != 303
        async with await web.get(f"/console/login?token={token}") as r:  # used already
            assert r.status != 303

    # the CLI, in this process: exports, a student's data, erasure, and their errors
    command.stamp(alembic_config(deps.db.engine), "head")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.chdir(tmp_path)
    assert homevisit(["export", "--out", str(tmp_path / "a.xlsx")]) == 0
    assert homevisit(["export", "--out", str(tmp_path / "b.csv"), "--include-sensitive",
                         "--user", "C001", "--reason", "个案会商 周小禾"]) == 0  # fmt: skip
    assert homevisit(["export", "--out", str(tmp_path / "no" / "c.csv")]) == 1
    assert homevisit(["student", "export", "DEMO0003", "--out", str(tmp_path / "s.json")]) == 0
    assert homevisit(["student", "erase", "DEMO0005", "--reason", "家长申请 孙小川"]) == 0
    assert homevisit(["student", "erase", "NOPE", "--reason", "x"]) == 1
    assert homevisit(["audit", "verify"]) == 0

    with deps.db.begin() as conn:  # the scenario did happen
        assert conn.execute(select(func.count()).select_from(visits)).scalar_one() >= 1
    records = caplog.records
    assert len(records) > 5  # the scenario did log (crash, refused requests, jobs)
    assert any("turn failed" in r.getMessage() for r in records)
    leaks = [
        (secret, formatted(r)[:300])
        for r in records
        for secret in secrets
        if secret in formatted(r)
    ]
    assert leaks == []
    assert not logging.getLogger("sqlalchemy.engine").isEnabledFor(logging.INFO)


# ---------------------------------------------------------------------------- DingTalk
@pytest.fixture
async def dingtalk_fake(clock: FakeClock) -> AsyncIterator[FakeDingTalk]:
    peer = FakeDingTalk(
        app_key=dt.APP_KEY,
        app_secret=dt.APP_SECRET,
        robot_code=dt.ROBOT_CODE,
        now=lambda: clock.now().timestamp(),
    )
    await peer.start()
    yield peer
    await peer.close()


async def test_no_personal_data_in_dingtalk_logs(
    debug_everything: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    deps: Deps,
    dingtalk_fake: FakeDingTalk,
    clock: FakeClock,
) -> None:
    """The same over DingTalk's HTTP callbacks: a check-in with a note, refused callbacks, a
    malformed body and a crash inside a turn."""
    teacher = dt.Teacher(dingtalk_fake, clock)
    ids = iter(range(1000))

    def say(text: str) -> dict[str, object]:  # (opaque ids, as DingTalk's own: the helper's
        return teacher.message(text, msgId=f"msgid{next(ids):04d}")  # name the sender)

    secrets = [*STUDENTS, *STAFF, NOTE, OTHER, CRASH_NOTE, dt.USER, dt.APP_SECRET, "张老师"]
    quoted = f"周小禾 {CRASH_NOTE}"

    def crash(self: Form, answers: object, today: date) -> list[object]:
        raise RuntimeError(quoted)

    async with (
        ClientSession() as web_client,
        dt.serving(dt.with_dingtalk(settings, dingtalk_fake, "http"), deps) as dt_server,
    ):
        for text in ["家访", "周小禾", "99", *CHECKIN, "提交"]:
            status, _ = await dt.callback(web_client, dt_server, say(text), dt.headers_for(clock))
            assert status == 200
        status, _ = await dt.callback(
            web_client, dt_server, say(NOTE), dt.headers_for(clock, secret="wrong")
        )
        assert status == 403
        status, _ = await dt.callback(
            web_client, dt_server, f'{{"text": "{NOTE}"'.encode(), dt.headers_for(clock)
        )
        assert status == 400
        monkeypatch.setattr(Form, "followups", crash)
        for text in ["家访", "陈小树", *CHECKIN, "提交"]:
            await dt.callback(web_client, dt_server, say(text), dt.headers_for(clock))
        await dt.eventually(lambda: any("turn failed" in r.getMessage() for r in caplog.records))
    with deps.db.begin() as conn:
        submitted = select(func.count()).where(visits.c.status == "submitted")
        assert conn.execute(submitted).scalar_one() == 1  # the crashed one stays a draft
    leaks = [
        (secret, formatted(r)[:300])
        for r in caplog.records
        for secret in secrets
        if secret in formatted(r)
    ]
    assert leaks == []


def leaks_in(records: list[logging.LogRecord], secrets: list[str]) -> list[tuple[str, str]]:
    return [(s, formatted(r)[:300]) for r in records for s in secrets if s in formatted(r)]


# ---------------------------------------------------------------------------- WeChat
async def test_no_personal_data_in_wechat_logs(
    debug_everything: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    deps: Deps,
    bot: ChatDriver,
    clock: FakeClock,
) -> None:
    """The same over the WeChat Official Account in safe mode: a check-in with a note, binding
    by code, refused callbacks, a crash inside a turn, a reply and a reminder pushed through the
    fake server API (the reminder after a failed first try)."""
    newcomer = "oTeacherLi00000000000000003"
    code = await code_for(bot, "T002")
    wrong_code = next(c for c in ALPHABET if c != code[0]) + code[1:]
    secrets = [*STUDENTS, *STAFF, *ANSWERS, NOTE, OTHER, CRASH_NOTE, wc.OPENID, newcomer]
    secrets += [code, code.lower(), wrong_code, fake_wechat.APP_SECRET, wc.TOKEN, wc.AES_KEY]
    quoted = f"周小禾 {CRASH_NOTE} {wc.OPENID}"

    def crash(self: Form, answers: object, today: date) -> list[object]:
        raise RuntimeError(quoted)

    with deps.db.begin() as conn:  # T001 bound as `wc.bound` does it
        staff_id = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        conn.execute(
            insert(identities).values(channel="wechat", external_id=wc.OPENID, staff_id=staff_id)
        )
    async with fake_wechat.running() as api, ClientSession() as web_client:
        api.followers |= {wc.OPENID, newcomer}
        api.in_window |= {wc.OPENID, newcomer}
        conf = replace(settings, wechat=wc.wechat_config(api))
        app = create_app(conf, deps)
        async with TestServer(app, host="127.0.0.1") as server:
            wx = wc.Peer(web_client, server, clock)
            for text in ["家访", "周小禾", "99", *CHECKIN, "提交"]:
                await wx.say(text)
            # binding by code: first a wrong code, then the right one
            assert await wx.say(f"绑定 T002 {wrong_code}", user=newcomer) == texts.BIND_WRONG
            done = await wx.say(f"绑定 T002 {code.lower()}", user=newcomer)
            assert done.startswith(texts.BIND_DONE.format(name="李示例"))
            # refused: bad signatures, a plain body, malformed and undecryptable envelopes
            params = wx.query(wx.timestamp()) | {"signature": "f" * 40}
            body = wc.message_xml(NOTE, msg_id="1").encode()
            assert (await wx.post_raw(params, body))[0] == 403
            assert (await wx.post_raw(wx.query(wx.timestamp()), body))[0] == 403
            ts = wx.timestamp()
            aes = wx.query(ts) | {"encrypt_type": "aes", "msg_signature": "0" * 40}
            assert (await wx.post_raw(aes, f"<xml><oops>{NOTE}".encode()))[0] == 400
            assert (await wx.post_raw(aes, b"<xml><Encrypt>QUJD</Encrypt></xml>"))[0] == 403
            entity = f'<!DOCTYPE xml [<!ENTITY a "{NOTE}">]><xml><Content>&a;</Content></xml>'
            assert (await wx.post(entity))[0] == 400
            stranger = wx.query(wx.timestamp(), "oSomeoneElse000000000000004")
            assert (await wx.post_raw(stranger, body))[0] == 403
            verify = wx.query(wx.timestamp()) | {"signature": "0" * 40, "echostr": NOTE}
            async with web_client.get(server.make_url(wechat.PATH), params=verify) as r:
                assert r.status == 403
            # a crash inside a turn, its exception quoting a child's name, a note and the OpenID
            monkeypatch.setattr(Form, "followups", crash)
            for text in ["家访", "陈小树", *CHECKIN]:
                await wx.say(text)
            assert await wx.say("提交") == texts.APOLOGY
            monkeypatch.undo()
            # a turn over the reply budget: its reply goes by customer-service message
            channel, budget = app[wechat.WECHAT_CHANNEL], app[wechat.WECHAT_CHANNEL].reply_budget
            channel.reply_budget = 0.0
            assert (await wx.send("家访")) == (200, "success")
            await wc.eventually(lambda: len(api.texts(wc.OPENID)) == 2)  # "draft kept", list
            channel.reply_budget = budget
            # the reminder, its first try failing
            api.failures.append("http 502")
            assert (await app[JOBS].run(REMIND, clock.now())).queued >= 1
            async with asyncio.timeout(10):  # (the app's own delivery loop runs as well)
                while any(row.status != "sent" for row in wc.outbox_rows(deps)):
                    await app[DELIVERY].run_once()
                    clock.advance(seconds=31)  # past the retry's back-off
            assert len(api.texts(wc.OPENID)) == 3 and api.failures == []
    tokens = [f"stable-{n}" for n in range(1, api.token_calls + 1)]
    with deps.db.begin() as conn:
        submitted = select(func.count()).where(visits.c.status == "submitted")
        assert conn.execute(submitted).scalar_one() == 1  # the crashed one stays a draft
    assert any("turn failed" in r.getMessage() for r in caplog.records)
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert leaks_in(caplog.records, [*secrets, *tokens]) == []


# ---------------------------------------------------------------------------- Feishu
@pytest.fixture
async def feishu_fake(clock: FakeClock) -> AsyncIterator[FakeFeishu]:
    peer = FakeFeishu(
        app_id=fs.APP_ID,
        app_secret=fs.APP_SECRET,
        encrypt_key=fs.ENCRYPT_KEY,
        verification_token=fs.VERIFICATION_TOKEN,
        now=lambda: clock.now().timestamp(),
    )
    await peer.start()
    yield peer
    await peer.close()
    assert peer.problems == []


FEISHU_NEWCOMER = "ou_0123456789abcdef0123456789abcdef"


async def feishu_scenario(
    lark: FakeFeishu,
    bot_app: web.Application,
    push: Callable[[dict[str, object]], Awaitable[object]],
    bot: ChatDriver,
    deps: Deps,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> list[str]:
    """What both Feishu modes go through once the events are in: a check-in with a note,
    binding by code, a crash inside a turn quoting a child, and a reminder whose first send
    fails. Returns what must not be logged."""
    teacher, newcomer = fs.Teacher(), fs.Teacher(FEISHU_NEWCOMER)
    code = await code_for(bot, "T002")
    wrong_code = next(c for c in ALPHABET if c != code[0]) + code[1:]
    quoted = f"周小禾 {CRASH_NOTE} {fs.OPEN_ID}"

    def crash(self: Form, answers: object, today: date) -> list[object]:
        raise RuntimeError(quoted)

    async def say(who: fs.Teacher, text: str) -> str:
        """Push the event; the first reply it gets."""
        before = len(lark.messages)
        await push(who.says(text))
        await lark.wait_for(before + 1)
        await fs.eventually(lambda: all(r.status == "sent" for r in fs.outbox_rows(deps)))
        return lark.messages[before].text

    for text in ["家访", "周小禾", "99", *CHECKIN]:
        await say(teacher, text)
    assert "已提交 周小禾" in await say(teacher, "提交")
    assert await say(newcomer, f"绑定 T002 {wrong_code}") == texts.BIND_WRONG
    assert (await say(newcomer, f"绑定 T002 {code.lower()}")).startswith("绑定成功")
    monkeypatch.setattr(Form, "followups", crash)
    for text in ["家访", "陈小树", *CHECKIN]:
        await say(teacher, text)
    assert await say(teacher, "提交") == texts.APOLOGY
    monkeypatch.undo()
    # the reminder, its first send failing
    lark.send_errors.append((500, {"code": 1, "msg": f"internal error for {fs.OPEN_ID}"}))
    assert (await bot_app[JOBS].run(REMIND, clock.now())).queued >= 1
    async with asyncio.timeout(10):  # (the app's own delivery loop runs as well)
        while any(row.status != "sent" for row in fs.outbox_rows(deps)):
            await bot_app[DELIVERY].run_once()
            clock.advance(seconds=31)  # past the retry's back-off
    assert lark.send_errors == [] and any(m.receive_id == FEISHU_NEWCOMER for m in lark.messages)
    with deps.db.begin() as conn:
        submitted = select(func.count()).where(visits.c.status == "submitted")
        assert conn.execute(submitted).scalar_one() == 1  # the crashed one stays a draft
    return [*STUDENTS, *STAFF, *ANSWERS, NOTE, OTHER, CRASH_NOTE, fs.OPEN_ID, FEISHU_NEWCOMER,
            "zhang1", code, code.lower(), wrong_code, fs.APP_SECRET, fs.ENCRYPT_KEY,
            fs.VERIFICATION_TOKEN, *lark.issued]  # fmt: skip


async def test_no_personal_data_in_feishu_webhook_logs(
    debug_everything: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    deps: Deps,
    bot: ChatDriver,
    clock: FakeClock,
    feishu_fake: FakeFeishu,
) -> None:
    """Feishu's webhook: the scenario above, and refused callbacks (signatures, bodies that
    are not encrypted, not JSON or not an event, a wrong Verification Token), each quoting a
    note."""
    fs.give_feishu_id(deps)
    lark = feishu_fake
    async with (
        ClientSession() as web_client,
        fs.serving(fs.with_feishu(settings, lark), deps) as fs_server,
    ):

        async def push(payload: dict[str, object]) -> None:
            assert await fs.deliver(web_client, fs_server, lark, payload) == (200, {})

        async def refused(body: bytes, headers: dict[str, str]) -> int:
            return (await fs.post(web_client, fs_server, body, headers))[0]

        secrets = await feishu_scenario(lark, fs_server.app, push, bot, deps, clock, monkeypatch)
        event = fs.message_event(NOTE, event_id="ev-refused")
        body, headers = lark.webhook_request(event)
        assert await refused(body, {**headers, "X-Lark-Signature": "0" * 64}) == 403
        assert await refused(body.replace(b'"}', b'A"}'), headers) == 403
        assert await refused(*lark.webhook_request(event, key="not-our-key")) == 403
        stale = int(clock.now().timestamp()) - 7200
        assert await refused(*lark.webhook_request(event, timestamp=stale)) == 403
        plain = json.dumps(event, ensure_ascii=False).encode()
        assert await refused(plain, fs._signed_body(lark, clock, plain)) == 400
        broken = f'{{"encrypt": "{NOTE}'.encode()
        assert await refused(broken, fs._signed_body(lark, clock, broken)) == 400
        assert await refused(*lark.webhook_request(f"{{{NOTE}")) == 400
        assert await refused(*lark.webhook_request(fs.message_event(NOTE, token="x"))) == 403
        no_sender = fs.message_event(NOTE, event_id="ev-no-sender")
        del no_sender["event"]["sender"]["sender_id"]
        assert await refused(*lark.webhook_request(no_sender)) == 400
        challenge = {"challenge": NOTE, "token": "not-ours", "type": "url_verification"}
        assert await refused(*lark.webhook_request(challenge)) == 403
    assert any("turn failed" in r.getMessage() for r in caplog.records)
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert leaks_in(caplog.records, secrets) == []


async def test_no_personal_data_in_feishu_long_connection_logs(
    debug_everything: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    deps: Deps,
    bot: ChatDriver,
    clock: FakeClock,
    feishu_fake: FakeFeishu,
) -> None:
    """Feishu's long connection: the scenario above, and frames that are not protobuf, events
    that are not JSON or not readable, each quoting a note."""
    fs.give_feishu_id(deps)
    lark = feishu_fake
    async with fs.serving(fs.with_feishu(settings, lark, "ws"), deps) as fs_server:
        secrets = await feishu_scenario(
            lark, fs_server.app, lark.push_event, bot, deps, clock, monkeypatch
        )
        acks = len(lark.acks)
        await lark.send_raw(b"\xff\xff" + NOTE.encode())
        [broken] = lark.data_frames(f"{{{NOTE}".encode(), "ws-broken", 1)
        await lark.send_raw(broken)
        no_sender = fs.message_event(NOTE, event_id="ev-no-sender")
        del no_sender["event"]["sender"]["sender_id"]
        await lark.push_event(no_sender)
        await fs.eventually(lambda: len(lark.acks) == acks + 2)
    assert any("turn failed" in r.getMessage() for r in caplog.records)
    assert any("ignored" in r.getMessage() for r in caplog.records)
    assert leaks_in(caplog.records, secrets) == []
