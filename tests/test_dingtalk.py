"""The DingTalk channel against a local fake DingTalk, through the real app on a loopback port.

Teacher T001 of the demo roster is DingTalk user "dt_zhang". Every test runs on SQLite and on
PostgreSQL (the `deps` fixture); nothing reaches the internet: all base URLs point at the fake.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from bot.app import create_app
from bot.channels import dingtalk
from bot.channels.dingtalk_api import (
    AccessToken,
    GroupRobotSender,
    Http,
    RobotSender,
    epoch_ms,
    from_epoch_ms,
    sign,
)
from bot.channels.dingtalk_stream import Backoff, StreamClient
from bot.core.errors import SendError
from bot.core.types import MessageKind
from bot.deps import Deps
from bot.outbox import OutboxDelivery
from bot.web import DELIVERY
from config.settings import DingTalkSettings, Secret, Settings
from handlers import texts
from storage import outbox
from storage.schema import conversations, inbound_messages, visits
from storage.schema import outbox as outbox_table
from tests.conftest import FakeClock
from tests.fake_dingtalk import FakeDingTalk
from tests.test_conversation import TABLET_VISIT

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "vectors.json"
APP_KEY, APP_SECRET, ROBOT_CODE = "dingapp123", "app-secret-for-tests", "dingrobot123"
USER = "dt_zhang"  # T001's DingTalk userid in the demo roster
CHECKIN = ["家访", "周小禾", *TABLET_VISIT, "提交"]


# ---------------------------------------------------------------- the protocol vectors


def _sign_vectors() -> list[Any]:
    if not VECTORS_PATH.is_file():
        return [pytest.param(None, id="vectors.json-missing")]
    vectors = json.loads(VECTORS_PATH.read_text("utf-8"))["vectors"]
    found = [
        v for v in vectors if v["platform"] == "dingtalk" and v["kind"] == "dingtalk_hmac_sign"
    ]
    return [pytest.param(v, id=v["id"]) for v in found] or [pytest.param(None, id="no-vectors")]


@pytest.mark.parametrize("vector", _sign_vectors())
def test_dingtalk_sign_vectors(vector: dict[str, Any] | None) -> None:
    if vector is None:
        pytest.fail(f"{VECTORS_PATH} is missing or has no DingTalk sign vectors")
    inputs, expected = vector["inputs"], vector["expected"]
    assert sign(inputs["secret"], inputs["timestamp"]) == expected["sign"]
    assert sign(inputs["secret"], int(inputs["timestamp"])) == expected["sign"]
    if "sign_urlencoded" in expected:
        assert (
            quote_plus(sign(inputs["secret"], inputs["timestamp"])) == expected["sign_urlencoded"]
        )


def test_group_webhook_url_is_signed_like_the_vector(clock: FakeClock) -> None:
    [vector] = [
        p.values[0] for p in _sign_vectors() if p.id == "dingtalk_custom_robot_webhook_sign"
    ]
    webhook, secret = Secret("https://oapi/robot/send?access_token=x"), vector["inputs"]["secret"]
    sender = GroupRobotSender(Http(), webhook, Secret(secret), clock)
    clock.current = from_epoch_ms(int(vector["inputs"]["timestamp"]))
    url = str(sender.signed_url(clock.now()))
    assert url.endswith(f"&timestamp=1577262236757&sign={vector['expected']['sign_urlencoded']}")


# ---------------------------------------------------------------- parsing


def test_robot_text_is_trimmed_and_other_types_are_unsupported() -> None:
    base = {"msgId": "m1", "senderStaffId": USER, "conversationType": "2"}
    text = dingtalk.parse_robot_message({**base, "msgtype": "text", "text": {"content": " 家访 "}})
    assert (text.kind, text.text, text.in_group) == (MessageKind.TEXT, "家访", True)
    assert text.inbound().channel == "dingtalk" and text.inbound().message_id == "m1"
    for msgtype in ("picture", "file", "audio", "video", "richText", "someday"):
        parsed = dingtalk.parse_robot_message({**base, "msgtype": msgtype, "content": {}})
        assert parsed.kind is MessageKind.UNSUPPORTED and parsed.text == ""


@pytest.mark.parametrize(
    "payload",
    [
        [1],
        {"msgtype": "text", "text": {"content": "x"}},
        {"msgId": "", "msgtype": "text", "text": {"content": "x"}},
        {"msgId": "m" * 129, "msgtype": "text", "text": {"content": "x"}},
        {"msgId": "m1", "text": {"content": "x"}},
        {"msgId": "m1", "msgtype": "text"},
        {"msgId": "m1", "msgtype": "text", "text": {"content": 5}},
        {"msgId": "m1", "msgtype": "text", "text": {"content": "x"}, "senderStaffId": 7},
    ],
)
def test_unreadable_robot_messages_are_refused(payload: Any) -> None:
    with pytest.raises(dingtalk.BadPayload):
        dingtalk.parse_robot_message(payload)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(autouse=True)
def fast_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StreamClient, "backoff", Backoff(first=0.01, cap=0.05))


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeDingTalk]:
    fake = FakeDingTalk(
        app_key=APP_KEY,
        app_secret=APP_SECRET,
        robot_code=ROBOT_CODE,
        now=lambda: clock.now().timestamp(),
    )
    await fake.start()
    yield fake
    await fake.close()
    assert fake.problems == []


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


def with_dingtalk(settings: Settings, fake: FakeDingTalk, mode: str, **kw: Any) -> Settings:
    conf = DingTalkSettings(
        app_key=APP_KEY,
        app_secret=Secret(APP_SECRET),
        robot_code=ROBOT_CODE,
        mode=mode,
        api_base=fake.base,
        oapi_base=fake.base,
    )
    return replace(settings, dingtalk=conf, **kw)


@asynccontextmanager
async def serving(settings: Settings, deps: Deps) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(settings, deps), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


class Teacher:
    """Builds the robot messages a DingTalk user sends (unique msgIds, a live sessionWebhook)."""

    def __init__(self, fake: FakeDingTalk, clock: FakeClock, user: str | None = USER) -> None:
        self.fake, self.clock, self.user = fake, clock, user
        self.ids = itertools.count(1)

    def message(self, text: str = "", *, msgtype: str = "text", **kw: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "msgtype": msgtype,
            "msgId": f"msg{self.user}{next(self.ids):04d}",
            "createAt": epoch_ms(self.clock.now()),
            "conversationType": "1",
            "conversationId": "cid-1",
            "senderId": "$:LWCP_v1:$abc",
            "senderNick": "张老师",
            "senderCorpId": "dingcorp",
            "chatbotUserId": "$:LWCP_v1:$bot",
            "robotCode": ROBOT_CODE,
            "sessionWebhook": self.fake.session_webhook(),
            "sessionWebhookExpiredTime": epoch_ms(self.clock.now()) + 90 * 60 * 1000,
        }
        if self.user is not None:
            payload["senderStaffId"] = self.user
        if msgtype == "text":
            payload["text"] = {"content": f" {text}"}  # DingTalk's leading space
        else:
            payload["content"] = {"downloadCode": "dc", "pictureDownloadCode": "pdc"}
        return {**payload, **kw}


_STAMPS = itertools.count()  # DingTalk stamps each callback anew: no two share a timestamp


def headers_for(clock: FakeClock, secret: str = APP_SECRET, skew_ms: int = 0) -> dict[str, str]:
    ts = str(epoch_ms(clock.now()) + skew_ms + next(_STAMPS) % 1000)
    return {"timestamp": ts, "sign": sign(secret, ts)}


async def callback(
    http: ClientSession, server: TestServer, payload: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {**headers, "Content-Type": "application/json; charset=utf-8"}
    async with http.post(server.make_url("/dingtalk/callback"), data=data, headers=headers) as r:
        return r.status, await r.json()


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until `check()` holds; a TimeoutError fails the test instead of hanging it."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def count(deps: Deps, table: Any) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def visit_rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(visits)).all())


def outbox_rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all())


def assert_whole_checkin(replies: list[str], deps: Deps) -> None:
    assert "共5名" in replies[0] and "周小禾" in replies[1]
    assert "请核对 周小禾（三年级1班）" in replies[-2]
    assert "已提交 周小禾（三年级1班）" in replies[-1]
    [visit] = visit_rows(deps)
    assert visit.status == "submitted" and visit.method == "电话"
    assert all(row.status == "sent" and row.kind == "reply" for row in outbox_rows(deps))


# ---------------------------------------------------------------- HTTP mode


@pytest.fixture
def http_settings(settings: Settings, fake: FakeDingTalk) -> Settings:
    return with_dingtalk(settings, fake, "http")


async def test_whole_checkin_over_http_mode(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    teacher = Teacher(fake, clock)
    async with serving(http_settings, deps) as server:
        for n, text in enumerate(CHECKIN, start=1):
            status, _ = await callback(http, server, teacher.message(text), headers_for(clock))
            assert status == 200
            await fake.wait_for(fake.batch_sends, n)
        for _ in range(200):  # the last delivery is recorded just after the fake received it
            if all(row.status == "sent" for row in outbox_rows(deps)):
                break
            await asyncio.sleep(0.01)
    # HTTP mode never trusts the sessionWebhook in the (unsigned) body: replies go by batchSend
    # to the sender, through the outbox.
    assert_whole_checkin(fake.texts(fake.batch_sends), deps)
    assert fake.session_replies == [] and fake.opens == 0  # no Stream connection in HTTP mode
    assert "周小禾" not in caplog.text and "平板" not in caplog.text  # no personal data in logs


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("none", 401),
        ("word-timestamp", 401),
        ("no-sign", 401),
        ("no-timestamp", 401),
        ("wrong-secret", 403),
        ("tampered", 403),
        ("two-hours-old", 403),
        ("two-hours-ahead", 403),
        ("not-a-number", 401),
    ],
)
async def test_bad_or_missing_signature_is_refused_and_changes_nothing(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession, headers: str, status: int,
) -> None:  # fmt: skip
    good = headers_for(clock)
    cases = {
        "none": {},
        "word-timestamp": {"timestamp": "now", "sign": good["sign"]},
        "no-sign": {"timestamp": good["timestamp"]},
        "no-timestamp": {"sign": good["sign"]},
        "wrong-secret": headers_for(clock, secret="another-secret"),
        "tampered": {"timestamp": str(int(good["timestamp"]) + 1), "sign": good["sign"]},
        "two-hours-old": headers_for(clock, skew_ms=-2 * 3600 * 1000),
        "two-hours-ahead": headers_for(clock, skew_ms=2 * 3600 * 1000),
        "not-a-number": {"timestamp": "12ab", "sign": sign(APP_SECRET, "12ab")},
    }
    async with serving(http_settings, deps) as server:
        got, body = await callback(
            http, server, Teacher(fake, clock).message("家访"), cases[headers]
        )
    assert got == status and "sign" in body["error"]
    assert count(deps, conversations) == 0 and outbox_rows(deps) == []
    assert fake.session_replies == [] and fake.batch_sends == []


async def test_an_hour_old_timestamp_is_still_accepted(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession,
) -> None:  # fmt: skip
    async with serving(http_settings, deps) as server:
        headers = headers_for(clock, skew_ms=-3600 * 1000 + 1000)
        status, _ = await callback(http, server, Teacher(fake, clock).message("家访"), headers)
        await fake.wait_for(fake.batch_sends, 1)
    assert status == 200 and "共5名" in fake.texts(fake.batch_sends)[0]


async def test_a_replayed_timestamp_and_sign_are_refused_and_change_nothing(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession,
) -> None:  # fmt: skip
    teacher = Teacher(fake, clock)
    async with serving(http_settings, deps) as server:
        await callback(http, server, teacher.message("家访"), headers_for(clock))
        await callback(http, server, teacher.message("周小禾"), headers_for(clock))
        await fake.wait_for(fake.batch_sends, 2)
        captured = headers_for(clock)
        status, _ = await callback(http, server, teacher.message("3"), captured)
        assert status == 200
        await fake.wait_for(fake.batch_sends, 3)
        await eventually(lambda: {r.status for r in outbox_rows(deps)} == {"sent"})
        # 50 minutes later someone sends the captured header again, with a body of their own
        clock.advance(minutes=50)
        status, body = await callback(http, server, teacher.message("取消"), captured)
        assert status == 403 and "already used" in body["error"]
        # a second instance on the same database refuses it too
        async with serving(http_settings, deps) as other:
            status, _ = await callback(http, other, teacher.message("取消"), captured)
            assert status == 403
        await asyncio.sleep(0.1)
    # the list, the first question, the second one; the teacher's draft is still there
    assert len(fake.batch_sends) == 3 and "【第2题/" in fake.texts(fake.batch_sends)[2]
    [visit] = visit_rows(deps)
    assert visit.status == "draft" and visit.answers == {"method": "电话"}


async def test_used_signs_are_forgotten_once_their_hour_is_over(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession,
) -> None:  # fmt: skip
    def remembered() -> int:
        with deps.db.begin() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(inbound_messages)
                    .where(inbound_messages.c.channel == dingtalk.SIGN_CHANNEL)
                ).scalar_one()
            )

    teacher = Teacher(fake, clock)
    async with serving(http_settings, deps) as server:
        for _ in range(3):
            await callback(http, server, teacher.message(msgtype="picture"), headers_for(clock))
        assert remembered() == 3
        clock.advance(minutes=66)
        await callback(http, server, teacher.message(msgtype="picture"), headers_for(clock))
        assert remembered() == 1  # the three old ones could not pass the ±1 hour check anyway


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        # 10,000 levels (~50 KB): json.loads alone would die of a RecursionError (HTTP 500)
        pytest.param(b"[" * 10_000 + b"]" * 10_000, "nested deeper than 32", id="deep-list"),
        pytest.param(
            b'{"msgId": "m1", "msgtype": "text", "n": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
            "nested deeper than 32",
            id="deep-object-in-a-message",
        ),
        pytest.param(b"[" * 33 + b"]" * 33, "nested deeper than 32", id="33-levels"),
        (b'{"msgtype": "text", "text": {"content": "x"}}', "msgId"),
        (b'{"msgId": "m1", "msgtype": "text", "text": {}}', "text.content"),
    ],
)
async def test_malformed_bodies_are_400(
    http_settings: Settings, deps: Deps, clock: FakeClock, http: ClientSession,
    raw: bytes, problem: str,
) -> None:  # fmt: skip
    async with serving(http_settings, deps) as server:
        status, body = await callback(http, server, raw, headers_for(clock))
    assert status == 400 and problem in body["error"]
    assert count(deps, conversations) == 0


async def test_picture_gets_please_reply_in_text(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession,
) -> None:  # fmt: skip
    teacher = Teacher(fake, clock)
    async with serving(http_settings, deps) as server:
        for msgtype in ("picture", "file", "audio"):
            status, _ = await callback(
                http, server, teacher.message(msgtype=msgtype), headers_for(clock)
            )
            assert status == 200
        await fake.wait_for(fake.batch_sends, 3)
    assert all(texts.TEXT_ONLY in t for t in fake.texts(fake.batch_sends))
    assert len(fake.batch_sends) == 3


async def test_sender_without_a_staff_record_gets_the_register_reply(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession,
) -> None:  # fmt: skip
    stranger = Teacher(fake, clock, user="dt_stranger")
    outsider = Teacher(fake, clock, user=None)  # no senderStaffId: outside the organisation
    async with serving(http_settings, deps) as server:
        await callback(http, server, stranger.message("家访"), headers_for(clock))
        status, _ = await callback(http, server, outsider.message("家访"), headers_for(clock))
        await fake.wait_for(fake.batch_sends, 1)
    assert status == 200
    assert fake.texts(fake.batch_sends) == [texts.NOT_REGISTERED.format(user_id="dt_stranger")]
    assert count(deps, conversations) == 0


async def test_same_msg_id_twice_is_handled_and_answered_once_even_after_a_restart(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession,
) -> None:  # fmt: skip
    teacher = Teacher(fake, clock)
    answer = teacher.message("3")
    async with serving(http_settings, deps) as server:
        await callback(http, server, teacher.message("周小禾"), headers_for(clock))
        for _ in range(2):
            status, _ = await callback(http, server, answer, headers_for(clock))
            assert status == 200
        await fake.wait_for(fake.batch_sends, 2)
    async with serving(http_settings, deps) as server:  # a restarted process
        status, _ = await callback(http, server, answer, headers_for(clock))
        assert status == 200
    [visit] = visit_rows(deps)
    assert visit.answers == {"method": "电话"}
    assert len(fake.batch_sends) == 2 and "【第2题/" in fake.texts(fake.batch_sends)[1]
    assert len(outbox_rows(deps)) == 2 and fake.session_replies == []


@pytest.mark.parametrize(
    "change",
    ["expired", "no-webhook", "webhook-fails", "webhook-errcode", "foreign-webhook", "group"],
)
async def test_replies_fall_back_to_the_robot_1to1_api(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession, change: str,
) -> None:  # fmt: skip
    teacher = Teacher(fake, clock)
    now = epoch_ms(clock.now())
    overrides: dict[str, Any] = {  # type: ignore[assignment]
        "expired": {"sessionWebhookExpiredTime": now - 1},
        "no-webhook": {"sessionWebhook": None, "sessionWebhookExpiredTime": None},
        "foreign-webhook": {"sessionWebhook": "http://127.0.0.1:1/robot/sendBySession?s=1"},
        "group": {"conversationType": "2"},
    }.get(change, {})
    if change == "webhook-fails":
        fake.session_errors.append((502, {}))
    if change == "webhook-errcode":
        fake.session_errors.append((200, {"errcode": 300001, "errmsg": "session expired"}))
    async with serving(http_settings, deps) as server:
        message = teacher.message("家访", **overrides)
        status, _ = await callback(http, server, message, headers_for(clock))
        assert status == 200
        [sent] = await fake.wait_for(fake.batch_sends, 1)
        await asyncio.sleep(0.05)  # let the outbox record the delivery
    assert fake.session_replies == []
    assert sent.body["userIds"] == [USER] and sent.body["msgKey"] == "sampleText"
    assert sent.headers["token"] == "token-1"
    assert "共5名" in fake.texts([sent])[0]
    [row] = outbox_rows(deps)
    assert (row.channel, row.recipient, row.status) == ("dingtalk", USER, "sent")


async def test_log_lines_escape_client_supplied_ids_and_never_name_the_sender(
    http_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    # U+2028 and U+0085 end a line for many log viewers; C0 controls are refused outright
    outsider = Teacher(fake, clock, user=None).message("家访", msgId="m-1\u2028ERROR forged")
    again = Teacher(fake, clock).message("家访", msgId="m-2\u2029ERROR forged too")
    async with serving(http_settings, deps) as server:
        assert (await callback(http, server, outsider, headers_for(clock)))[0] == 200
        for _ in range(2):  # the second time it "was answered before"
            assert (await callback(http, server, again, headers_for(clock)))[0] == 200
        for control in ("m-3\n2026-03-02 ERROR forged", "m-4\x00", "m-5\x85"):
            status, body = await callback(
                http, server, Teacher(fake, clock).message("家访", msgId=control),
                headers_for(clock),
            )  # fmt: skip
            assert status == 400 and "control characters" in body["error"]
        await fake.wait_for(fake.batch_sends, 1)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bot."))
    assert "msg_id='m-1\\u2028ERROR forged' has no senderStaffId" in ours
    assert "msg_id='m-2\\u2029ERROR forged too' was answered before" in ours
    assert not any(c in ours for c in "\u2028\u2029\x00\x85") and "m-3" not in ours
    assert USER not in ours and "家访" not in ours and "token-1" not in ours
    assert len(fake.batch_sends) == 1


async def test_stream_mode_has_no_callback_route(
    settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock, http: ClientSession
) -> None:
    async with serving(with_dingtalk(settings, fake, "stream"), deps) as server:
        status, _ = await callback(
            http, server, Teacher(fake, clock).message("家访"), headers_for(clock)
        )
    assert status == 404


# ---------------------------------------------------------------- Stream mode


@pytest.fixture
def stream_settings(settings: Settings, fake: FakeDingTalk) -> Settings:
    return with_dingtalk(settings, fake, "stream")


async def say(fake: FakeDingTalk, payload: dict[str, Any]) -> str:
    """Push a robot message over Stream; the reply that arrives at the sessionWebhook."""
    before = len(fake.session_replies)
    await fake.push_robot(payload)
    replies = await fake.wait_for(fake.session_replies, before + 1)
    return fake.texts(replies)[-1]


async def test_whole_checkin_over_stream_mode(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    teacher = Teacher(fake, clock)
    async with serving(stream_settings, deps):
        replies = [await say(fake, teacher.message(text)) for text in CHECKIN]
        assert len(fake.acks) == len(CHECKIN)
    assert_whole_checkin(replies, deps)
    assert fake.opens == 1 and fake.connections == 1
    assert "周小禾" not in caplog.text and "平板" not in caplog.text


async def test_stream_answers_pings_and_reconnects_when_told(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    ping = {
        "specVersion": "1.0",
        "type": "SYSTEM",
        "headers": {"topic": "ping", "messageId": "ping-1", "contentType": "application/json"},
        "data": '{"opaque":"d0b5c1"}',
    }
    disconnect = {
        "specVersion": "1.0",
        "type": "SYSTEM",
        "headers": {"topic": "disconnect", "messageId": "bye-1"},
        "data": '{"reason":"connection is expired"}',
    }
    async with serving(stream_settings, deps):
        ack = await fake.push(ping)
        assert ack["code"] == 200 and ack["headers"]["messageId"] == "ping-1"
        assert ack["data"] == '{"opaque":"d0b5c1"}'
        await fake.send(json.dumps(disconnect))
        await fake.wait_connected(connections=2)  # a new ticket, a new connection
        assert "共5名" in await say(fake, Teacher(fake, clock).message("家访"))
    assert fake.opens == 2 and "bye-1" not in [a["headers"]["messageId"] for a in fake.acks]


async def test_stream_survives_a_socket_dropped_mid_frame(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    teacher = Teacher(fake, clock)
    async with serving(stream_settings, deps):
        await say(fake, teacher.message("家访"))
        await fake.drop()
        await fake.wait_connected(connections=2)
        assert "周小禾" in await say(fake, teacher.message("周小禾"))
        await fake.drop()
        await fake.wait_connected(connections=3)
        assert "【第2题/" in await say(fake, teacher.message("3"))


async def test_stream_survives_a_gateway_outage_while_the_server_keeps_serving(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    http: ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    fake.refuse_open = 10**6  # down until told otherwise
    async with serving(stream_settings, deps) as server:
        while fake.refused < 3:
            async with http.get(server.make_url("/healthz")) as r:
                assert r.status == 200
            await asyncio.sleep(0.01)
        assert fake.connections == 0
        fake.refuse_open = 0  # the gateway is back
        await fake.wait_connected()
        assert "共5名" in await say(fake, Teacher(fake, clock).message("家访"))
    assert "gateway refused (HTTP 503)" in caplog.text


async def test_stream_redelivery_of_one_msg_id_is_acked_and_answered_once(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    teacher = Teacher(fake, clock)
    async with serving(stream_settings, deps):
        await say(fake, teacher.message("周小禾"))
        answer = teacher.message("3")
        await say(fake, answer)
        await fake.push_robot(answer)  # the same msgId, pushed again: acked by push_robot
        await fake.push_robot(answer)
        await say(fake, teacher.message("继续"))  # later traffic is still answered
    assert len(fake.acks) == 5 and len(fake.session_replies) == 3
    assert visit_rows(deps)[0].answers == {"method": "电话"}


async def test_stream_shrugs_off_odd_frames(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    teacher = Teacher(fake, clock)

    def frame(kind: str, topic: str, mid: str, data: str = "{}") -> dict[str, Any]:
        return {"type": kind, "headers": {"topic": topic, "messageId": mid}, "data": data}

    async with serving(stream_settings, deps):
        await fake.send("this is not json")
        await fake.send(json.dumps({"type": "CALLBACK"}))
        unknown = await fake.push(frame("CALLBACK", "/v1.0/card/instances/callback", "c-1"))
        assert unknown["code"] == 404
        event = await fake.push(frame("EVENT", "chat_update", "e-1"))
        assert event["code"] == 200 and json.loads(event["data"])["status"] == "SUCCESS"
        garbled = await fake.push(frame("CALLBACK", "/v1.0/im/bot/messages/get", "r-1", "{oops"))
        assert garbled["code"] == 200
        picture = await say(fake, teacher.message(msgtype="picture"))
        assert texts.TEXT_ONLY in picture
        assert "共5名" in await say(fake, teacher.message("家访"))
    assert fake.connections == 1


async def test_stream_ignores_absurdly_nested_frames_and_keeps_the_connection(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    deep_data = '{"msgId": "m-deep", "a":' * 10_000 + "1" + "}" * 10_000
    robot_frame = {
        "type": "CALLBACK",
        "headers": {"topic": "/v1.0/im/bot/messages/get", "messageId": "r-\n-deep"},
        "data": deep_data,
    }
    async with serving(stream_settings, deps):
        await fake.send("[" * 10_000 + "]" * 10_000)  # no messageId can be read: no ack
        ack = await fake.push(robot_frame)  # acked, then its data is refused
        assert ack["code"] == 200
        assert "共5名" in await say(fake, Teacher(fake, clock).message("家访"))
    assert fake.connections == 1 and fake.opens == 1
    assert "robot frame 'r-\\n-deep' ignored: JSON nested deeper than 32" in caplog.text
    assert "RecursionError" not in caplog.text


@dataclass(frozen=True)
class RecordingBackoff(Backoff):
    """The real backoff, remembering each delay the client slept before it tried again."""

    slept: list[float] = field(default_factory=list)

    def after(self, delay: float) -> float:
        self.slept.append(delay)
        return super().after(delay)


async def test_stream_backoff_starts_over_once_a_connection_was_established(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, monkeypatch: pytest.MonkeyPatch
) -> None:
    backoff = RecordingBackoff(first=0.001, cap=0.05)
    monkeypatch.setattr(StreamClient, "backoff", backoff)
    fake.refuse_open = 8
    async with serving(stream_settings, deps):
        await fake.wait_connected()
        assert backoff.slept == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05]
        await fake.drop()  # the connection dies before it delivered a single frame
        await fake.wait_connected(connections=2)
    assert backoff.slept[8] == 0.001  # the outage is over: the next wait is the first one


# ---------------------------------------------------------------- proactive 1:1 (batchSend)


@pytest.fixture
async def robot(fake: FakeDingTalk, clock: FakeClock) -> AsyncIterator[RobotSender]:
    client = Http()
    token = AccessToken(client, fake.base, APP_KEY, Secret(APP_SECRET), clock)
    yield RobotSender(client, token, fake.base, ROBOT_CODE)
    await client.close()


async def test_token_is_cached_refreshed_before_expiry_and_after_a_401(
    robot: RobotSender, fake: FakeDingTalk, clock: FakeClock
) -> None:
    await robot.send(USER, "提醒一")
    await robot.send(USER, "提醒二")
    assert fake.issued == ["token-1"]
    clock.advance(seconds=7200 - 299)  # inside the five-minute margin
    await robot.send(USER, "提醒三")
    assert fake.issued == ["token-1", "token-2"]
    fake.revoked.add("token-2")
    await robot.send(USER, "提醒四")
    assert fake.issued[-1] == "token-3"
    used = [d.headers["token"] for d in fake.batch_sends]
    assert used == ["token-1", "token-1", "token-2", "token-3"]
    assert fake.texts(fake.batch_sends) == ["提醒一", "提醒二", "提醒三", "提醒四"]


async def test_batches_never_exceed_twenty_users(robot: RobotSender, fake: FakeDingTalk) -> None:
    users = [f"u{i}" for i in range(45)]
    result = await robot.send_markdown(users, "家访提醒", "**请完成家访**")
    assert [len(d.body["userIds"]) for d in fake.batch_sends] == [20, 20, 5]
    assert [u for d in fake.batch_sends for u in d.body["userIds"]] == users
    assert fake.batch_sends[0].body["msgKey"] == "sampleMarkdown"
    assert json.loads(fake.batch_sends[0].body["msgParam"]) == {
        "title": "家访提醒",
        "text": "**请完成家访**",
    }
    assert result.invalid == () and result.throttled == ()


@pytest.mark.parametrize(
    ("status", "error", "permanent", "retry_after"),
    [
        (500, {"code": "ServiceUnavailable"}, False, None),
        (503, {}, False, None),
        (429, {"code": "Throttling"}, False, 60.0),
        (403, {"code": "Forbidden.AccessDenied.QpsLimitForApi"}, False, 60.0),
        # set-up mistakes an admin can fix: kept queued, retried every 10 minutes
        (400, {"code": "invalidParameter.robotCode", "message": "robot 不存在"}, False, 600.0),
        (403, {"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied"}, False, 600.0),
        (404, {"code": "resource.notFound"}, True, None),
    ],
)
async def test_batch_send_errors_are_transient_or_permanent(
    robot: RobotSender, fake: FakeDingTalk, status: int, error: dict[str, Any],
    permanent: bool, retry_after: float | None,
) -> None:  # fmt: skip
    fake.batch_errors.append((status, error))
    with pytest.raises(SendError) as caught:
        await robot.send(USER, "提醒")
    assert caught.value.permanent is permanent and caught.value.retry_after == retry_after
    assert "提醒" not in caught.value.reason


async def test_unknown_or_flow_controlled_users(robot: RobotSender, fake: FakeDingTalk) -> None:
    fake.batch_results.append({"invalidStaffIdList": ["ghost"]})
    with pytest.raises(SendError) as caught:
        await robot.send("ghost", "提醒")
    assert caught.value.permanent
    fake.batch_results.append({"flowControlledStaffIdList": [USER]})
    with pytest.raises(SendError) as caught:
        await robot.send(USER, "提醒")
    assert not caught.value.permanent and caught.value.retry_after == 60


async def test_network_failures_and_a_bad_secret_are_transient(clock: FakeClock) -> None:
    client = Http()
    try:
        dead = "http://127.0.0.1:1"  # nothing listens on port 1
        token = AccessToken(client, dead, APP_KEY, Secret("x"), clock)
        robot = RobotSender(client, token, dead, "r")
        with pytest.raises(SendError) as caught:
            await robot.send(USER, "提醒")
        assert not caught.value.permanent and caught.value.reason.startswith("network")
    finally:
        await client.close()


async def test_a_send_that_timed_out_after_dingtalk_took_it_is_sent_again(
    deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    """At least once: batchSend has no idempotency key, so an unknown outcome means a resend."""
    client = Http(ClientTimeout(total=0.3))
    robot = RobotSender(
        client, AccessToken(client, fake.base, APP_KEY, Secret(APP_SECRET), clock), fake.base,
        ROBOT_CODE,
    )  # fmt: skip
    delivery = OutboxDelivery(deps.outbox, {"dingtalk": robot}, clock)
    now = clock.now()
    await deps.db.run(
        lambda conn: outbox.enqueue(
            conn, key="reminder:T001:2026-03-02", channel="dingtalk", recipient=USER,
            kind="reminder", body="您有5名学生待家访", not_before=now, now=now,
        )
    )  # fmt: skip
    fake.hold_next_batch = 1.0  # delivered, then no answer within the client's timeout
    try:
        await delivery.run_once()
        [row] = outbox_rows(deps)
        assert row.status == "pending" and row.last_error.endswith("outcome unknown")
        assert len(fake.batch_sends) == 1  # the teacher has it already
        clock.advance(seconds=31)
        await delivery.run_once()
    finally:
        await client.close()
    assert fake.texts(fake.batch_sends) == ["您有5名学生待家访"] * 2
    assert [r.status for r in outbox_rows(deps)] == ["sent"]


ODD_ANSWERS = [
    pytest.param(b"<html>upstream ok</html>", id="html"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="a-list"),
    pytest.param(b'"ok"', id="a-string"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"result": "ok"}', id="other-fields"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, id="nested-10000-deep"),
]


@pytest.mark.parametrize("odd", ODD_ANSWERS)
async def test_a_batch_send_with_an_odd_success_body_is_retried_not_counted_as_sent(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    caplog: pytest.LogCaptureFixture, odd: bytes,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    fake.odd_answers["batchSend"] = [odd]
    now = clock.now()
    async with serving(stream_settings, deps) as server:
        await deps.db.run(
            lambda conn: outbox.enqueue(
                conn, key="reminder:T001:2026-03-02", channel="dingtalk", recipient=USER,
                kind="reminder", body="您有5名学生待家访", not_before=now, now=now,
            )
        )  # fmt: skip
        delivery = server.app[DELIVERY]
        delivery.poke()
        await eventually(lambda: outbox_rows(deps)[0].last_error is not None)
        [row] = outbox_rows(deps)
        assert row.status == "pending" and "unexpected answer" in row.last_error
        clock.advance(seconds=31)
        delivery.poke()
        [sent] = await fake.wait_for(fake.batch_sends, 1)
        await eventually(lambda: outbox_rows(deps)[0].status == "sent")
    assert fake.texts([sent]) == ["您有5名学生待家访"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if w.startswith("dingtalk batchSend: HTTP 200")]) == 1
    for secret in (USER, "token-1", "您有5名"):
        assert secret not in caplog.text


@pytest.mark.parametrize("odd", ODD_ANSWERS)
async def test_a_session_webhook_with_an_odd_success_body_falls_back_to_batch_send(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock,
    caplog: pytest.LogCaptureFixture, odd: bytes,
) -> None:  # fmt: skip
    fake.odd_answers["session"] = [odd]
    async with serving(stream_settings, deps):
        await fake.push_robot(Teacher(fake, clock).message("家访"))
        [sent] = await fake.wait_for(fake.batch_sends, 1)
        await eventually(lambda: outbox_rows(deps)[0].status == "sent")
    assert fake.session_replies == [] and "共5名" in fake.texts([sent])[0]
    assert "dingtalk sessionWebhook: HTTP 200 with" in caplog.text


@pytest.mark.parametrize("odd", ODD_ANSWERS)
async def test_odd_success_bodies_from_the_group_robot_and_the_token_are_transient(
    fake: FakeDingTalk, clock: FakeClock, robot: RobotSender,
    caplog: pytest.LogCaptureFixture, odd: bytes,
) -> None:  # fmt: skip
    fake.odd_answers["group"] = [odd]
    sender = group_sender(fake, clock)
    try:
        with pytest.raises(SendError) as caught:
            await sender.send("default", "日报")
    finally:
        await sender.http.close()
    assert not caught.value.permanent and "unexpected answer" in caught.value.reason
    fake.odd_answers["token"] = [odd]
    with pytest.raises(SendError) as caught:
        await robot.send(USER, "提醒")
    assert not caught.value.permanent and "unexpected answer" in caught.value.reason
    assert fake.batch_sends == [] and fake.group_messages == []
    await robot.send(USER, "提醒")  # the next try fetches a token and sends
    assert len(fake.batch_sends) == 1
    assert "dingtalk group robot: HTTP 200" in caplog.text
    assert "dingtalk access token: HTTP 200" in caplog.text
    assert "grouptoken" not in caplog.text and APP_SECRET not in caplog.text


async def test_reminders_through_the_outbox_reach_dingtalk(
    stream_settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    now = clock.now()
    fake.batch_errors.append((503, {}))  # the first try fails; the outbox retries
    async with serving(stream_settings, deps) as server:
        await deps.db.run(
            lambda conn: outbox.enqueue(
                conn, key="reminder:T001:2026-03-02", channel="dingtalk", recipient=USER,
                kind="reminder", body="您有5名学生待家访", not_before=now, now=now,
            )
        )  # fmt: skip
        delivery = server.app[DELIVERY]
        delivery.poke()
        while outbox_rows(deps)[0].last_error is None:  # the first try failed and was recorded
            await asyncio.sleep(0.01)
        clock.advance(seconds=31)
        delivery.poke()
        [sent] = await fake.wait_for(fake.batch_sends, 1)
        await asyncio.sleep(0.05)
    assert fake.texts([sent]) == ["您有5名学生待家访"]
    assert [(r.status, r.attempts) for r in outbox_rows(deps)] == [("sent", 2)]


# ---------------------------------------------------------------- the coordinators' group robot


def group_sender(
    fake: FakeDingTalk, clock: FakeClock, secret: str | None = "SECgroup"
) -> GroupRobotSender:
    return GroupRobotSender(
        Http(), Secret(fake.group_webhook()), Secret(secret) if secret else None, clock
    )


async def test_group_digests_are_signed_and_held_to_twenty_a_minute(
    deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    sender = group_sender(fake, clock)
    delivery = OutboxDelivery(deps.outbox, {"dingtalk_group": sender}, clock)
    now = clock.now()
    for i in range(25):

        def put(conn: Connection, i: int = i) -> bool:
            return outbox.enqueue(
                conn, key=f"digest:{i}", channel="dingtalk_group", recipient="default",
                kind="digest", body=f"日报 {i}", not_before=now, now=now,
            )  # fmt: skip

        await deps.db.run(put)
    try:
        await delivery.run_once()
        assert len(fake.group_messages) == 20
        clock.advance(seconds=59)
        await delivery.run_once()
        assert len(fake.group_messages) == 20  # still inside the minute: held back, not lost
        clock.advance(seconds=2)
        await delivery.run_once()
    finally:
        await sender.http.close()
    assert fake.texts(fake.group_messages) == [f"日报 {i}" for i in range(25)]
    assert fake.group_rejects == []  # the fake's 130101 was never needed
    assert {r.status for r in outbox_rows(deps)} == {"sent"}


async def test_send_too_fast_from_dingtalk_backs_off_a_minute(
    fake: FakeDingTalk, clock: FakeClock
) -> None:
    first, second = group_sender(fake, clock), group_sender(fake, clock)  # e.g. two processes
    try:
        for i in range(20):
            await first.send("default", f"日报 {i}")
        with pytest.raises(SendError) as caught:
            await second.send("default", "日报 20")
        assert not caught.value.permanent and caught.value.retry_after == 60
        assert fake.group_rejects == [130101]
        with pytest.raises(SendError):  # blocked locally now: DingTalk is not asked again
            await second.send("default", "日报 20")
        assert fake.group_rejects == [130101]
        clock.advance(seconds=61)
        await second.send("default", "日报 20")
    finally:
        await first.http.close()
        await second.http.close()
    assert len(fake.group_messages) == 21


async def test_group_robot_without_or_with_a_wrong_secret(
    fake: FakeDingTalk, clock: FakeClock
) -> None:
    fake.group_secret = None
    plain = group_sender(fake, clock, secret=None)
    assert "sign=" not in str(plain.signed_url(clock.now()))
    try:
        await plain.send("default", "日报")
        fake.group_secret = "SECgroup"
        wrong = group_sender(fake, clock, secret="SECwrong")
        with pytest.raises(SendError) as caught:
            await wrong.send("default", "日报")
        assert caught.value.permanent and fake.group_rejects == [310000]
        await wrong.http.close()
    finally:
        await plain.http.close()
    assert len(fake.group_messages) == 1


async def test_the_app_wires_the_group_robot_as_dingtalk_group(
    settings: Settings, deps: Deps, fake: FakeDingTalk, clock: FakeClock
) -> None:
    configured = replace(
        settings,
        dingtalk_digest_webhook=Secret(fake.group_webhook()),
        dingtalk_digest_secret=Secret("SECgroup"),
    )
    now = clock.now()
    async with serving(configured, deps) as server:
        await deps.db.run(
            lambda conn: outbox.enqueue(
                conn, key="digest:2026-03-02", channel="dingtalk_group", recipient="default",
                kind="digest", body="今日家访 3/5", not_before=now, now=now,
            )
        )  # fmt: skip
        server.app[DELIVERY].poke()
        [message] = await fake.wait_for(fake.group_messages, 1)
    assert message.body == {"msgtype": "text", "text": {"content": "今日家访 3/5"}}
