"""Follow-ups that close (#14): the group digest, the escalation ladder, coordinators in chat.

Built on the two-week world of `tests.test_schedule` (demo roster, fake inboxes, a controllable
clock) over SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from bot.core.types import StaffRole
from storage.schema import followups, staff, students
from tests.conftest import ChatDriver
from tests.test_conversation import COUNSELLING, TABLET_VISIT
from tests.test_schedule import World, local, visit, world

__all__ = ["world"]  # the fixture, used by name

MON = date(2026, 3, 2)


async def test_the_group_digest_carries_counts_only(world: World, bot: ChatDriver) -> None:
    world.clock.current = local(MON, 10)
    await visit(bot, "周小禾", TABLET_VISIT)
    await visit(bot, "陈小树", COUNSELLING)
    tue2 = date(2026, 3, 10)  # both overdue by more than 3 days: escalated
    await world.at(local(tue2, 17), "digest")
    [(recipient, group)] = world.group.got
    [private] = world.wecom.to("coord")
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
