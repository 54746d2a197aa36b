"""The `Store` and `Turns` contract, one suite over every backend: memory, SQLite, PostgreSQL
(directly and through PgBouncer in transaction mode).

Every test goes through `Turns.run` and the port's methods only, so what it asserts is what the
conversation may rely on whatever the backend (aiogram runs its storage suite the same way). Each
backend starts with the demo roster: T001 teaches 周小禾, 陈小树 and two 王小雨, and is the carer
of 沈小云; T002 teaches 孙小川.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import delete, insert, select, update

from bot.core.errors import ConcurrentUpdate, DuplicateMessage
from bot.core.ports import Store, Turns
from bot.core.types import (
    ConversationKey,
    FollowUpStatus,
    NewFollowUp,
    Session,
    Staff,
    StaffRole,
)
from storage.demo import demo_roster, load_demo
from storage.memory import MemoryStore, MemoryTurns
from storage.schema import (
    aid_allocations,
    assignments,
    console_tokens,
    followup_events,
    followups,
    metadata,
    staff,
    students,
)
from storage.store import SqlTurns
from tests.conftest import POOLED_BACKENDS, FakeClock, make_db_url, open_db

T = TypeVar("T")
KEY = ConversationKey("api", "T001")


@dataclass
class Backend:
    """A backend with the demo roster, and the roster changes a test needs (as an import)."""

    turns: Turns
    staff_ids: dict[str, int]
    student_ids: dict[str, int]
    reassign: Callable[[int, str, int | None], None]
    deactivate: Callable[[int], None]
    tokens: Callable[[], dict[str, tuple[int, datetime]]]  # hash -> (staff id, expires)
    escalate: Callable[[int], None]  # as the job's ladder step does
    events: Callable[[], list[tuple[int, str, int | None]]]  # (follow-up, event, person)
    allocate: Callable[[int, str, str], int]  # an aid item against a follow-up, as the console

    async def run(self, fn: Callable[[Store], T]) -> T:
        return await self.turns.run(fn)


def _memory(clock: FakeClock) -> Iterator[Backend]:
    store = MemoryStore()
    store.load_roster(demo_roster())
    staff_ids = {s.staff_no: s.id for s in store.data.staff.values()}
    student_ids = {s.student_no: s.id for s in store.data.students.values()}

    def escalate(followup_id: int) -> None:
        f = store.data.followups[followup_id]
        f.status, f.escalated_at = FollowUpStatus.ESCALATED, f.created_at

    yield Backend(
        MemoryTurns(store),
        staff_ids,
        student_ids,
        store.assign,
        store.data.active_staff.discard,
        lambda: {h: (sid, exp) for h, (sid, _, exp) in store.data.console_tokens.items()},
        escalate,
        lambda: [(e[0], e[1], e[3]) for e in store.data.events],
        store.add_allocation,
    )


def _sql(url: str, clock: FakeClock) -> Iterator[Backend]:
    db = open_db(url)
    metadata.create_all(db.engine)
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
        staff_ids = {no: i for no, i in conn.execute(select(staff.c.staff_no, staff.c.id))}
        student_ids = {
            no: i for no, i in conn.execute(select(students.c.student_no, students.c.id))
        }

    def reassign(student_id: int, role: str, staff_id: int | None) -> None:
        with db.begin() as conn:
            where = (assignments.c.student_id == student_id) & (assignments.c.role == role)
            conn.execute(delete(assignments).where(where))
            if staff_id is not None:
                row = {"student_id": student_id, "role": role, "staff_id": staff_id}
                conn.execute(insert(assignments).values(row))

    def deactivate(staff_id: int) -> None:
        with db.begin() as conn:
            conn.execute(update(staff).where(staff.c.id == staff_id).values(active=False))

    def tokens() -> dict[str, tuple[int, datetime]]:
        with db.begin() as conn:
            rows = conn.execute(
                select(
                    console_tokens.c.token_hash,
                    console_tokens.c.staff_id,
                    console_tokens.c.expires_at,
                )
            )
            return {h: (sid, exp) for h, sid, exp in rows}

    def escalate(followup_id: int) -> None:
        with db.begin() as conn:
            conn.execute(
                update(followups)
                .where(followups.c.id == followup_id)
                .values(status="escalated", escalated_at=clock.now())
            )

    def events() -> list[tuple[int, str, int | None]]:
        with db.begin() as conn:
            rows = conn.execute(
                select(
                    followup_events.c.followup_id,
                    followup_events.c.event,
                    followup_events.c.staff_id,
                ).order_by(followup_events.c.id)
            )
            return [tuple(r) for r in rows]

    def allocate(followup_id: int, item: str, status: str) -> int:
        with db.begin() as conn:
            student = conn.execute(
                select(followups.c.student_id).where(followups.c.id == followup_id)
            ).scalar_one()
            return int(
                conn.execute(
                    insert(aid_allocations)
                    .values(
                        school_id=0,
                        item=item,
                        followup_id=followup_id,
                        active_followup_id=followup_id,
                        student_id=student,
                        method="handed",
                        status=status,
                        allocated_at=clock.now(),
                        allocated_by="C001",
                    )
                    .returning(aid_allocations.c.id)
                ).scalar_one()
            )

    try:
        yield Backend(
            SqlTurns(db),
            staff_ids,
            student_ids,
            reassign,
            deactivate,
            tokens,
            escalate,
            events,
            allocate,
        )
    finally:
        db.close()


@pytest.fixture(params=["memory", *POOLED_BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    if request.param == "memory":
        yield from _memory(clock)
        return
    for url in make_db_url(request.param, tmp_path):
        yield from _sql(url, clock)


# ---------------------------------------------------------------------------- who is talking
async def test_find_staff_by_staff_number_or_platform_identity(backend: Backend) -> None:
    t001 = await backend.run(lambda s: s.find_staff("api", "T001"))
    assert t001 is not None
    assert (t001.staff_no, t001.name, t001.role) == ("T001", "张示例", StaffRole.TEACHER)
    assert t001.school_id is not None
    assert await backend.run(lambda s: s.find_staff("console", "T001")) == t001
    assert await backend.run(lambda s: s.find_staff("wecom", "zhanglaoshi")) == t001
    assert await backend.run(lambda s: s.find_staff("dingtalk", "dt_zhang")) == t001
    bureau = await backend.run(lambda s: s.find_staff("api", "B001"))
    assert bureau is not None and bureau.school_id is None
    for channel, user in (("api", "NOPE"), ("wecom", "T001"), ("dingtalk", "zhanglaoshi")):

        def find(s: Store, c: str = channel, u: str = user) -> Staff | None:
            return s.find_staff(c, u)

        assert await backend.run(find) is None


async def test_deactivated_staff_are_not_found(backend: Backend) -> None:
    backend.deactivate(backend.staff_ids["T001"])
    assert await backend.run(lambda s: s.find_staff("api", "T001")) is None
    assert await backend.run(lambda s: s.find_staff("wecom", "zhanglaoshi")) is None


# ---------------------------------------------------------------------------- sessions
async def test_a_session_is_saved_and_loaded_with_its_version(
    backend: Backend, clock: FakeClock
) -> None:
    assert await backend.run(lambda s: s.load_session(KEY)) is None
    expires = clock.now() + timedelta(hours=1)

    def save_new(s: Store) -> Session:
        session = Session("choosing", {"choices": [3, 1], "nested": {"a": "学"}}, expires)
        s.save_session(KEY, session, clock.now())
        return session

    saved = await backend.run(save_new)
    assert saved.version == 1
    loaded = await backend.run(lambda s: s.load_session(KEY))
    assert loaded == Session("choosing", {"choices": [3, 1], "nested": {"a": "学"}}, expires, 1)

    def change(s: Store) -> None:
        session = s.load_session(KEY)
        assert session is not None
        session.state = "idle"
        session.data = {}
        s.save_session(KEY, session, clock.now())

    await backend.run(change)
    again = await backend.run(lambda s: s.load_session(KEY))
    assert again is not None and (again.state, again.data, again.version) == ("idle", {}, 2)
    other = await backend.run(lambda s: s.load_session(ConversationKey("wecom", "T001")))
    assert other is None  # one session per channel and user


async def test_saving_a_stale_session_is_a_concurrent_update_and_keeps_nothing(
    backend: Backend, clock: FakeClock
) -> None:
    await backend.run(lambda s: s.save_session(KEY, Session("idle"), clock.now()))
    stale = Session("choosing", {"choices": [1]}, version=0)  # as if loaded before the save

    def write_stale(s: Store) -> None:
        s.remember_message("api", "T001", "m-1", ["x"], clock.now())
        s.save_session(KEY, stale, clock.now())

    with pytest.raises(ConcurrentUpdate):
        await backend.run(write_stale)
    kept = await backend.run(lambda s: s.load_session(KEY))
    assert kept is not None and (kept.state, kept.version) == ("idle", 1)
    assert await backend.run(lambda s: s.seen_message("api", "T001", "m-1")) is None


# ---------------------------------------------------------------------------- de-duplication
async def test_a_message_id_is_remembered_per_sender(backend: Backend, clock: FakeClock) -> None:
    now = clock.now()
    assert await backend.run(lambda s: s.seen_message("api", "T001", "m-1")) is None
    await backend.run(lambda s: s.remember_message("api", "T001", "m-1", ["好", "的"], now))
    assert await backend.run(lambda s: s.seen_message("api", "T001", "m-1")) == ["好", "的"]
    assert await backend.run(lambda s: s.seen_message("api", "T002", "m-1")) is None
    assert await backend.run(lambda s: s.seen_message("wecom", "T001", "m-1")) is None
    await backend.run(lambda s: s.remember_message("api", "T002", "m-1", ["other"], now))
    assert await backend.run(lambda s: s.seen_message("api", "T002", "m-1")) == ["other"]


async def test_a_known_message_id_fails_the_turn_and_keeps_none_of_it(
    backend: Backend, clock: FakeClock
) -> None:
    now = clock.now()
    await backend.run(lambda s: s.remember_message("api", "T001", "m-1", ["first"], now))

    def retried(s: Store) -> None:
        s.save_session(KEY, Session("choosing"), now)
        s.remember_message("api", "T001", "m-1", ["second"], now)

    with pytest.raises(DuplicateMessage) as info:
        await backend.run(retried)
    assert (info.value.channel, info.value.user_id, info.value.message_id) == (
        "api",
        "T001",
        "m-1",
    )
    assert await backend.run(lambda s: s.load_session(KEY)) is None
    assert await backend.run(lambda s: s.seen_message("api", "T001", "m-1")) == ["first"]


# ---------------------------------------------------------------------------- students, drafts
async def test_my_students_are_the_teachers_active_students_with_their_facts(
    backend: Backend,
) -> None:
    t001 = backend.staff_ids["T001"]
    listing = await backend.run(lambda s: s.my_students(t001))
    by_no = {s.student_no: s for s in listing}
    assert set(by_no) == {"DEMO0001", "DEMO0002", "DEMO0003", "DEMO0004", "DEMO0011"}
    chen = by_no["DEMO0002"]
    assert (chen.name, chen.class_name, chen.categories) == (
        "陈小树",
        "三年级1班",
        ("低保", "留守"),
    )
    assert (chen.last_visit_at, chen.last_unreached_at, chen.draft_at) == (None, None, None)
    assert chen.open_followups == 0 and chen.id == backend.student_ids["DEMO0002"]


async def test_a_draft_is_started_found_saved_by_revision_and_loaded(
    backend: Backend, clock: FakeClock
) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]
    found = await backend.run(lambda s: s.find_student(t001, zhou))
    assert found is not None
    student, draft = found
    assert (student.id, student.name, student.class_name, draft) == (
        zhou,
        "周小禾",
        "三年级1班",
        None,
    )
    assert await backend.run(lambda s: s.find_draft(t001)) is None

    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "home_visit", "1", now))
    draft = await backend.run(lambda s: s.load_draft(t001, visit))
    assert draft is not None and (draft.answers, draft.revision) == ({}, 0)
    assert draft.student == student and draft.updated_at == now

    later = now + timedelta(minutes=1)
    assert await backend.run(lambda s: s.save_answers(visit, {"method": "电话"}, 0, later))
    assert not await backend.run(lambda s: s.save_answers(visit, {"method": "x"}, 0, later))
    assert await backend.run(lambda s: s.save_answers(visit, {"method": "微信视频"}, 1, later))
    for read in (
        lambda s: s.load_draft(t001, visit),
        lambda s: s.find_draft(t001),
        lambda s: (s.find_student(t001, zhou) or (None, None))[1],
    ):
        d = await backend.run(read)
        assert d is not None and (d.visit_id, d.answers, d.revision) == (
            visit,
            {"method": "微信视频"},
            2,
        )
        assert d.updated_at == later
    [zhou_listed] = [s for s in await backend.run(lambda s: s.my_students(t001)) if s.id == zhou]
    assert zhou_listed.draft_at == later
    assert await backend.run(lambda s: s.load_draft(backend.staff_ids["T002"], visit)) is None


async def test_find_draft_is_the_latest_changed_of_students_still_the_teachers(
    backend: Backend, clock: FakeClock
) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou, shen = backend.student_ids["DEMO0003"], backend.student_ids["DEMO0011"]
    first = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", now))
    second = await backend.run(lambda s: s.start_visit(t001, shen, "f", "1", now))
    await backend.run(lambda s: s.save_answers(first, {"a": 1}, 0, now + timedelta(seconds=5)))
    latest = await backend.run(lambda s: s.find_draft(t001))
    assert latest is not None and latest.visit_id == first
    await backend.run(lambda s: s.save_answers(second, {"a": 2}, 0, now + timedelta(seconds=9)))
    latest = await backend.run(lambda s: s.find_draft(t001))
    assert latest is not None and latest.visit_id == second

    backend.reassign(shen, "carer", None)  # a roster import moves 沈小云 away from T001
    latest = await backend.run(lambda s: s.find_draft(t001))
    assert latest is not None and latest.visit_id == first
    assert await backend.run(lambda s: s.load_draft(t001, second)) is None
    assert await backend.run(lambda s: s.find_student(t001, shen)) is None
    assert not await backend.run(lambda s: s.save_answers(second, {"a": 3}, 1, now))


async def test_submitting_stores_the_visit_and_its_followups(
    backend: Backend, clock: FakeClock
) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]
    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", now))
    needs = [
        NewFollowUp("device", "平板或电脑", date(2026, 3, 9)),
        NewFollowUp("psych", "需要心理辅导", date(2026, 3, 5)),
    ]
    answers = {"method": "电话", "device_ok": "否"}
    assert not await backend.run(
        lambda s: s.submit_visit(visit, 5, answers, "电话", True, needs, now)  # stale
    )
    assert await backend.run(lambda s: s.submit_visit(visit, 0, answers, "电话", True, needs, now))
    assert not await backend.run(lambda s: s.submit_visit(visit, 1, answers, "电话", True, [], now))
    assert await backend.run(lambda s: s.load_draft(t001, visit)) is None
    assert not await backend.run(lambda s: s.save_answers(visit, {}, 1, now))

    items = await backend.run(lambda s: s.open_followups(t001))
    assert [(f.kind, f.detail, f.due_date, f.student_name, f.class_name) for f in items] == [
        ("psych", "需要心理辅导", date(2026, 3, 5), "周小禾", "三年级1班"),
        ("device", "平板或电脑", date(2026, 3, 9), "周小禾", "三年级1班"),
    ]
    [zhou_listed] = [s for s in await backend.run(lambda s: s.my_students(t001)) if s.id == zhou]
    assert (zhou_listed.last_visit_at, zhou_listed.open_followups) == (now, 2)
    assert zhou_listed.draft_at is None
    assert await backend.run(lambda s: s.open_followups(backend.staff_ids["T002"])) == []


async def test_a_visit_that_did_not_reach_the_family_counts_as_an_attempt(
    backend: Backend, clock: FakeClock
) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]
    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", now))
    await backend.run(lambda s: s.submit_visit(visit, 0, {}, "联系不上", False, [], now))
    [zhou_listed] = [s for s in await backend.run(lambda s: s.my_students(t001)) if s.id == zhou]
    assert (zhou_listed.last_visit_at, zhou_listed.last_unreached_at) == (None, now)
    coverage = await backend.run(lambda s: s.coverage(t001, now - timedelta(days=1), now.date()))
    assert coverage.visited == 0


async def test_a_discarded_draft_is_gone(backend: Backend, clock: FakeClock) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]
    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", now))
    await backend.run(lambda s: s.discard_visit(visit, now))
    assert await backend.run(lambda s: s.load_draft(t001, visit)) is None
    assert await backend.run(lambda s: s.find_draft(t001)) is None
    assert not await backend.run(lambda s: s.save_answers(visit, {}, 0, now))
    assert not await backend.run(lambda s: s.submit_visit(visit, 0, {}, None, True, [], now))


# ---------------------------------------------------------------------------- follow-ups
async def test_closing_a_followup_and_the_coverage(backend: Backend, clock: FakeClock) -> None:
    t001, t002, now = backend.staff_ids["T001"], backend.staff_ids["T002"], clock.now()
    zhou = backend.student_ids["DEMO0003"]
    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", now))
    needs = [NewFollowUp("device", "平板", now.date() - timedelta(days=1))]
    await backend.run(lambda s: s.submit_visit(visit, 0, {}, "电话", True, needs, now))
    [item] = await backend.run(lambda s: s.open_followups(t001))

    coverage = await backend.run(lambda s: s.coverage(t001, now - timedelta(days=14), now.date()))
    assert (coverage.visited, coverage.total) == (1, 5)
    assert (coverage.open_followups, coverage.overdue_followups) == (1, 1)
    later = await backend.run(lambda s: s.coverage(t001, now + timedelta(days=1), now.date()))
    assert later.visited == 0

    assert await backend.run(lambda s: s.close_followup(t002, item.id, "x", now)) is None
    closed = await backend.run(lambda s: s.close_followup(t001, item.id, "已送到", now))
    assert closed is not None and (closed.id, closed.kind, closed.student_name) == (
        item.id,
        "device",
        "周小禾",
    )
    assert closed.status.value == "done"
    assert await backend.run(lambda s: s.close_followup(t001, item.id, "again", now)) is None
    assert await backend.run(lambda s: s.open_followups(t001)) == []
    coverage = await backend.run(lambda s: s.coverage(t001, now - timedelta(days=14), now.date()))
    assert (coverage.open_followups, coverage.overdue_followups) == (0, 0)


# ---------------------------------------------------------------------------- coordinators (#14)
async def _two_needs(backend: Backend, clock: FakeClock) -> tuple[int, int]:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]
    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", now))
    needs = [
        NewFollowUp("device", "平板", now.date() - timedelta(days=9)),
        NewFollowUp("data", "流量卡", now.date() + timedelta(days=3)),
    ]
    await backend.run(lambda s: s.submit_visit(visit, 0, {}, "电话", True, needs, now))
    late, fresh = await backend.run(lambda s: s.open_followups(t001))
    return late.id, fresh.id


async def _who(backend: Backend, staff_no: str) -> Staff:
    found = await backend.run(lambda s: s.find_staff("api", staff_no))
    assert found is not None
    return found


async def test_a_coordinator_sees_and_acts_on_their_schools_followups_only(
    backend: Backend, clock: FakeClock
) -> None:
    late, fresh = await _two_needs(backend, clock)
    now, today = clock.now(), clock.now().date()
    coord, bureau, teacher = [await _who(backend, n) for n in ("C001", "B001", "T001")]
    elsewhere = Staff(coord.id, "C001", coord.name, StaffRole.COORDINATOR, 999)
    overdue = await backend.run(lambda s: s.scoped_followups(coord, False, today))
    assert [(f.id, f.student_name, f.owner_name) for f in overdue] == [(late, "周小禾", "张示例")]
    assert await backend.run(lambda s: s.scoped_followups(coord, True, today)) == []
    assert await backend.run(lambda s: s.scoped_followups(coord, False, today, 0)) == []
    assert await backend.run(lambda s: s.scoped_followups(elsewhere, False, today)) == []
    assert await backend.run(lambda s: s.scoped_followups(teacher, False, today)) == []
    assert [
        f.id for f in await backend.run(lambda s: s.scoped_followups(bureau, False, today))
    ] == [late]
    # Not escalated: nothing to acknowledge.
    assert not await backend.run(lambda s: s.acknowledge_followup(coord, late, "", now))
    assert await backend.run(lambda s: s.scoped_counts(coord, today)) == (1, 0, 0)
    backend.escalate(late)
    assert await backend.run(lambda s: s.scoped_counts(bureau, today)) == (1, 1, 1)
    assert await backend.run(lambda s: s.scoped_counts(elsewhere, today)) == (0, 0, 0)
    [escalated] = await backend.run(lambda s: s.scoped_followups(coord, True, today))
    assert (escalated.id, escalated.holder_name) == (late, None)
    assert not await backend.run(lambda s: s.acknowledge_followup(elsewhere, late, "", now))
    assert await backend.run(lambda s: s.acknowledge_followup(coord, late, "已联系", now))
    assert not await backend.run(lambda s: s.acknowledge_followup(bureau, late, "", now))
    assert await backend.run(lambda s: s.scoped_counts(coord, today)) == (1, 1, 0)
    seen = await backend.run(lambda s: s.scoped_followup(bureau, late))
    assert seen is not None and seen.holder_name == coord.name

    # 转交: only to active staff of the student's school.
    t002, b001 = backend.staff_ids["T002"], backend.staff_ids["B001"]
    assert not await backend.run(lambda s: s.reassign_followup(coord, fresh, b001, now))
    assert not await backend.run(lambda s: s.reassign_followup(elsewhere, fresh, t002, now))
    assert await backend.run(lambda s: s.reassign_followup(coord, fresh, t002, now))
    assert [f.id for f in await backend.run(lambda s: s.open_followups(t002))] == [fresh]
    # 完成 by the coordinator, in scope only.
    assert await backend.run(lambda s: s.close_scoped_followup(elsewhere, fresh, "x", now)) is None
    done = await backend.run(lambda s: s.close_scoped_followup(coord, fresh, "已送卡", now))
    assert done is not None and done.status is FollowUpStatus.DONE
    assert await backend.run(lambda s: s.close_scoped_followup(coord, fresh, "x", now)) is None
    assert backend.events() == [
        (late, "acknowledged", coord.id),
        (fresh, "reassigned", t002),
        (fresh, "done", coord.id),
    ]
    member = await backend.run(lambda s: s.staff_member("T002"))
    assert member is not None and (member.name, member.school_id) == ("李示例", coord.school_id)
    assert await backend.run(lambda s: s.staff_member("T404")) is None


async def test_coverage_needs_and_the_unvisited_in_scope(
    backend: Backend, clock: FakeClock
) -> None:
    late, _ = await _two_needs(backend, clock)  # 周小禾 visited (reached) now
    since = clock.now() - timedelta(days=14)
    coord, bureau, teacher = [await _who(backend, n) for n in ("C001", "B001", "T001")]
    elsewhere = Staff(coord.id, "C001", coord.name, StaffRole.COORDINATOR, 999)
    by_class = await backend.run(lambda s: s.scoped_coverage(coord, since))
    assert sum(g.total for g in by_class) == 12 and sum(g.visited for g in by_class) == 1
    assert [g.visited for g in by_class if g.label == "三年级1班"] == [1]
    [school] = await backend.run(lambda s: s.scoped_coverage(bureau, since))
    assert (school.label, school.visited, school.total) == ("示例区实验小学", 1, 12)
    assert await backend.run(lambda s: s.scoped_coverage(teacher, since)) == []
    assert await backend.run(lambda s: s.scoped_coverage(elsewhere, since)) == []
    later = clock.now() + timedelta(days=1)
    assert sum(g.visited for g in await backend.run(lambda s: s.scoped_coverage(coord, later))) == 0

    needs = await backend.run(lambda s: s.scoped_needs(coord, since))
    assert [(n.kind, n.found, n.still_open) for n in needs] == [("data", 1, 1), ("device", 1, 1)]
    await backend.run(lambda s: s.close_followup(backend.staff_ids["T001"], late, "x", clock.now()))
    assert [(n.kind, n.found, n.still_open) for n in await backend.run(
        lambda s: s.scoped_needs(coord, later)
    )] == [("data", 0, 1)]  # fmt: skip

    unvisited = await backend.run(lambda s: s.scoped_unvisited(coord, since, 100))
    assert len(unvisited) == 11 and "周小禾" not in [u.student_name for u in unvisited]
    assert [u.teacher_no for u in unvisited] == sorted(u.teacher_no for u in unvisited)
    assert len(await backend.run(lambda s: s.scoped_unvisited(bureau, since, 3))) == 3
    assert await backend.run(lambda s: s.scoped_unvisited(elsewhere, since, 100)) == []


async def test_followups_to_check_are_open_or_done_since_the_last_visit(
    backend: Backend, clock: FakeClock
) -> None:
    late, fresh = await _two_needs(backend, clock)
    t001, zhou = backend.staff_ids["T001"], backend.student_ids["DEMO0003"]
    clock.advance(days=1)
    await backend.run(lambda s: s.close_followup(t001, late, "送到", clock.now()))
    checks = await backend.run(lambda s: s.followups_to_check(zhou))
    assert [(f.id, f.status.value, f.note) for f in checks] == [
        (late, "done", "送到"),
        (fresh, "open", None),
    ]
    clock.advance(days=1)  # the next visit: what was done before it is no longer asked
    visit = await backend.run(lambda s: s.start_visit(t001, zhou, "f", "1", clock.now()))
    again = [NewFollowUp("device", "平板", clock.now().date(), reopens=late)]
    await backend.run(lambda s: s.submit_visit(visit, 0, {}, "电话", True, again, clock.now()))
    checks = await backend.run(lambda s: s.followups_to_check(zhou))
    assert checks[0].id == fresh and len(checks) == 2
    assert await backend.run(lambda s: s.followups_to_check(backend.student_ids["DEMO0001"])) == []


async def test_an_allocated_aid_item_is_asked_about_until_settled(
    backend: Backend, clock: FakeClock
) -> None:
    late, fresh = await _two_needs(backend, clock)
    zhou = backend.student_ids["DEMO0003"]
    given = backend.allocate(late, "平板电脑", "delivered")
    checks = await backend.run(lambda s: s.followups_to_check(zhou))
    assert [(f.id, f.aid_item, f.allocation_id) for f in checks] == [
        (late, "平板电脑", given),
        (fresh, "", 0),
    ]
    assert await backend.run(lambda s: s.settle_allocation(given, "unusable", clock.now()))
    assert not await backend.run(lambda s: s.settle_allocation(given, "in_use", clock.now()))
    checks = await backend.run(lambda s: s.followups_to_check(zhou))
    assert [(f.id, f.aid_item, f.allocation_id) for f in checks] == [(late, "", 0), (fresh, "", 0)]
    assert not await backend.run(lambda s: s.settle_allocation(given + 999, "in_use", clock.now()))
    with pytest.raises(ValueError):
        await backend.run(lambda s: s.settle_allocation(given, "lost", clock.now()))
    other = backend.allocate(fresh, "4G流量卡", "allocated")
    assert await backend.run(lambda s: s.settle_allocation(other, "in_use", clock.now()))
    checks = await backend.run(lambda s: s.followups_to_check(zhou))
    assert [(f.id, f.aid_item) for f in checks] == [(late, ""), (fresh, "")]


async def test_aid_stock_needs_allocation_and_delivery_in_chat(
    backend: Backend, clock: FakeClock
) -> None:
    late, fresh = await _two_needs(backend, clock)
    coord, bureau, teacher = [await _who(backend, n) for n in ("C001", "B001", "T001")]
    now = clock.now()
    assert await backend.run(lambda s: s.aid_stock(coord)) == {}
    assert await backend.run(lambda s: s.change_aid_stock(coord, "平板电脑", 2, now)) == 2
    assert await backend.run(lambda s: s.change_aid_stock(coord, "平板电脑", -3, now)) is None
    assert await backend.run(lambda s: s.change_aid_stock(bureau, "平板电脑", 5, now)) == 5
    assert await backend.run(lambda s: s.aid_stock(coord)) == {"平板电脑": 2}
    assert await backend.run(lambda s: s.aid_stock(bureau)) == {"平板电脑": 5}  # the pool

    needs = await backend.run(lambda s: s.aid_needs(coord, ["device"], now, 10))
    assert [(n.followup_id, n.student_name, n.aid_categories, n.owner_no) for n in needs] == [
        (late, "周小禾", ("残疾",), "T001")
    ]
    assert await backend.run(lambda s: s.aid_needs(coord, ["device"], now, 10, fresh)) == []
    both = await backend.run(lambda s: s.aid_needs(bureau, ["device", "data"], now, 10))
    assert {n.followup_id for n in both} == {late, fresh}
    assert await backend.run(lambda s: s.deliver_aid(coord, late, now)) is None  # none yet

    taken = await backend.run(lambda s: s.allocate_aid(coord, "平板电脑", late, "handed", "", now))
    assert taken.allocation_id and taken.left == 1 and not taken.taken
    assert await backend.run(lambda s: s.aid_needs(coord, ["device"], now, 10)) == []
    again = await backend.run(lambda s: s.allocate_aid(coord, "平板电脑", late, "handed", "", now))
    assert again.allocation_id == 0 and again.taken
    assert await backend.run(lambda s: s.aid_stock(coord)) == {"平板电脑": 1}
    short = await backend.run(lambda s: s.allocate_aid(coord, "流量包", fresh, "handed", "", now))
    assert (short.allocation_id, short.left, short.taken) == (0, 0, False)

    other = await _who(backend, "T002")
    assert await backend.run(lambda s: s.deliver_aid(other, late, now)) is None  # not theirs
    assert await backend.run(lambda s: s.deliver_aid(teacher, late, now)) == "平板电脑"
    assert await backend.run(lambda s: s.deliver_aid(coord, late, now)) == ""  # twice
    checks = await backend.run(lambda s: s.followups_to_check(backend.student_ids["DEMO0003"]))
    assert (checks[0].id, checks[0].aid_item, checks[0].allocation_id) == (
        late,
        "平板电脑",
        taken.allocation_id,
    )


async def test_a_teachers_done_is_history_and_undo_takes_it_back(
    backend: Backend, clock: FakeClock
) -> None:
    late, _ = await _two_needs(backend, clock)
    t001, now = backend.staff_ids["T001"], clock.now()
    await backend.run(lambda s: s.close_followup(t001, late, "送到", now))
    assert backend.events() == [(late, "done", t001)]
    await backend.run(lambda s: s.reopen_followup(t001, late))
    assert backend.events() == []


async def test_undo_puts_an_escalated_follow_up_back_on_the_ladder(
    backend: Backend, clock: FakeClock
) -> None:
    late, fresh = await _two_needs(backend, clock)
    t001, now = backend.staff_ids["T001"], clock.now()
    backend.escalate(late)
    for fid in (late, fresh):

        def close_and_undo(s: Store, fid: int = fid) -> None:
            s.close_followup(t001, fid, "送到", now)
            s.reopen_followup(t001, fid)

        await backend.run(close_and_undo)
    statuses = {f.id: f.status for f in await backend.run(lambda s: s.open_followups(t001))}
    assert statuses == {late: FollowUpStatus.ESCALATED, fresh: FollowUpStatus.OPEN}


# ---------------------------------------------------------------------------- console links
async def test_a_console_token_is_stored_by_its_hash_once(
    backend: Backend, clock: FakeClock
) -> None:
    c001, now = backend.staff_ids["C001"], clock.now()
    expires = now + timedelta(minutes=15)
    await backend.run(lambda s: s.add_console_token(c001, "a" * 64, expires, now))
    assert backend.tokens() == {"a" * 64: (c001, expires)}

    def again(s: Store) -> None:
        s.add_console_token(c001, "b" * 64, expires, now)
        s.add_console_token(c001, "a" * 64, expires, now)  # the same hash: the turn fails

    with pytest.raises(Exception):  # noqa: B017 (IntegrityError on SQL, ValueError in memory)
        await backend.run(again)
    assert set(backend.tokens()) == {"a" * 64}


# ---------------------------------------------------------------------------- transactions
async def test_a_turn_that_raises_keeps_nothing(backend: Backend, clock: FakeClock) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]

    def half_way(s: Store) -> Any:
        s.start_visit(t001, zhou, "f", "1", now)
        s.save_session(KEY, Session("question"), now)
        raise RuntimeError("crash between two writes")

    with pytest.raises(RuntimeError):
        await backend.run(half_way)
    assert await backend.run(lambda s: s.find_draft(t001)) is None
    assert await backend.run(lambda s: s.load_session(KEY)) is None


async def test_reads_in_a_turn_see_its_own_writes(backend: Backend, clock: FakeClock) -> None:
    t001, now = backend.staff_ids["T001"], clock.now()
    zhou = backend.student_ids["DEMO0003"]

    def write_then_read(s: Store) -> Any:
        visit = s.start_visit(t001, zhou, "f", "1", now)
        s.save_answers(visit, {"method": "电话"}, 0, now)
        s.save_session(KEY, Session("question", {"visit": visit}), now)
        return s.find_draft(t001), s.load_session(KEY)

    draft, session = await backend.run(write_then_read)
    assert draft is not None and draft.answers == {"method": "电话"} and draft.revision == 1
    assert session is not None and session.data["visit"] == draft.visit_id


async def test_aid_reviews_are_opened_once_listed_in_scope_and_decided_once(
    backend: Backend, clock: FakeClock
) -> None:
    now = clock.now()
    coord, bureau, teacher = [await _who(backend, n) for n in ("C001", "B001", "T001")]
    elsewhere = Staff(coord.id, "C001", coord.name, StaffRole.COORDINATOR, 999)
    zhou = backend.student_ids["DEMO0003"]
    found = await backend.run(lambda s: s.open_review(teacher, zhou, "", "", "父母未返岗", now))
    assert found is not None and not found.reported and found.student_name == "周小禾"
    assert await backend.run(lambda s: s.open_review(teacher, zhou, "", "", "又一次", now)) is None
    told = await backend.run(
        lambda s: s.open_review(teacher, None, "李小花", "三年级2班", "无", now)
    )
    assert told is not None and told.reported and told.student_id is None
    nobody = Staff(bureau.id, "B001", bureau.name, StaffRole.BUREAU, None)
    assert await backend.run(lambda s: s.open_review(nobody, None, "甲", "乙", "丙", now)) is None

    assert teacher.school_id is not None
    school = teacher.school_id
    heads = await backend.run(lambda s: s.coordinators_of(school))
    assert [p.staff_no for p in heads] == ["C001"]
    assert await backend.run(lambda s: s.coordinators_of(999)) == []
    listed = await backend.run(lambda s: s.scoped_reviews(coord, 10))
    assert [r.id for r in listed] == [found.id, told.id]
    assert [r.id for r in await backend.run(lambda s: s.scoped_reviews(bureau, 1))] == [found.id]
    assert await backend.run(lambda s: s.scoped_reviews(teacher, 10)) == []
    assert await backend.run(lambda s: s.scoped_reviews(elsewhere, 10)) == []
    assert (
        await backend.run(lambda s: s.decide_review(elsewhere, found.id, "低保", "", now)) is None
    )
    assert await backend.run(lambda s: s.decide_review(teacher, found.id, "低保", "", now)) is None

    approved = await backend.run(lambda s: s.decide_review(coord, told.id, "低保", "", now))
    assert approved is not None and approved.student_id is not None
    assert approved.student_no is not None and approved.student_no.startswith("临时")
    mine = await backend.run(lambda s: s.my_students(teacher.id))
    assert "李小花" in {m.name for m in mine}  # assigned to the teacher who reported her
    declined = await backend.run(lambda s: s.decide_review(bureau, found.id, None, "已恢复", now))
    assert declined is not None and declined.reason == "已恢复" and declined.category is None
    assert await backend.run(lambda s: s.decide_review(coord, found.id, "低保", "", now)) is None
    assert await backend.run(lambda s: s.scoped_reviews(coord, 10)) == []
