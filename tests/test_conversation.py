"""Behaviour scripts: a teacher says X, the bot answers Y, the database now holds Z.

Every test runs on SQLite, on PostgreSQL and on PostgreSQL through PgBouncer (transaction
pooling) against the real dispatcher, engine and store, with the demo roster loaded (T001 teaches
周小禾, 陈小树 and two students named 王小雨, and is the carer of 沈小云).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from bot.deps import Deps
from handlers import texts
from storage.schema import assignments, conversations, followups, staff, students, visits
from tests.conftest import POOLED_BACKENDS, ChatDriver, FakeClock

pytestmark = pytest.mark.parametrize("db_url", POOLED_BACKENDS, indirect=True)

# method=电话, study=好, device_ok=否, device_missing=平板或电脑, life_hard=否, emotion=稳定,
# relation=融洽, guardian=父母, risks=没有, online=能, other=无  -> one follow-up (device)
TABLET_VISIT = ["3", "1", "2", "1", "2", "1", "1", "1", "1", "1", "无"]
# ... the same but devices fine and the child needs counselling -> one follow-up (psych, urgent)
COUNSELLING = ["3", "1", "1", "2", "3", "1", "1", "1", "1", "无"]
TABLET_ANSWERS = {
    "method": "电话",
    "study": "好",
    "device_ok": "否",
    "device_missing": "平板或电脑",
    "life_hard": "否",
    "emotion": "稳定",
    "relation": "融洽",
    "guardian": "父母",
    "risks": ["没有"],
    "online": "能",
    "other": "无",
}


def rows(deps: Deps, table: Any) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(table).order_by(*table.primary_key.columns)).all())


async def start(bot: ChatDriver, name: str = "周小禾") -> str:
    await bot.say("家访")
    return await bot.say(name)


async def test_whole_checkin_is_stored_with_its_followups(bot: ChatDriver, deps: Deps) -> None:
    listing = await bot.say("家访")
    assert "共5名" in listing and listing.count("从未家访") == 5
    assert "孙小川" not in listing  # T002's student

    first = await bot.say("周小禾")
    assert "开始登记 周小禾（三年级1班）" in first and "【第1题/" in first
    for answer in TABLET_VISIT:
        reply = await bot.say(answer)
    assert "请核对 周小禾（三年级1班）" in reply
    assert "4. 缺少设备：平板或电脑" in reply and "11. 其他情况：无" in reply

    done = await bot.say("提交")
    assert "已提交 周小禾（三年级1班）" in done
    assert "新增跟进事项1项" in done and "平板/电脑：平板或电脑" in done

    [visit] = rows(deps, visits)
    assert visit.status == "submitted" and visit.reached is True and visit.method == "电话"
    assert visit.form_id == "home_visit" and visit.form_version == "2026.2"
    assert visit.answers == TABLET_ANSWERS
    [fu] = rows(deps, followups)
    assert (fu.kind, fu.detail, fu.status) == ("device", "平板或电脑", "open")
    local_today = deps.clock.now().astimezone(ZoneInfo("Asia/Shanghai")).date()
    assert fu.due_date == local_today + timedelta(days=3)

    again = await bot.say("家访")
    assert again.count("从未家访") == 4 and "今天已访" in again and "待跟进1项" in again


async def test_wrong_answers_are_asked_again_and_change_nothing(
    bot: ChatDriver, deps: Deps
) -> None:
    await start(bot)
    out_of_range = await bot.say("9")
    assert texts.OUT_OF_RANGE.format(n=9, count=5) in out_of_range
    assert "【第1题/" in out_of_range and "5. 联系不上" in out_of_range
    assert texts.NOT_AN_OPTION.format(count=5) in await bot.say("随便说说")
    assert texts.NOT_AN_OPTION.format(count=5) in await bot.say("😀")
    assert texts.EMPTY_ANSWER in await bot.say("   ")
    too_long = await bot.say("好" * 5000)
    assert "5000字" in too_long and "【第1题/" in too_long
    [visit] = rows(deps, visits)
    assert visit.answers == {}

    assert "【第2题/" in await bot.say(" ３ ")  # full-width digit with spaces: 电话
    assert "【第3题/" in await bot.say("一般")  # option text works too
    [visit] = rows(deps, visits)
    assert visit.answers == {"method": "电话", "study": "一般"}


async def test_free_text_keeps_emoji_and_punctuation(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    for answer in ["3", "1", "1", "2", "1", "1", "1", "1", "1"]:
        await bot.say(answer)
    await bot.say("孩子说想念同学😊，家长很配合！")
    [visit] = rows(deps, visits)
    assert visit.answers["other"] == "孩子说想念同学😊，家长很配合！"


async def test_commands_in_the_middle_of_a_question(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    await bot.say("3")
    helped = await bot.say("帮助")
    assert "完成 N 备注" in helped and "【第2题/" in helped
    todo = await bot.say("待跟进")
    assert texts.FOLLOWUPS_NONE in todo and "【第2题/" in todo
    progress = await bot.say("进度")
    assert "0/5" in progress and "【第2题/" in progress
    assert "【第3题/" in await bot.say("1")
    [visit] = rows(deps, visits)
    assert visit.answers == {"method": "电话", "study": "好"}


async def test_a_student_who_is_not_yours_cannot_be_visited(bot: ChatDriver, deps: Deps) -> None:
    await bot.say("家访")
    reply = await bot.say("孙小川")  # exists, but belongs to T002
    assert reply == texts.NO_SUCH_NAME.format(name="孙小川")
    assert rows(deps, visits) == []
    listing = await bot.say("名单", user="T002")
    assert "孙小川" in listing and "周小禾" not in listing


async def test_unknown_staff_number_is_told_to_check_it(bot: ChatDriver, deps: Deps) -> None:
    reply = await bot.say("家访", user="X999")
    assert reply == texts.UNKNOWN_STAFF_NO.format(user_id="X999")
    assert rows(deps, conversations) == []


async def test_two_students_with_one_name_are_told_apart_by_class(
    bot: ChatDriver, deps: Deps
) -> None:
    await bot.say("家访")
    ambiguous = await bot.say("王小雨")
    assert "2名学生叫“王小雨”" in ambiguous
    assert "三年级1班" in ambiguous and "四年级2班" in ambiguous
    second = ambiguous.splitlines()[2]
    chosen = await bot.say("2")
    cls = "四年级2班" if "四年级2班" in second else "三年级1班"
    assert f"王小雨（{cls}）" in chosen
    await bot.say("稍后")
    direct = await bot.say("王小雨 四年级2班")
    assert "王小雨（四年级2班）" in direct


async def test_back_skip_and_edit(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    await bot.say("3")
    back = await bot.say("上一题")
    assert "【第1题/" in back and "当前回答：电话" in back
    assert texts.FIRST_QUESTION in await bot.say("上一题")
    assert "【第2题/" in await bot.say("1")  # 微信视频 now
    assert texts.NOT_OPTIONAL in await bot.say("跳过")
    for answer in ["1", "2", "1", "2"]:  # study, device_ok=否, 平板或电脑, life_hard=否
        await bot.say(answer)
    for answer in ("1", "1", "1", "1", "1"):  # emotion, relation, guardian, risks, online
        await bot.say(answer)
    summary = await bot.say("无")
    assert "4. 缺少设备：平板或电脑" in summary
    # Changing device_ok to 是 drops the now irrelevant "what is missing" answer.
    assert "当前回答：否" in await bot.say("修改 3")
    summary = await bot.say("是")
    assert "缺少设备" not in summary and "3. 网课设备：是" in summary
    # ... and back to 否 asks it again before returning to the summary.
    await bot.say("修改 3")
    assert "缺少什么" in await bot.say("否")
    assert "请核对" in await bot.say("3")
    assert texts.NO_SUCH_ITEM.format(n=20, count=11) in await bot.say("修改 20")


async def test_optional_question_can_be_skipped(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    for answer in ["4", "1", "1", "是"]:
        await bot.say(answer)
    assert "【第6题/" in await bot.say("2、1")  # multi choice, any order
    after_skip = await bot.say("跳过")
    assert "情绪状态" in after_skip
    await bot.say("需要心理疏导")
    for answer in ("1", "1", "1", "1"):  # relation, guardian, risks, online
        await bot.say(answer)
    summary = await bot.say("无")
    assert "6. 困难说明：（已跳过）" in summary
    assert "5. 困难类型：父母无法返岗收入减少、食品和生活物资" in summary
    await bot.say("提交")
    kinds = sorted((f.kind, f.detail) for f in rows(deps, followups))
    assert kinds == [
        ("living_aid", "父母无法返岗收入减少、食品和生活物资"),
        ("psych", "需要心理疏导"),
    ]
    [visit] = rows(deps, visits)
    assert visit.answers["life_note"] is None


async def test_family_unreachable_is_recorded_but_not_counted(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    summary = await bot.say("联系不上")
    assert "还有其他需要说明" in summary  # the rest depends on reaching the family
    summary = await bot.say("电话关机，明天再打")
    assert "请核对" in summary and "居家学习" not in summary
    done = await bot.say("提交")
    assert "没有联系上" in done
    [visit] = rows(deps, visits)
    assert visit.reached is False and visit.method == "联系不上"
    listing = await bot.say("家访")
    assert listing.count("从未家访") == 4 and "周小禾 · 三年级1班 · 残疾 · 上次没联系上" in listing


async def test_later_resume_and_cancel(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    await bot.say("3")
    assert texts.PARKED.format(student="周小禾（三年级1班）") in await bot.say("稍后")
    listing = await bot.say("家访")
    assert "接着填 周小禾（三年级1班） 的" in listing and "有草稿" in listing
    resumed = await bot.say("继续")
    assert "继续 周小禾（三年级1班） 的家访草稿" in resumed and "【第2题/" in resumed
    # 取消 leaves and keeps the draft; 放弃 deletes it, after asking
    assert texts.PARKED.format(student="周小禾（三年级1班）") in await bot.say("取消")
    await bot.say("继续")
    asked = await bot.say("放弃")
    assert asked == texts.DISCARD_ASK.format(student="周小禾（三年级1班）", count=1)
    [visit] = rows(deps, visits)
    assert visit.status == "draft"
    assert "已删除" in await bot.say("确定删除")
    [visit] = rows(deps, visits)
    assert visit.status == "discarded"
    assert await bot.say("继续") == texts.NO_DRAFT
    assert await bot.say("取消") == texts.NOTHING_TO_CANCEL


async def test_expired_session_keeps_the_draft(
    bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    await start(bot)
    await bot.say("3")
    await bot.say("1")
    clock.advance(hours=73)
    reply = await bot.say("1")
    assert texts.EXPIRED_DRAFT.format(student="周小禾（三年级1班）") in reply
    resumed = await bot.say("继续")
    assert "【第3题/" in resumed
    [visit] = rows(deps, visits)
    assert visit.answers == {"method": "电话", "study": "好"}


async def test_followups_are_listed_and_closed_with_a_note(
    bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    await start(bot)
    for answer in [*TABLET_VISIT, "提交"]:
        await bot.say(answer)
    clock.advance(days=5)
    todo = await bot.say("待跟进")
    assert "1. 周小禾（三年级1班） · 平板/电脑：平板或电脑 · 已逾期2天" in todo
    assert texts.NO_SUCH_FOLLOWUP.format(n=9) in await bot.say("完成 9")
    closed = await bot.say("完成 1 平板已送到，家长签收。")
    assert "已完成" in closed and "备注：平板已送到，家长签收。" in closed
    [fu] = rows(deps, followups)
    assert fu.status == "done" and fu.note == "平板已送到，家长签收。"
    assert fu.closed_at == clock.now()
    assert texts.FOLLOWUP_ALREADY_DONE.format(n=1) in await bot.say("完成 1")
    assert texts.FOLLOWUPS_NONE in await bot.say("todo")


async def test_a_retried_message_is_answered_once(bot: ChatDriver, deps: Deps) -> None:
    await start(bot)
    first = await bot.say("3", message_id="m-1")
    retry = await bot.say("3", message_id="m-1")
    assert first == retry and "【第2题/" in retry
    [visit] = rows(deps, visits)
    assert visit.answers == {"method": "电话"}


async def test_messages_of_one_teacher_are_processed_one_at_a_time(
    bot: ChatDriver, deps: Deps
) -> None:
    await start(bot)
    replies = await asyncio.gather(*(bot.say(a) for a in TABLET_VISIT))
    assert "请核对" in replies[-1]
    assert all(texts.APOLOGY not in r for r in replies)
    [visit] = rows(deps, visits)
    assert len(visit.answers) == 11
    with deps.db.begin() as conn:
        version = conn.execute(select(func.max(conversations.c.version))).scalar_one()
    assert version == 2 + len(TABLET_VISIT)


async def test_a_draft_closed_on_one_channel_cannot_be_submitted_on_another(
    bot: ChatDriver, deps: Deps
) -> None:
    console = bot
    api = ChatDriver(bot.dispatcher, channel="api")
    await start(console)
    for answer in TABLET_VISIT:
        await console.say(answer)
    resumed = await api.say("继续")
    assert "请核对" in resumed  # the same draft, reached from the JSON channel
    assert "已提交" in await api.say("提交")
    gone = await console.say("提交")  # the console session still shows the summary
    assert gone == texts.DRAFT_GONE.format(student="周小禾（三年级1班）")
    [visit] = rows(deps, visits)
    assert visit.status == "submitted" and len(rows(deps, followups)) == 1


async def test_an_answer_to_a_draft_discarded_elsewhere_is_refused(
    bot: ChatDriver, deps: Deps
) -> None:
    api = ChatDriver(bot.dispatcher, channel="api")
    await start(bot)
    await bot.say("3")
    await api.say("继续")
    await api.say("放弃")
    assert "已删除" in await api.say("确定删除")
    assert await bot.say("1") == texts.DRAFT_GONE.format(student="周小禾（三年级1班）")
    [visit] = rows(deps, visits)
    assert visit.status == "discarded" and visit.answers == {"method": "电话"}


async def test_a_draft_of_a_student_moved_to_another_teacher_is_not_shown(
    bot: ChatDriver, deps: Deps
) -> None:
    await start(bot)
    await bot.say("3")
    await bot.say("稍后")
    with deps.db.begin() as conn:
        t2 = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T002")).scalar_one()
        zhou = conn.execute(select(students.c.id).where(students.c.name == "周小禾")).scalar_one()
        conn.execute(
            update(assignments).where(assignments.c.student_id == zhou).values(staff_id=t2)
        )
    listing = await bot.say("家访")
    assert "周小禾" not in listing and "草稿" not in listing
    assert await bot.say("继续") == texts.NO_DRAFT
