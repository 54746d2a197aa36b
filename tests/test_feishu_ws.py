"""Feishu long-connection mode (`FEISHU_MODE=ws`) against a fake gateway, through the real app.

The fake speaks protobuf with lark-oapi's generated `pbbp2.Frame`, so our hand-written codec is
checked against an independent one on every frame. Every app test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from bot.app import create_app
from bot.channels import feishu, feishu_ws
from bot.channels.dingtalk_stream import Backoff
from bot.channels.feishu_ws import Frame, FrameError, WsClient
from bot.deps import Deps
from config.settings import Settings
from tests.conftest import FakeClock
from tests.fake_feishu import SERVICE_ID, FakeFeishu
from tests.lark_kit import lark_frame_class
from tests.test_feishu import (
    APP_ID,
    APP_SECRET,
    CHECKIN,
    ENCRYPT_KEY,
    OPEN_ID,
    VERIFICATION_TOKEN,
    SlowConversations,
    Teacher,
    assert_whole_checkin,
    eventually,
    give_feishu_id,
    outbox_rows,
    serving,
    visit_rows,
    with_feishu,
)

# ---------------------------------------------------------------- the frame codec

FRAMES = [
    Frame(),
    Frame(seq_id=1, log_id=2, service=SERVICE_ID, method=0, headers=[("type", "ping")]),
    Frame(
        seq_id=2**64 - 1,
        log_id=12345678901234,
        service=-5,
        method=1,
        headers=[
            ("type", "event"),
            ("message_id", "m1"),
            ("sum", "2"),
            ("seq", "0"),
            ("trace_id", "t"),
            ("键", "值"),
        ],
        payload_encoding="json",
        payload_type="event",
        payload='{"text":"家访"}'.encode(),
        log_id_new="log-new",
    ),
    Frame(method=1, payload=bytes(range(256)) * 40),
]


def _lark(frame: Frame) -> Any:
    lark = lark_frame_class()()
    lark.SeqID, lark.LogID, lark.service, lark.method = (
        frame.seq_id, frame.log_id, frame.service, frame.method,
    )  # fmt: skip
    for key, value in frame.headers:
        header = lark.headers.add()
        header.key, header.value = key, value
    if frame.payload_encoding:
        lark.payload_encoding = frame.payload_encoding
    if frame.payload_type:
        lark.payload_type = frame.payload_type
    if frame.payload:
        lark.payload = frame.payload
    if frame.log_id_new:
        lark.LogIDNew = frame.log_id_new
    return lark


@pytest.mark.parametrize("frame", FRAMES)
def test_our_frames_read_as_lark_oapi_writes_them_and_back(frame: Frame) -> None:
    theirs = _lark(frame)
    assert Frame.decode(theirs.SerializeToString()) == frame
    parsed = lark_frame_class()()
    parsed.ParseFromString(frame.encode())
    assert parsed == theirs
    assert Frame.decode(frame.encode()) == frame


def test_unknown_fields_are_skipped() -> None:
    extra = b"\x50\x07" + b"\x5d\x00\x00\x00\x00" + b"\x61" + b"\x00" * 8 + b"\x6a\x01x"
    frame = Frame(seq_id=3, method=1, headers=[("type", "event")], payload=b"{}")
    assert Frame.decode(frame.encode() + extra) == frame


@pytest.mark.parametrize(
    "data",
    [b"\x08", b"\x08\xff", b"\x42\x05abc", b"\x2a\x03\x0a\x05a", b"\x0b", b"\x00\x01",
     b"\x08" + b"\xff" * 11, b"\x32\x01\xff"],
)  # fmt: skip
def test_broken_frames_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        Frame.decode(data)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def fast_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WsClient, "backoff", Backoff(first=0.01, cap=0.05))


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu(
        app_id=APP_ID,
        app_secret=APP_SECRET,
        encrypt_key=ENCRYPT_KEY,
        verification_token=VERIFICATION_TOKEN,
        now=lambda: clock.now().timestamp(),
    )
    await fake.start()
    yield fake
    await fake.close()
    assert fake.problems == []


@pytest.fixture
def ws_settings(settings: Settings, fake: FakeFeishu, deps: Deps) -> Settings:
    give_feishu_id(deps)
    return with_feishu(settings, fake, "ws")


async def say(fake: FakeFeishu, payload: dict[str, Any], **kw: Any) -> str:
    """Push an event over the long connection; the reply that then arrives."""
    before = len(fake.messages)
    await fake.push_event(payload, **kw)
    await fake.wait_for(before + 1)
    return fake.messages[before].text


# ---------------------------------------------------------------- the long connection


async def test_whole_checkin_over_the_long_connection(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    teacher = Teacher()
    async with serving(ws_settings, deps):
        replies = [await say(fake, teacher.says(text)) for text in CHECKIN]
        await eventually(lambda: all(row.status == "sent" for row in outbox_rows(deps)))
    assert_whole_checkin(replies, deps)
    assert len(fake.acks) == len(CHECKIN) and fake.opens == 1 and fake.connections == 1
    assert {m.receive_id for m in fake.messages} == {OPEN_ID}
    for secret in ("周小禾", "平板", OPEN_ID, APP_SECRET):
        assert secret not in caplog.text


async def test_a_payload_split_over_frames_is_put_together_and_acked_once(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    async with serving(ws_settings, deps):
        reply = await say(fake, Teacher().says("家访"), parts=3, order=[2, 0, 1])
        assert "共5名" in reply
        assert "周小禾" in await say(fake, Teacher().says("周小禾"), parts=2)
    assert len(fake.acks) == 2  # one per event, on its last part


async def test_a_dropped_connection_reconnects_and_the_conversation_goes_on(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    teacher = Teacher()
    async with serving(ws_settings, deps):
        await say(fake, teacher.says("家访"))
        await fake.drop()
        await fake.wait_connected(connections=2)
        assert "周小禾" in await say(fake, teacher.says("周小禾"))
        await fake.drop()
        await fake.wait_connected(connections=3)
        assert "【第2题/" in await say(fake, teacher.says("3"))
    assert fake.opens == 3  # a new endpoint for each connection


async def test_an_endpoint_outage_leaves_the_http_server_serving(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu, caplog: pytest.LogCaptureFixture
) -> None:
    fake.refuse_open = 10**6
    async with serving(ws_settings, deps) as server, ClientSession() as http:
        while fake.refused < 3:
            async with http.get(server.make_url("/healthz")) as r:
                assert r.status == 200
            await asyncio.sleep(0.01)
        assert fake.connections == 0
        fake.refuse_open = 0
        await fake.wait_connected()
        assert "共5名" in await say(fake, Teacher().says("家访"))
    assert "feishu endpoint refused (HTTP 200 code 1)" in caplog.text


async def test_the_client_pings_with_the_service_id_and_takes_the_pong_config(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    fake.ping_interval = 1
    async with serving(ws_settings, deps):
        await fake.wait_connected()
        await eventually(lambda: len(fake.pings) >= 2)
        assert "共5名" in await say(fake, Teacher().says("家访"))
    assert all(p.service == SERVICE_ID and p.method == 0 for p in fake.pings)


async def test_a_silent_gateway_is_left_and_the_client_reconnects(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    fake.ping_interval, fake.answer_pings = 1, False  # nothing comes back for 3 s
    async with serving(ws_settings, deps):
        await fake.wait_connected()
        await eventually(lambda: fake.connections >= 2)
        fake.answer_pings = True
        assert "共5名" in await say(fake, Teacher().says("家访"))
    assert fake.opens >= 2


async def test_parts_that_stay_incomplete_are_dropped_and_not_acked(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feishu_ws, "PARTS_TTL", 0.0)  # every part is stale by the next one
    first, second = fake.data_frames(b'{"schema": "2.0"}', "split-1", 2)
    async with serving(ws_settings, deps):
        await fake.send_raw(first)
        await asyncio.sleep(0.05)
        await fake.send_raw(second)
        await asyncio.sleep(0.05)
        assert fake.acks == []
        monkeypatch.setattr(feishu_ws, "PARTS_TTL", 5.0)
        assert "共5名" in await say(fake, Teacher().says("家访"), parts=2)
    assert len(fake.acks) == 1 and len(fake.messages) == 1


async def test_a_slow_turn_is_acked_within_three_seconds_and_the_connection_keeps_reading(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    async with serving(ws_settings, deps) as server:
        channel = server.app[feishu.FEISHU_CHANNEL]
        channel.dispatcher = SlowConversations(channel.dispatcher, 3.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow = asyncio.create_task(fake.push_event(Teacher().says("家访")))
        await asyncio.sleep(0.1)
        other = Teacher("ou_other").says("帮助")  # read and acked while the first turn runs
        await fake.push_event(other)
        await slow
        assert loop.time() - started < 3.0 and fake.messages == []
        await fake.wait_for(2)
    assert any("共5名" in m.text for m in fake.messages)


async def test_a_redelivered_event_is_acked_and_answered_once(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    teacher = Teacher()
    async with serving(ws_settings, deps):
        await say(fake, teacher.says("周小禾"))
        answer = teacher.says("3")
        await say(fake, answer)
        await fake.push_event(answer)  # the same event_id again (Feishu re-pushes)
        await fake.push_event(answer)
        await say(fake, teacher.says("继续"))
        await eventually(lambda: all(row.status == "sent" for row in outbox_rows(deps)))
    assert len(fake.acks) == 5 and len(fake.messages) == 3
    assert visit_rows(deps)[0].answers == {"method": "电话"}


async def test_odd_frames_are_shrugged_off_and_the_connection_stays(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    card = Frame(method=1, headers=[("type", "card"), ("message_id", "c1")], payload=b"{}")
    async with serving(ws_settings, deps):
        await fake.send_raw(b"\xff\xff\xff")  # not protobuf
        await fake.send_raw(Frame(method=7, headers=[("type", "x")]).encode())
        await fake.send_raw(Frame(method=1, headers=[("type", "event")], payload=b"{x").encode())
        await fake.send_raw(
            Frame(
                method=1,
                headers=[("type", "event"), ("sum", "999"), ("seq", "0"), ("message_id", "m")],
            ).encode()
        )
        await fake.send_raw(card.encode())
        await eventually(lambda: len(fake.acks) == 2)  # the broken event and the card
        assert "共5名" in await say(fake, Teacher().says("家访"))
    assert fake.connections == 1


async def test_ws_mode_has_no_callback_and_one_shot_jobs_open_no_connection(
    ws_settings: Settings, deps: Deps, fake: FakeFeishu
) -> None:
    async with (
        serving(ws_settings, deps) as server,
        ClientSession() as http,
        http.post(server.make_url("/feishu/callback"), data=b"{}") as r,
    ):
        assert r.status == 404
    opens = fake.opens
    server = TestServer(create_app(ws_settings, deps, serving=False), host="127.0.0.1")
    await server.start_server()
    await asyncio.sleep(0.1)
    await server.close()
    assert fake.opens == opens
