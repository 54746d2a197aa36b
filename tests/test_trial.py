"""Defects found by trying the merged work as a new user would (the trial of #14, #16, #17).

Each test is the regression test of one fix: on both databases and the memory store, through
the real dispatcher with the demo roster and no chat platform configured.
"""

from __future__ import annotations

from bot.core.types import MessageKind
from handlers import coordinate, texts
from tests.conftest import ChatDriver, FakeClock
from tests.test_binding import any_bot, code_for, wechat  # noqa: F401 (the fixture)
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


async def test_coordinators_help_names_the_binding_code(any_bot: ChatDriver) -> None:  # noqa: F811
    """The README lists `绑定码 工号` for coordinators and the bureau; their 帮助 did not."""
    for user in ("C001", "B001"):
        help_text = await any_bot.say("帮助", user=user)
        assert "绑定码 工号 — " in help_text and "绑定码 T002" in help_text
    assert "绑定码" not in await any_bot.say("帮助", user="T001")


async def test_a_coordinator_who_binds_is_shown_the_coordinators_commands(
    any_bot: ChatDriver,  # noqa: F811
) -> None:
    """Binding (or following the account) showed everyone the teachers' help, so a coordinator
    who had just bound WeChat was told about 家访 and not about 上报 or 确认."""
    wx = wechat(any_bot)
    coordinator = await wx.say(f"绑定 C001 {await code_for(any_bot, 'C001')}", user="oJia")
    assert coordinator == texts.BIND_DONE.format(name="甲协调") + "\n\n" + coordinate.HELP
    bureau = await wx.say(f"绑定 B001 {await code_for(any_bot, 'B001', 'B001')}", user="oJu")
    assert bureau.endswith(coordinate.HELP)
    teacher = await wx.say(f"绑定 T002 {await code_for(any_bot, 'T002')}", user="oLi")
    assert teacher.endswith(texts.HELP)
    greeting = await wx.say("", user="oJia", kind=MessageKind.EVENT)
    assert greeting == texts.GREETING.format(name="甲协调") + "\n\n" + coordinate.HELP


async def test_an_unknown_staff_number_on_the_console_or_json_channel_is_not_sent_to_bind(
    any_bot: ChatDriver,  # noqa: F811
) -> None:
    """There the user id is the staff number: the advice to get a binding code led to
    "这里直接按工号使用，不需要绑定", and "把你的ID【T404】发给协调员" named no platform id."""
    for channel in ("console", "api"):
        driver = ChatDriver(any_bot.dispatcher, channel)
        reply = await driver.say("家访", user="T404")
        assert (
            reply
            == "工号【T404】不在名单里或已停用，请核对工号，或请学校的资助协调员把你加进名单。"
        )
        assert "绑定" not in reply
    assert await wechat(any_bot).say("家访", user="oNew") == texts.NOT_REGISTERED.format(
        user_id="oNew"
    )


async def test_a_coordinator_with_no_students_of_their_own_is_not_sent_to_the_coordinator(
    any_bot: ChatDriver,  # noqa: F811
) -> None:
    """`家访` from a coordinator answered "如有疑问请联系学校的资助协调员"."""
    for user in ("C001", "B001"):
        reply = await any_bot.say("家访", user=user)
        assert reply == texts.NO_STUDENTS_COORDINATOR
        assert "联系学校的资助协调员" not in reply and "概况" in reply


async def test_undoing_a_submission_reopens_what_its_already_resolved_answer_closed(
    any_bot: ChatDriver,  # noqa: F811
    clock: FakeClock,
) -> None:
    """ "撤销" took the visit back to a draft but left the follow-up its "已解决" had closed
    done, so the teacher's undo half-happened (and the draft cannot change that answer)."""
    await start(any_bot)
    for answer in [*TABLET_VISIT, "提交"]:
        await any_bot.say(answer)
    clock.advance(days=1)
    asked = await start(any_bot)
    assert "上次登记的需求：平板/电脑（还未办结" in asked
    for answer in ["1", "3", "1", "1", "2", "1", "1", "1", "1", "1", "无"]:
        await any_bot.say(answer)
    assert "已提交" in await any_bot.say("提交")
    assert texts.FOLLOWUPS_NONE in await any_bot.say("待跟进")
    assert "请核对 周小禾（三年级1班）" in await any_bot.say("撤销")  # a draft again
    todo = await any_bot.say("待跟进")
    assert "1. 周小禾（三年级1班） · 平板/电脑：平板或电脑" in todo
    await any_bot.say("继续")
    assert "已提交" in await any_bot.say("提交")
    assert texts.FOLLOWUPS_NONE in await any_bot.say("待跟进")  # closed again on resubmission
