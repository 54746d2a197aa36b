"""Retention (issue 16 item 2): after HOMEVISIT_RETENTION_DAYS the scheduled job erases notes and
sensitive answers of older visits and anonymises students deactivated that long; outbox bodies go
after 30 days. The counts stay. Both backends, the real scheduler facade. Names are fictional."""

from __future__ import annotations

import json
from dataclasses import replace

from sqlalchemy import func, insert, select, update

from bot.deps import Deps
from bot.scheduler import EXPIRED, JobScheduler
from storage.audit import verify_chain
from storage.demo import demo_roster
from storage.erasure import ERASED_TEXT
from storage.maintenance import ANONYMOUS
from storage.roster import import_roster
from storage.schema import assignments, audit_log, followups, outbox, students, visits
from tests.conftest import ChatDriver, FakeClock
from tests.test_erasure import everything
from tests.test_schedule import World, world  # noqa: F401  (the fixture)
from tests.test_sensitive import NOTE, OTHER, visit_zhou


def _visit(deps: Deps) -> dict[str, object]:
    with deps.db.begin() as conn:
        answers = conn.execute(select(visits.c.answers)).scalar_one()
    return dict(answers)


def _followups(deps: Deps) -> list[tuple[str, str | None]]:
    with deps.db.begin() as conn:
        rows = conn.execute(select(followups.c.detail, followups.c.note)).all()
    return sorted((r.detail, r.note) for r in rows)


def _audits(deps: Deps) -> list[dict[str, object]]:
    with deps.db.begin() as conn:
        rows = conn.execute(
            select(audit_log.c.detail).where(audit_log.c.action == "retention")
        ).scalars()
        return [json.loads(r) for r in rows]


async def test_old_visits_lose_sensitive_answers_and_notes_but_keep_their_counts(
    world: World,  # noqa: F811
    bot: ChatDriver,
    deps: Deps,
    clock: FakeClock,
) -> None:
    await visit_zhou(bot)
    with deps.db.begin() as conn:
        fid = conn.execute(select(followups.c.id).where(followups.c.kind == "living_aid")).scalar()
        conn.execute(update(followups).where(followups.c.id == fid).values(note="米面已送到"))
    scheduler = JobScheduler(world.jobs, clock)

    clock.advance(days=729)
    assert (await scheduler.retention()).visits == 0
    assert _visit(deps)["life_note"] == NOTE

    clock.advance(days=2)
    done = await scheduler.retention()
    assert done.visits == 1
    answers = _visit(deps)
    assert answers["method"] == "电话" and answers["life_needs"] == ["食品和生活物资"]
    for key in ("life_note", "emotion", "relation", "guardian", "risks", "other"):
        assert key not in answers
    details = _followups(deps)
    assert ("食品和生活物资", None) in details  # the note that followed it is gone too
    assert [d for d in details if d[0] == EXPIRED] == [(EXPIRED, None), (EXPIRED, None)]
    held = everything(deps)
    assert NOTE not in held and OTHER not in held and "米面已送到" not in held
    with deps.db.begin() as conn:  # the counts stay
        assert conn.execute(select(func.count()).select_from(visits)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(followups)).scalar() == 3
        assert verify_chain(conn).ok
    assert _audits(deps) == [{"days": 730, "visits": 1, "students": 0, "messages": 0}]

    assert not (await scheduler.retention()).anything  # nothing left: no second entry
    assert len(_audits(deps)) == 1


async def test_students_deactivated_that_long_are_anonymised(
    world: World,  # noqa: F811
    bot: ChatDriver,
    deps: Deps,
    clock: FakeClock,
) -> None:
    await visit_zhou(bot)
    roster = demo_roster()
    without = replace(roster, students=tuple(s for s in roster.students if s.name != "周小禾"))
    with deps.db.begin() as conn:
        assert import_roster(conn, without, now=clock.now()).students_deactivated == 1
    world.jobs.settings = replace(world.jobs.settings, retention_days=400)
    scheduler = JobScheduler(world.jobs, clock)
    clock.advance(days=399)
    assert (await scheduler.retention()).students == 0
    clock.advance(days=2)
    assert (await scheduler.retention()).students == 1
    assert "周小禾" not in everything(deps)
    with deps.db.begin() as conn:
        row = conn.execute(select(students).where(students.c.name == ANONYMOUS)).one()
        assert row.student_no.startswith("erased-") and not row.active
        assert (
            conn.execute(
                select(func.count())
                .select_from(assignments)
                .where(assignments.c.student_id == row.id)
            ).scalar()
            == 0
        )
        assert (
            conn.execute(  # its visit still counts, without what was sensitive
                select(func.count()).select_from(visits).where(visits.c.student_id == row.id)
            ).scalar()
            == 1
        )


async def test_message_bodies_go_after_30_days(
    world: World,  # noqa: F811
    deps: Deps,
    clock: FakeClock,
) -> None:
    with deps.db.begin() as conn:
        base = {
            "channel": "wecom", "recipient": "li", "kind": "reminder", "attempts": 1,
            "next_attempt_at": clock.now(), "created_at": clock.now(),
        }  # fmt: skip
        conn.execute(
            insert(outbox),
            [
                {**base, "idempotency_key": "a", "status": "sent", "body": "王小雨 待家访"},
                {**base, "idempotency_key": "b", "status": "failed", "body": "陈小树 待家访"},
            ],
        )
    scheduler = JobScheduler(world.jobs, clock)
    clock.advance(days=29)
    assert (await scheduler.retention()).messages == 0
    clock.advance(days=2)
    assert (await scheduler.retention()).messages == 2
    with deps.db.begin() as conn:
        assert set(conn.execute(select(outbox.c.body)).scalars()) == {ERASED_TEXT}
