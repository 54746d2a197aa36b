"""One teacher, one draft, two channels (or a roster import in between): no answer is lost.

Each channel has its own conversation session, so a session's copy of the draft can be stale. The
store keeps a revision per draft; a stale write is refused and the change applied to the draft
as stored. Runs on SQLite and PostgreSQL (where the answer write is held back to the end of the
turn and the stale case is found at flush).
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select

from bot.deps import Deps
from handlers import texts
from storage.demo import demo_roster
from storage.roster import Roster, import_roster
from storage.schema import followups, visits
from tests.conftest import ChatDriver, FakeClock
from tests.test_conversation import TABLET_VISIT, rows, start


def draft_answers(deps: Deps) -> dict[str, object]:
    with deps.db.begin() as conn:
        return dict(conn.execute(select(visits.c.answers)).scalar_one())


async def test_a_stale_session_does_not_overwrite_answers_given_on_another_channel(
    bot: ChatDriver, deps: Deps
) -> None:
    api = ChatDriver(bot.dispatcher, channel="api")
    await start(api)
    assert "【第2题/" in await api.say("3")  # method on the JSON channel
    assert "继续" in await bot.say("继续")  # the same draft on the console
    for answer in ("1", "2", "1"):  # study, device_ok, device_missing, each confirmed
        await bot.say(answer)
    assert draft_answers(deps) == {
        "method": "电话",
        "study": "好",
        "device_ok": "否",
        "device_missing": "平板或电脑",
    }

    # The JSON session still asks question 2; the teacher answers it again from there.
    reply = await api.say("2")
    assert draft_answers(deps) == {
        "method": "电话",
        "study": "一般",
        "device_ok": "否",
        "device_missing": "平板或电脑",
    }
    assert "【第5题/" in reply  # it goes on after what was answered elsewhere


async def test_a_summary_changed_on_another_channel_is_shown_again_before_submitting(
    bot: ChatDriver, deps: Deps
) -> None:
    api = ChatDriver(bot.dispatcher, channel="api")
    await start(bot)
    for answer in TABLET_VISIT:
        summary = await bot.say(answer)
    assert "请核对" in summary
    await api.say("继续")
    await api.say("修改 2")
    await api.say("3")  # study: 差, on the JSON channel
    refreshed = await bot.say("提交")  # the console still shows the old summary
    assert texts.DRAFT_CHANGED in refreshed and "2. 居家学习：差" in refreshed
    [visit] = rows(deps, visits)
    assert visit.status == "draft"
    assert "已提交" in await bot.say("提交")
    [visit] = rows(deps, visits)
    assert visit.status == "submitted" and visit.answers["study"] == "差"


async def test_a_teacher_removed_as_carer_cannot_change_or_submit_the_draft(
    bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    await bot.say("家访")
    await bot.say("沈小云")  # T001 is her carer
    for answer in TABLET_VISIT[:-1]:
        await bot.say(answer)
    demo = demo_roster()
    students = tuple(
        replace(s, carer_no="") if s.student_no == "DEMO0011" else s for s in demo.students
    )
    with deps.db.begin() as conn:
        import_roster(conn, Roster(students=students, staff=demo.staff), now=clock.now())

    gone = texts.DRAFT_GONE.format(student="沈小云（六年级3班）")
    assert await bot.say("无") == gone  # the last answer
    [visit] = rows(deps, visits)
    assert visit.status == "draft" and "other" not in visit.answers
    assert "继续" not in await bot.say("家访")  # and her draft is not offered again


async def test_submitting_after_the_carer_was_removed_is_refused(
    bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    await bot.say("家访")
    await bot.say("沈小云")
    for answer in TABLET_VISIT:
        await bot.say(answer)
    demo = demo_roster()
    students = tuple(
        replace(s, carer_no="") if s.student_no == "DEMO0011" else s for s in demo.students
    )
    with deps.db.begin() as conn:
        import_roster(conn, Roster(students=students, staff=demo.staff), now=clock.now())
    assert await bot.say("提交") == texts.DRAFT_GONE.format(student="沈小云（六年级3班）")
    [visit] = rows(deps, visits)
    assert visit.status == "draft" and rows(deps, followups) == []
