"""Defects found by trying the merged work as a new user would (the trial of #14, #16, #17).

Each test is the regression test of one fix: on both databases and the memory store, through
the real dispatcher with the demo roster and no chat platform configured.
"""

from __future__ import annotations

from tests.conftest import ChatDriver, FakeClock
from tests.test_binding import any_bot  # noqa: F401 (the fixture)
from tests.test_conversation import TABLET_VISIT, start


async def test_an_unreachable_teacher_is_said_to_have_no_usable_chat_account(
    any_bot: ChatDriver,  # noqa: F811
    clock: FakeClock,
) -> None:
    """T001 has a WeCom id in the roster, but no WeCom is configured here: telling the
    coordinator "没有绑定企业微信/钉钉账号" was wrong, and silent about WeChat and Feishu."""
    await start(any_bot)
    for answer in [*TABLET_VISIT, "提交"]:
        await any_bot.say(answer)
    clock.advance(days=10)
    assert "1. 周小禾（三年级1班） · 平板/电脑" in await any_bot.say("逾期", user="C001")
    assert await any_bot.say("催办 T001", user="C001") == (
        "张示例（T001）没有可用的聊天账号，无法催办。可发送“绑定码 T001”生成绑定码，请其绑定。"
    )
    moved = await any_bot.say("转交 1 T002", user="C001")
    assert moved.startswith("已把第1项转交给李示例（T002）")
    assert moved.endswith("对方没有可用的聊天账号，未能通知，请另行告知。")
    for reply in [moved, await any_bot.say("催办 T001", user="C001")]:
        assert "企业微信/钉钉" not in reply
