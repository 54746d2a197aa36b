"""What a hostile or careless client sends, over the real app and both databases.

Reused message ids, NUL and newlines in ids, digits `int()` refuses, invisible format characters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import BaseTestServer, TestServer
from sqlalchemy import select

from bot.app import create_app
from bot.deps import Deps
from bot.jobs import Jobs
from config.settings import Settings
from handlers import texts
from storage.schema import inbound_messages
from tests.conftest import ChatDriver, FakeClock
from tests.test_conversation import start

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(
    settings: Settings, deps: Deps
) -> AsyncIterator[tuple[ClientSession, BaseTestServer]]:
    async with (
        TestServer(create_app(settings, deps), host="127.0.0.1") as srv,
        ClientSession() as http,
    ):
        yield http, srv


async def say(api: tuple[ClientSession, BaseTestServer], body: object) -> tuple[int, object]:
    http, srv = api
    async with http.post(srv.make_url("/api/messages"), json=body, headers=AUTH) as r:
        return r.status, await r.json()


async def test_a_reused_message_id_never_answers_another_user_with_the_first_ones_replies(
    api: tuple[ClientSession, BaseTestServer],
) -> None:
    status, first = await say(api, {"user": "T001", "text": "家访", "message_id": "msg-1"})
    assert status == 200 and "周小禾" in str(first)

    status, other = await say(api, {"user": "NOPE", "text": "帮助", "message_id": "msg-1"})
    assert status == 200
    assert other == {"replies": [texts.UNKNOWN_STAFF_NO.format(user_id="NOPE")]}

    status, teacher = await say(api, {"user": "T002", "text": "家访", "message_id": "msg-1"})
    assert "孙小川" in str(teacher) and "周小禾" not in str(teacher)  # T002's own list

    # the same sender and id is still a retry: the first answer, not a second turn
    status, again = await say(api, {"user": "T001", "text": "进度", "message_id": "msg-1"})
    assert again == first


@pytest.mark.parametrize(
    "body",
    [
        {"user": "T0\x0001", "text": "家访"},
        {"user": "T001", "text": "家访", "message_id": "m\x00"},
        {"user": "T001", "text": "家访", "message_id": "m-1\nERROR forged line"},
    ],
)
async def test_control_characters_in_ids_are_refused_at_the_edge(
    api: tuple[ClientSession, BaseTestServer], deps: Deps, body: dict[str, str]
) -> None:
    status, answer = await say(api, body)
    assert status == 400 and "error" in answer  # type: ignore[operator]
    with deps.db.begin() as conn:
        assert conn.execute(select(inbound_messages)).all() == []


async def test_nul_in_the_text_is_dropped_not_an_apology(
    api: tuple[ClientSession, BaseTestServer],
) -> None:
    status, answer = await say(api, {"user": "T001", "text": "家\x00访", "message_id": "n-1"})
    assert status == 200 and "共5名" in str(answer)


@pytest.mark.parametrize("digit", ["፩", "𐩀", "١"])
async def test_digits_that_int_refuses_are_an_answer_to_ask_again_not_a_crash(
    bot: ChatDriver, digit: str, caplog: pytest.LogCaptureFixture
) -> None:
    listing = await bot.say("家访")
    reply = await bot.say(digit)  # a list choice
    assert texts.APOLOGY not in reply
    await start(bot)
    answer = await bot.say(digit)  # a single-choice question
    assert texts.APOLOGY not in answer
    if digit == "١":  # ARABIC-INDIC DIGIT ONE is a decimal digit: it chooses option 1
        assert "【第2题/" in answer
    else:
        assert "【第1题/" in answer  # asked again with the reason
    assert "Traceback" not in caplog.text and "turn failed" not in caplog.text
    assert "共5名" in listing


async def test_format_characters_are_stripped_before_matching_and_storing(bot: ChatDriver) -> None:
    listing = await bot.say("\u202e家访\u200b")
    assert "共5名" in listing
    assert "\u202e" not in listing
    first = await bot.say("\ufeff周小禾\u200e")
    assert "开始登记 周小禾" in first


async def test_client_message_ids_are_logged_escaped(
    bot: ChatDriver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every channel refuses control characters in ids; should one slip through, the log line
    that names it is still one line."""

    def broken(*args: object) -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(bot.dispatcher.engine, "conversation", broken)
    caplog.set_level(logging.ERROR)
    assert await bot.say("家访", message_id="x\u2028y") == texts.APOLOGY
    [record] = [r for r in caplog.records if "turn failed" in r.getMessage()]
    assert "message_id='x\\u2028y'" in record.getMessage().splitlines()[0]


async def test_stored_replies_are_cleared_after_a_day_and_ids_kept_for_a_month(
    bot: ChatDriver, deps: Deps, settings: Settings, clock: FakeClock
) -> None:
    first = await bot.say("家访", message_id="r-1")
    assert "周小禾" in first
    jobs = Jobs(settings, deps, [])
    clock.advance(hours=23)
    assert (await jobs.housekeep()).replies_cleared == 0
    assert await bot.say("家访", message_id="r-1") == first  # a retry within the day

    clock.advance(hours=2)
    assert (await jobs.housekeep()).replies_cleared == 1
    with deps.db.begin() as conn:
        [row] = conn.execute(select(inbound_messages)).all()
    assert row.replies is None and row.message_id == "r-1"
    assert await bot.say("家访", message_id="r-1") == texts.ALREADY_HANDLED  # not acted on

    clock.advance(days=30)
    pruned = await jobs.housekeep()
    assert pruned.ids_deleted == 1
    with deps.db.begin() as conn:
        assert conn.execute(select(inbound_messages)).all() == []
