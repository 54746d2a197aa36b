"""A head teacher with a class of 48, on a phone (issue 12): on memory, SQLite and PostgreSQL.

One number means one thing (the current list), undo and confirmation, paging, filters and
near-miss names, phone punctuation, context after a pause, the wording.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.app import conversation_over
from bot.core.types import StaffRole
from config.calendar import SchoolCalendar
from config.forms import load_form
from config.settings import load_settings
from handlers import texts
from storage.memory import MemoryStore, MemoryTurns
from storage.roster import Origin, Roster, StaffEntry, StudentEntry, import_roster
from storage.schema import metadata
from storage.store import SqlTurns
from tests.conftest import ChatDriver, FakeClock, make_db_url, open_db
from tests.test_conversation import COUNSELLING, TABLET_VISIT

SCHOOL = "实验小学"
SURNAMES = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张"
GIVEN = "子涵浩宇欣怡梓轩一诺雨桐俊杰思彤"


def class_of_48() -> Roster:
    """T048 teaches 48 students of 二年级1班 and 二年级2班; two are called 李浩然 (二年级1班),
    three are orphans (孤儿, a 7-day cycle); C048 is the school's coordinator."""
    staff = (
        StaffEntry(Origin("t", 2), "T048", "王老师", SCHOOL, StaffRole.TEACHER),
        StaffEntry(Origin("t", 3), "C048", "资助专员", SCHOOL, StaffRole.COORDINATOR),
    )
    students = []
    for i in range(48):
        if i in (20, 31):
            name = "李浩然"
        else:
            name = (
                SURNAMES[i % len(SURNAMES)]
                + GIVEN[(i * 2) % len(GIVEN)]
                + GIVEN[(i * 3 + 1) % len(GIVEN)]
            )
        klass = "二年级1班" if i < 40 or i == 31 else "二年级2班"
        cats = ("孤儿",) if i in (5, 17, 44) else ("低保",)
        students.append(
            StudentEntry(Origin("s", i + 2), f"G2{i:04d}", name, SCHOOL, klass, cats, "T048")
        )
    return Roster(students=tuple(students), staff=staff)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def teacher(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[ChatDriver]:
    """T048 talking to the real conversation, on the memory store and on both databases."""
    settings = load_settings({}, env_file=None)
    form = load_form(settings.form_path)
    if request.param == "memory":
        store = MemoryStore()
        store.load_roster(class_of_48())
        turns = MemoryTurns(store)
        yield ChatDriver(conversation_over(turns, settings, form, clock, SchoolCalendar()))
        return
    for url in make_db_url(request.param, tmp_path):
        db = open_db(url)
        metadata.create_all(db.engine)
        with db.begin() as conn:
            import_roster(conn, class_of_48(), now=clock.now())
        try:
            sql = SqlTurns(db)
            yield ChatDriver(conversation_over(sql, settings, form, clock, SchoolCalendar()))
        finally:
            db.close()


async def say(bot: ChatDriver, text: str) -> str:
    return await bot.say(text, user="T048")


def numbered(reply: str) -> dict[int, str]:
    return {
        int(line.split(".", 1)[0]): line.split(". ", 1)[1]
        for line in reply.splitlines()
        if line[:1].isdigit() and ". " in line
    }


async def visit(bot: ChatDriver, name: str, answers: list[str]) -> str:
    await say(bot, "家访")
    reply = await say(bot, name)
    if "你是说" in reply:
        await say(bot, "是")
    for a in answers:
        reply = await say(bot, a)
    return await say(bot, "提交")


# ---------------------------------------------------------------------------- lists at class size
async def test_every_student_of_48_is_reachable_a_page_at_a_time(teacher: ChatDriver) -> None:
    first = await say(teacher, "家访")
    assert "共48名" in first and "回复“更多”" in first
    pages = [numbered(first)]
    while "回复“更多”" in (reply := await say(teacher, "更多")) or numbered(reply):
        pages.append(numbered(reply))
        if "回复“更多”" not in reply:
            break
    shown = {n: line for page in pages for n, line in page.items()}
    assert sorted(shown) == list(range(1, 49))
    assert all(len(page) <= 10 for page in pages)
    assert await say(teacher, "更多") == texts.NO_MORE
    # the 31st (never reached before) is the one `31` starts
    name31 = shown[31].split(" · ")[0]
    started = await say(teacher, "31")
    assert f"开始登记 {name31}" in started


async def test_two_students_of_one_name_in_one_class_are_told_apart_by_student_number(
    teacher: ChatDriver,
) -> None:
    both = await say(teacher, "李浩然")
    assert texts.SAME_NAME.format(count=2, name="李浩然") in both
    lines = numbered(both)
    assert {"学籍号尾号0020", "学籍号尾号0031"} == {
        part for line in lines.values() for part in line.split(" · ") if "尾号" in part
    }
    [n] = [n for n, line in lines.items() if "尾号0031" in line]
    assert "开始登记 李浩然（二年级1班）" in await say(teacher, str(n))


async def test_a_partial_name_or_a_typo_finds_the_students_it_may_mean(
    teacher: ChatDriver,
) -> None:
    for typed in ("浩然", "李皓然"):  # part of the name; one character off
        found = await say(teacher, typed)
        assert texts.SEVERAL_MATCHES.format(count=2) in found
        assert sorted(line.split(" · ")[0] for line in numbered(found).values()) == ["李浩然"] * 2
    assert "开始登记 李浩然" in await say(teacher, "1")
    await say(teacher, "3")
    assert await say(teacher, "稍后")
    nothing = await say(teacher, "一二三四")
    assert texts.UNKNOWN_WITH_DRAFTS.format(count=1) in nothing  # (the draft just parked)


async def test_a_near_miss_of_a_unique_name_asks_you_mean(teacher: ChatDriver) -> None:
    listing = numbered(await say(teacher, "家访"))
    name = listing[1].split(" · ")[0]  # three characters, unique in the class
    typo = name[0] + ("甲" if name[1] != "甲" else "乙") + name[2]
    asked = await say(teacher, typo)
    assert asked.startswith("你是说 ") and name in asked
    assert f"开始登记 {name}" in await say(teacher, "是")


async def test_filters_by_class_category_and_not_visited(teacher: ChatDriver) -> None:
    second = await say(teacher, "家访 二年级2班")
    assert "“二年级2班”共8名" in second and "二年级1班" not in second
    orphans = await say(teacher, "家访 孤儿")
    assert "“孤儿”共3名" in orphans
    assert "共48名" in (await say(teacher, "家访 未访")).replace("“未访”", "")
    assert texts.NO_FILTER_MATCH.format(filter="三年级") == await say(teacher, "家访 三年级")


async def test_orphans_overdue_and_unreachable_families_come_first(
    teacher: ChatDriver, clock: FakeClock
) -> None:
    listing = numbered(await say(teacher, "家访"))
    orphan = next(line.split(" · ")[0] for line in listing.values() if "孤儿" in line)
    other = listing[2].split(" · ")[0]
    # never visited: by 学号 (G20000 first)
    assert listing[1].startswith(class_of_48().students[0].name)
    await visit(teacher, orphan, TABLET_VISIT)
    await visit(teacher, other, ["联系不上", "关机"])
    clock.advance(days=9)  # the orphan is overdue (7-day cycle); the family not reached
    first_two = list(numbered(await say(teacher, "家访")).values())[:2]
    assert first_two[0].startswith(other) and "上次没联系上" in first_two[0]
    assert first_two[1].startswith(orphan) and "已逾期" in first_two[1]


# ------------------------------------------------------------------------ one meaning per number
async def test_a_number_after_the_followup_list_is_a_followup_not_a_draft(
    teacher: ChatDriver,
) -> None:
    listing = numbered(await say(teacher, "家访"))
    name = listing[1].split(" · ")[0]
    await visit(teacher, name, TABLET_VISIT)  # one device follow-up
    other = numbered(await say(teacher, "家访"))[2].split(" · ")[0]
    await say(teacher, other)
    await say(teacher, "3")
    await say(teacher, "稍后")  # a draft of another student waits
    await say(teacher, "家访")  # the student list ...
    todo = await say(teacher, "待跟进")  # ... and then the follow-ups: those are current
    assert "1. " in todo
    shown = await say(teacher, "1")
    assert shown.startswith("第1项：") and "平板" in shown and "完成 1" in shown
    assert "开始登记" not in shown and "继续" not in shown.split("\n")[0]


async def test_done_refers_to_the_list_on_screen_and_names_what_it_closed(
    teacher: ChatDriver,
) -> None:
    listing = numbered(await say(teacher, "家访"))
    a, b = listing[1].split(" · ")[0], listing[2].split(" · ")[0]
    await visit(teacher, a, TABLET_VISIT)
    await visit(teacher, b, COUNSELLING)
    todo = numbered(await say(teacher, "待跟进"))
    [psych] = [n for n, line in todo.items() if "心理" in line]
    done = await say(teacher, f"完成{psych}已联系心理老师")  # no space: as phones type it
    assert f"已完成第{psych}项：{b}" in done and "心理" in done and "已联系心理老师" in done
    assert "撤销" in done
    await say(teacher, "家访")  # now the student list is on screen
    refused = await say(teacher, "完成 1 平板已送到")
    assert refused.startswith(texts.NO_SUCH_FOLLOWUP.format(n=1)[:10])
    still = await say(teacher, "待跟进")
    assert "平板" in still and "心理" not in still


async def test_undo_reverts_a_done_within_ten_minutes(
    teacher: ChatDriver, clock: FakeClock
) -> None:
    name = numbered(await say(teacher, "家访"))[1].split(" · ")[0]
    await visit(teacher, name, TABLET_VISIT)
    await say(teacher, "待跟进")
    await say(teacher, "完成 1 送到了")
    assert await say(teacher, "待跟进") == texts.FOLLOWUPS_NONE
    undone = await say(teacher, "撤销")
    assert "已撤销" in undone and "平板" in undone
    assert "平板" in await say(teacher, "待跟进")
    await say(teacher, "完成 1 送到了")
    clock.advance(minutes=11)
    assert texts.NOTHING_TO_UNDO in await say(teacher, "撤销")


async def test_undo_reverts_a_submission_and_withdraws_its_followups(teacher: ChatDriver) -> None:
    name = numbered(await say(teacher, "家访"))[1].split(" · ")[0]
    submitted = await visit(teacher, name, TABLET_VISIT)
    assert "已提交" in submitted and "撤销" in submitted
    undone = await say(teacher, "撤销")
    assert "已撤销提交" in undone and "请核对" in undone
    todo = await say(teacher, "待跟进")  # the follow-up it opened is withdrawn
    assert todo.startswith(texts.FOLLOWUPS_NONE) and "请核对" in todo
    again = await say(teacher, "提交")
    assert "已提交" in again


async def test_deleting_a_draft_asks_first_and_cancel_keeps_it(teacher: ChatDriver) -> None:
    name = numbered(await say(teacher, "家访"))[1].split(" · ")[0]
    await say(teacher, name)
    for a in ("3", "1", "2", "1"):
        await say(teacher, a)
    kept = await say(teacher, "取消")  # at question 5: leave, keep the draft
    assert kept == texts.PARKED.format(student=f"{name}（二年级1班）")
    resumed = await say(teacher, "继续")
    assert "【第5题/" in resumed
    asked = await say(teacher, "放弃")  # understood while answering, not only on the summary
    assert asked == texts.DISCARD_ASK.format(student=f"{name}（二年级1班）", count=4)
    back = await say(teacher, "2")  # an answer: the draft stays and takes it
    assert texts.DISCARD_KEPT not in back and "【第6题/" in back
    await say(teacher, "放弃")
    assert "已删除" in await say(teacher, "确定删除")
    assert await say(teacher, "继续") == texts.NO_DRAFT


# ---------------------------------------------------------------------------- phone typing
@pytest.mark.parametrize("typed", ["1。", "1.", "1、", " １ "])
async def test_punctuation_a_phone_adds_is_ignored(teacher: ChatDriver, typed: str) -> None:
    await say(teacher, "家访")
    started = await say(teacher, typed)
    assert "开始登记" in started
    assert "【第2题/" in await say(teacher, typed)  # an option too


async def test_only_a_phone_answers_the_device_question(teacher: ChatDriver) -> None:
    await say(teacher, "家访")
    await say(teacher, "1")
    await say(teacher, "3")
    await say(teacher, "1")
    assert "缺少什么" in await say(teacher, "只有手机")


async def test_a_long_note_is_cut_with_agreement(teacher: ChatDriver) -> None:
    await say(teacher, "家访")
    await say(teacher, "1")
    for a in TABLET_VISIT[:-1]:
        await say(teacher, a)
    long = "情况说明" * 150  # 600 characters, the limit is 500
    asked = await say(teacher, long)
    assert "600字" in asked and "500字" in asked and "确定" in asked
    summary = await say(teacher, "确定")
    assert "请核对" in summary
    await say(teacher, "提交")
    await say(teacher, "待跟进")
    asked = await say(teacher, "完成 1 " + "送到" * 300)
    assert "600字" in asked
    done = await say(teacher, "确定")
    assert "已完成第1项" in done


async def test_a_command_word_at_a_free_text_question_is_not_stored(teacher: ChatDriver) -> None:
    await say(teacher, "家访")
    await say(teacher, "1")
    for a in TABLET_VISIT[:-1]:
        await say(teacher, a)
    asked = await say(teacher, "提交")
    assert "“提交”是一个指令" in asked and "还有其他需要说明" in asked
    assert "请核对" in await say(teacher, "无")


# ---------------------------------------------------------------------------- context after a pause
async def test_a_reply_the_bot_cannot_place_lists_the_drafts(teacher: ChatDriver) -> None:
    listing = numbered(await say(teacher, "家访"))
    for n in (1, 2):
        await say(teacher, listing[n].split(" · ")[0])
        await say(teacher, "3")
        await say(teacher, "稍后")
    lost = await say(teacher, "好的")
    assert texts.UNKNOWN_WITH_DRAFTS.format(count=2) in lost
    drafts = numbered(lost)
    assert len(drafts) == 2
    second = drafts[2].split(" · ")[0]
    assert texts.VISIT_RESUMED.format(student=second) in await say(teacher, "2")


async def test_after_a_long_pause_the_pending_question_is_asked_again(
    teacher: ChatDriver, clock: FakeClock
) -> None:
    await say(teacher, "家访")
    await say(teacher, "1")
    await say(teacher, "3")
    clock.advance(hours=73)
    again = await say(teacher, "2")  # meant for a question days ago: not taken as the answer
    assert "好久不见" in again and "【第2题/" in again
    assert "【第3题/" in await say(teacher, "2")


# ---------------------------------------------------------------------------- wording
async def test_questions_show_their_count_and_hints_once(teacher: ChatDriver) -> None:
    await say(teacher, "家访")
    first = await say(teacher, "1")
    assert "问卷" not in first and "2026" not in first
    assert "【第1题/共" in first
    for a in ("3", "1", "1", "1"):  # method, study, devices ok, life hard: yes
        reply = await say(teacher, a)
    assert reply.count("可多选") == 1
    assert "您" not in reply


async def test_a_due_date_on_a_weekend_moves_to_the_next_school_day(
    teacher: ChatDriver, clock: FakeClock
) -> None:
    clock.advance(days=3)  # Thursday 5 March: a tablet is due in 3 days, on Sunday
    name = numbered(await say(teacher, "家访"))[1].split(" · ")[0]
    done = await visit(teacher, name, TABLET_VISIT)
    assert "平板或电脑（3月9日前）" in done  # Monday


# ---------------------------------------------------------------------------- found in review
async def test_a_number_after_did_you_mean_does_not_pick_from_the_old_list(
    teacher: ChatDriver,
) -> None:
    listing = numbered(await say(teacher, "家访"))
    name = listing[3].split(" · ")[0]
    typo = name[0] + ("甲" if name[1] != "甲" else "乙") + name[2]
    assert (await say(teacher, typo)).startswith("你是说")
    assert await say(teacher, "1") == texts.NO_LIST  # not the first of the list above
    assert await say(teacher, typo) and await say(teacher, "不是") == texts.NAME_AGAIN


async def test_done_without_a_list_on_screen_shows_the_list_and_closes_nothing(
    teacher: ChatDriver,
) -> None:
    listing = numbered(await say(teacher, "家访"))
    await visit(teacher, listing[1].split(" · ")[0], TABLET_VISIT)
    await visit(teacher, listing[2].split(" · ")[0], COUNSELLING)
    await say(teacher, "继续")  # (no draft) ...
    await say(teacher, listing[3].split(" · ")[0])  # ... a visit starts: no list on screen
    await say(teacher, "稍后")
    reply = await teacher.replies("完成 1 已送到", user="T048")
    assert reply[0] == texts.DONE_WHICH and "1. " in reply[1]
    assert len(numbered(await say(teacher, "待跟进"))) == 2  # nothing was closed
    done = await say(teacher, "完成 2 已联系")
    assert "已完成第2项" in done


async def test_a_long_note_while_answering_returns_to_the_question(teacher: ChatDriver) -> None:
    listing = numbered(await say(teacher, "家访"))
    await visit(teacher, listing[1].split(" · ")[0], TABLET_VISIT)
    await say(teacher, "待跟进")
    await say(teacher, listing[2].split(" · ")[0])
    await say(teacher, "3")  # at question 2 of another student
    asked = await say(teacher, "完成 1 " + "送" * 600)
    assert "600字" in asked
    done = await say(teacher, "确定")
    assert "已完成第1项" in done and "【第2题/" in done  # back at the question


async def test_undo_in_the_middle_of_another_visit_reopens_nothing(teacher: ChatDriver) -> None:
    listing = numbered(await say(teacher, "家访"))
    await visit(teacher, listing[1].split(" · ")[0], TABLET_VISIT)
    await say(teacher, "家访")
    await say(teacher, listing[2].split(" · ")[0])
    await say(teacher, "3")
    refused = await say(teacher, "撤销")
    assert refused.startswith(texts.UNDO_IN_VISIT) and "【第2题/" in refused
    await say(teacher, "稍后")
    assert "已撤销提交" in await say(teacher, "撤销")  # asked for from outside the visit


async def test_the_delete_question_takes_yes_and_an_answer(teacher: ChatDriver) -> None:
    listing = numbered(await say(teacher, "家访"))
    name = listing[1].split(" · ")[0]
    await say(teacher, name)
    await say(teacher, "3")
    await say(teacher, "放弃")
    answered = await say(teacher, "1")  # an answer to question 2, not thrown away
    assert "【第3题/" in answered
    await say(teacher, "放弃")
    assert texts.DISCARDED.format(student=f"{name}（二年级1班）") == await say(teacher, "确定")


async def test_smaller_things_found_in_review(teacher: ChatDriver) -> None:
    assert texts.SAME_NAME.format(count=2, name="李浩然") in await say(teacher, "家访 李浩然")
    listing = numbered(await say(teacher, "家访"))
    name = listing[1].split(" · ")[0]
    await say(teacher, name)
    assert texts.LEFT_EMPTY.format(student=f"{name}（二年级1班）") == await say(teacher, "取消")
    assert await say(teacher, "继续") == texts.NO_DRAFT  # no empty draft left behind
    await visit(teacher, name, TABLET_VISIT)
    await say(teacher, "待跟进")
    await say(teacher, "完成 1")
    assert await say(teacher, "1") == texts.FOLLOWUP_ALREADY_DONE.format(n=1)
    assert texts.NOT_NOW.format(word="提交") == await say(teacher, "提交")


async def test_none_cannot_be_chosen_with_a_risk(teacher: ChatDriver) -> None:
    await say(teacher, "家访")
    await say(teacher, "1")
    for a in TABLET_VISIT[:8]:  # up to the risks question
        reply = await say(teacher, a)
    assert "安全隐患" in reply
    refused = await say(teacher, "1、5")
    assert texts.NOT_WITH_OTHERS.format(option="没有") in refused
