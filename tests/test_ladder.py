"""Follow-ups that close (#14): the group digest, the escalation ladder, coordinators in chat.

Built on the two-week world of `tests.test_schedule` (demo roster, fake inboxes, a controllable
clock) over SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.core.errors import ConfigError
from bot.core.types import StaffRole
from config.calendar import SchoolCalendar
from config.settings import load_settings
from storage import ladder
from storage.schema import followup_events, followups, staff, students
from tests.conftest import ChatDriver
from tests.test_conversation import COUNSELLING, TABLET_VISIT
from tests.test_schedule import World, local, visit, world

__all__ = ["world"]  # the fixture, used by name

MON = date(2026, 3, 2)


async def test_the_group_digest_carries_counts_only(world: World, bot: ChatDriver) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    await visit(bot, "陈小树", COUNSELLING)
    thu2 = date(2026, 3, 12)  # both overdue by more than 3 school days: escalated
    await world.at(local(thu2, 17), "digest")
    [(recipient, group)] = world.group.got
    [private] = [t for t in world.wecom.to("coord") if t.startswith("【家访日报】")]
    assert recipient == "default"
    assert "· 示例区实验小学：已访 2/12，新需求 0，待跟进 2（逾期 2），上报 2" in group
    # The coordinator's own digest names them; the group gets not one name nor detail.
    assert "周小禾" in private and "张示例" in private
    with world.deps.db.begin() as conn:
        names = [r.name for r in conn.execute(select(students.c.name))]
        teachers = [
            r.name
            for r in conn.execute(select(staff.c.name).where(staff.c.role != StaffRole.BUREAU))
        ]
        details = [r.detail for r in conn.execute(select(followups.c.detail))]
    leaked = [w for w in [*names, *teachers, *details] if w in group]
    assert leaked == []
    for kind in ("平板", "心理", "负责"):
        assert kind not in group


def history(world: World) -> list[tuple[str, str | None]]:
    """Every event of every follow-up, in order: (event, staff_no of the person)."""
    with world.deps.db.begin() as conn:
        rows = conn.execute(
            select(followup_events.c.event, staff.c.staff_no)
            .outerjoin(staff, staff.c.id == followup_events.c.staff_id)
            .order_by(followup_events.c.id)
        ).all()
    return [(r.event, r.staff_no) for r in rows]


async def test_an_escalation_is_told_once_and_climbs_to_the_bureau(
    world: World, bot: ChatDriver
) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)  # tablet due Thursday 3/5
    wed2, thu2, fri2 = date(2026, 3, 11), date(2026, 3, 12), date(2026, 3, 13)
    await world.at(local(date(2026, 3, 10), 9), "remind")  # 3 school days overdue: not yet
    assert world.wecom.to("coord") == [] and history(world) == []
    await world.at(local(wed2, 9), "remind")
    [told] = world.wecom.to("coord")
    assert "逾期6天" in told and "确认 序号 备注" in told
    await world.at(local(wed2, 17), "digest")  # the digest lists it; nobody is told again
    assert len([t for t in world.wecom.to("coord") if t.startswith("【跟进上报】")]) == 1
    assert world.dingtalk.to("bureau")[-1].startswith("【家访日报】全区汇总")
    await world.at(local(thu2, 9), "remind")  # one school day unacknowledged: stays
    assert not any(t.startswith("【跟进上报") for t in world.dingtalk.to("bureau"))
    await world.at(local(fri2, 9), "remind")  # two: climbs to the bureau, told once
    await world.at(local(fri2, 17), "digest")
    [climbed] = [t for t in world.dingtalk.to("bureau") if t.startswith("【跟进上报")]
    assert climbed.startswith("【跟进上报·教育局】") and "周小禾" in climbed
    assert history(world) == [
        ("escalated", None),
        ("notified", "C001"),
        ("climbed", None),
        ("notified", "B001"),
    ]


async def test_escalation_in_quiet_hours_waits(world: World, bot: ChatDriver) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    wed2 = date(2026, 3, 11)
    await world.at(local(wed2, 22), "digest")  # run late
    assert world.wecom.to("coord") == []
    await world.at(local(date(2026, 3, 12), 7))
    assert [t[:6] for t in world.wecom.to("coord")] == ["【跟进上报】", "【家访日报】"]


async def test_a_restart_between_escalation_and_notification_tells_once(
    world: World, bot: ChatDriver
) -> None:
    """An escalation committed without its notification (a crash, an older release) is told
    at the next run, exactly once."""
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    wed2 = date(2026, 3, 11)
    with world.deps.db.begin() as conn:
        assert ladder.escalate(conn, date(2026, 3, 6), local(wed2, 9)) == 1
    await world.at(local(wed2, 9, 1), "remind")
    await world.at(local(wed2, 9, 2), "remind")
    await world.at(local(wed2, 17), "digest")
    assert len([t for t in world.wecom.to("coord") if t.startswith("【跟进上报】")]) == 1
    assert history(world) == [("escalated", None), ("notified", "C001")]


def test_school_days_before_skips_weekends_and_holidays() -> None:
    calendar = SchoolCalendar(frozenset({date(2026, 3, 4)}), frozenset({date(2026, 3, 14)}))
    assert calendar.school_days_before(date(2026, 3, 10), 0) == date(2026, 3, 10)
    assert calendar.school_days_before(date(2026, 3, 10), 3) == date(2026, 3, 5)  # Mon, Fri, Thu
    assert calendar.school_days_before(date(2026, 3, 6), 2) == date(2026, 3, 3)  # Wed is off
    assert calendar.school_days_before(date(2026, 3, 16), 1) == date(2026, 3, 14)  # 调休 Sat


def test_the_bureau_setting_is_read_and_checked(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "sqlite:///x.db", "HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS": "5"}
    assert load_settings(env, env_file=None).escalate_bureau_after_days == 5
    assert (
        load_settings({"DATABASE_URL": "sqlite:///x.db"}, env_file=None).escalate_bureau_after_days
        == 2
    )
    with pytest.raises(ConfigError, match="HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS"):
        load_settings({**env, "HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS": "two"}, env_file=None)
