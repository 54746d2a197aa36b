"""The school hears at once: a family unreachable twice in a row, a child in danger (issue 12).

Over the real dispatcher and both databases: the coordinator's message is an outbox row written
in the same transaction as the submission, outside quiet hours, once.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import insert, select

from bot.app import build_dispatcher
from bot.deps import Deps
from config.settings import Secret, Settings, WeComSettings
from handlers import texts
from storage.schema import identities, outbox, staff
from tests.conftest import ChatDriver, FakeClock
from tests.test_conversation import TABLET_VISIT

WECOM = WeComSettings("corp", 1, Secret("s"), Secret("t"), Secret("k" * 43), "http://127.0.0.1:9")


@pytest.fixture
def school_bot(settings: Settings, deps: Deps) -> ChatDriver:
    with deps.db.begin() as conn:
        c001 = conn.execute(select(staff.c.id).where(staff.c.staff_no == "C001")).scalar_one()
        conn.execute(insert(identities).values(channel="wecom", external_id="coord", staff_id=c001))
    return ChatDriver(build_dispatcher(replace(settings, wecom=WECOM), deps))


def alerts(deps: Deps) -> list[tuple[str, str, str]]:
    with deps.db.begin() as conn:
        rows = conn.execute(
            select(outbox.c.recipient, outbox.c.kind, outbox.c.body).order_by(outbox.c.id)
        ).all()
    return [tuple(r) for r in rows]


async def visit(bot: ChatDriver, name: str, answers: list[str]) -> str:
    await bot.say("家访")
    await bot.say(name)
    for a in answers:
        await bot.say(a)
    return await bot.say("提交")


async def test_a_family_unreachable_twice_is_told_to_the_coordinator_once(
    school_bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    first = await visit(school_bot, "周小禾", ["联系不上", "关机"])
    assert "资助协调员" not in first and alerts(deps) == []
    clock.advance(days=1)
    second = await visit(school_bot, "周小禾", ["联系不上", "还是关机"])
    assert "已同时告知学校的资助协调员" in second
    [(recipient, kind, body)] = alerts(deps)
    assert (recipient, kind) == ("coord", "alert")
    assert "周小禾（三年级1班） 的家庭已连续2次联系不上（3月2日、3月3日）" in body
    clock.advance(days=1)
    await visit(school_bot, "周小禾", ["联系不上", "无"])  # a third time: told already
    assert len(alerts(deps)) == 1
    await visit(school_bot, "周小禾", TABLET_VISIT)  # reached: the count starts over
    clock.advance(days=1)
    await visit(school_bot, "周小禾", ["联系不上", "无"])
    assert len(alerts(deps)) == 1


async def test_a_safety_concern_reaches_the_coordinator_the_same_day(
    school_bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    answers = [*TABLET_VISIT[:-1], "爸爸喝酒后打孩子"]  # the note says the child is hit
    done = await visit(school_bot, "陈小树", answers)
    assert "安全隐患" in done and "已同时告知学校的资助协调员" in done
    [(recipient, _kind, body)] = alerts(deps)
    assert recipient == "coord" and "【今日需跟进】张示例老师家访 陈小树（三年级1班）" in body
    assert "安全隐患：爸爸喝酒后打孩子" in body
    with deps.db.begin() as conn:
        due = conn.execute(select(outbox.c.next_attempt_at)).scalar_one()
    assert due == clock.now()  # (09:00 in Shanghai: not in quiet hours)


async def test_at_night_the_alert_waits_for_the_morning(
    school_bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    clock.advance(hours=13)  # 22:00 in Shanghai
    answers = [*TABLET_VISIT[:7], "3", "1", "1", "无"]  # the child is alone at home all day
    await visit(school_bot, "陈小树", answers)
    with deps.db.begin() as conn:
        due = conn.execute(select(outbox.c.next_attempt_at)).scalar_one()
    assert due.hour == 23 and due.minute == 0  # 07:00 in Shanghai


async def test_undoing_the_submission_withdraws_the_unsent_alert(
    school_bot: ChatDriver, deps: Deps
) -> None:
    answers = [*TABLET_VISIT[:-1], "爸爸喝酒后打孩子"]
    await visit(school_bot, "陈小树", answers)
    assert len(alerts(deps)) == 1
    assert "已撤销提交" in await school_bot.say("撤销")
    assert alerts(deps) == []  # a mistaken 打骂 does not reach the coordinator
    await school_bot.say("修改 11")
    await school_bot.say("无")
    await school_bot.say("提交")
    assert alerts(deps) == []  # corrected: nothing urgent any more


async def test_a_school_without_a_reachable_coordinator_is_said_so(
    settings: Settings, deps: Deps
) -> None:
    bot = ChatDriver(build_dispatcher(replace(settings, wecom=WECOM), deps))  # C001: no id
    answers = [*TABLET_VISIT[:-1], "爸爸喝酒后打孩子"]
    done = await visit(bot, "陈小树", answers)
    assert texts.SCHOOL_NOT_REACHABLE in done and alerts(deps) == []
