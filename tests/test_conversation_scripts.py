"""Conversation scripts on the memory store: a teacher says X, the bot answers Y.

The store contract suite (`test_store_contract.py`) holds the memory store to what the databases
do, so these run on it alone; scripts that also check what the database holds, or that need a
real database (restarts, two processes), are in `test_conversation.py` and beside it.
"""

from __future__ import annotations

import pytest

from bot.core.types import MessageKind
from handlers import texts
from tests.conftest import ChatDriver, FakeClock
from tests.test_conversation import TABLET_VISIT, start


@pytest.fixture
def bot(memory_bot: ChatDriver) -> ChatDriver:
    return memory_bot


async def test_progress_counts_visits_in_the_cycle(bot: ChatDriver, clock: FakeClock) -> None:
    await start(bot)
    for answer in [*TABLET_VISIT, "提交"]:
        await bot.say(answer)
    assert "1/5" in await bot.say("进度")
    clock.advance(days=15)
    progress = await bot.say("progress")
    assert "0/5" in progress and "已逾期 1 项" in progress


async def test_events_and_non_text_messages(bot: ChatDriver) -> None:
    greeting = await bot.say("", kind=MessageKind.EVENT)
    assert "张示例老师" in greeting and "完成 N 备注" in greeting
    await start(bot)
    picture = await bot.say("", kind=MessageKind.UNSUPPORTED)
    assert texts.TEXT_ONLY in picture and "【第1题/" in picture


async def test_back_after_resuming_a_draft_goes_to_the_previous_answer(bot: ChatDriver) -> None:
    await start(bot)
    for answer in ["3", "1", "2"]:
        await bot.say(answer)
    await bot.say("稍后")
    assert "【第4题/" in await bot.say("继续")
    back = await bot.say("上一题")
    assert "【第3题/" in back and "当前回答：否" in back


async def test_the_list_names_the_draft_that_resume_opens(
    bot: ChatDriver, clock: FakeClock
) -> None:
    await start(bot, "周小禾")
    await bot.say("3")
    listed = await bot.say("家访")  # parks 周小禾's draft
    assert texts.DRAFT_HINT.format(count=1, student="周小禾（三年级1班）") in listed
    await bot.say("陈小树")
    await bot.say("3")  # a second draft, changed at the same moment
    listed = await bot.say("家访")
    hint = listed.split("\n")[-1]
    hinted = [s for s in ("周小禾（三年级1班）", "陈小树（三年级1班）") if s in hint]
    assert len(hinted) == 1
    assert texts.VISIT_RESUMED.format(student=hinted[0]) in await bot.say("继续")
    clock.advance(minutes=1)
    await bot.say("1")  # the draft just resumed is now the latest changed
    await bot.say("家访")
    await bot.say("周小禾" if hinted[0].startswith("陈") else "陈小树")
    clock.advance(minutes=1)
    await bot.say("1")
    listed = await bot.say("家访")
    other = "周小禾（三年级1班）" if hinted[0].startswith("陈") else "陈小树（三年级1班）"
    assert texts.DRAFT_HINT.format(count=2, student=other) in listed
    assert texts.VISIT_RESUMED.format(student=other) in await bot.say("继续")
