"""Scheduled jobs in chunks of schools (#18): shared by instances, taken over, failing alone.

A small province made by hand: SCHOOLS schools, each with two teachers (three students each),
a coordinator, and one bureau member for all; with HOMEVISIT_JOB_CHUNK_STUDENTS=4 every chunk
is about one school. Several `Jobs` objects with their own owner names stand for instances:
on PostgreSQL their chunks run at the same time on the database's thread pool.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from bot.deps import Deps
from bot.jobs import Jobs
from config.forms import load_form
from config.settings import Settings
from storage import chunks
from storage.db import Database
from storage.schema import (
    assignments,
    followup_events,
    followups,
    identities,
    job_chunks,
    job_runs,
    outbox,
    schools,
    staff,
    students,
    visits,
)
from tests.conftest import FakeClock, make_settings

SCHOOLS = 5
MONDAY_9 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
MONDAY = date(2026, 3, 2)


def load_province(conn: Any) -> None:
    conn.execute(insert(schools), [{"id": s, "name": f"第{s}小学"} for s in range(1, SCHOOLS + 1)])
    people, ids, kids, links = [], [], [], []
    for s in range(1, SCHOOLS + 1):
        for t in (1, 2):
            sid = s * 10 + t
            people.append(
                {"id": sid, "staff_no": f"T{sid}", "name": f"教师{sid}", "school_id": s}
                | {"role": "teacher", "active": True}
            )
            ids.append({"channel": "wecom", "external_id": f"t{sid}", "staff_id": sid})
            for k in range(3):
                kid = sid * 10 + k
                kids.append(
                    {"id": kid, "student_no": f"S{kid}", "name": f"学生{kid}", "school_id": s}
                    | {"class_name": "一年级1班", "active": True}
                )
                links.append({"student_id": kid, "role": "head_teacher", "staff_id": sid})
        cid = s * 10
        people.append(
            {"id": cid, "staff_no": f"C{s}", "name": f"协调员{s}", "school_id": s}
            | {"role": "coordinator", "active": True}
        )
        ids.append({"channel": "wecom", "external_id": f"c{s}", "staff_id": cid})
    people.append(
        {"id": 1, "staff_no": "B1", "name": "教育局", "school_id": None}
        | {"role": "bureau", "active": True}
    )
    ids.append({"channel": "wecom", "external_id": "b1", "staff_id": 1})
    conn.execute(insert(staff), people)
    conn.execute(insert(identities), ids)
    conn.execute(insert(students), kids)
    conn.execute(insert(assignments), links)


@pytest.fixture
def province_settings(db_url: str) -> Settings:
    return make_settings(db_url, job_chunk_students=4)


@pytest.fixture
def province(province_settings: Settings, db: Database) -> Deps:
    with db.begin() as conn:
        load_province(conn)
    return Deps(db=db, form=load_form(province_settings.form_path), clock=FakeClock())


def instance(settings: Settings, deps: Deps, name: str) -> Jobs:
    return Jobs(settings, deps, ["wecom"], owner=name)


def outbox_rows(db: Database) -> list[Any]:
    with db.begin() as conn:
        return list(conn.execute(select(outbox.c.recipient, outbox.c.kind, outbox.c.body)))


def chunk_rows(db: Database, job: str = "remind") -> list[Any]:
    with db.begin() as conn:
        return list(
            conn.execute(
                select(job_chunks).where(job_chunks.c.job == job).order_by(job_chunks.c.chunk)
            )
        )


def test_split_keeps_schools_whole_and_consecutive() -> None:
    counts = [(1, 3), (2, 3), (4, 10), (7, 1), (8, 1)]
    assert chunks.split(counts, 5) == [(1, 2, 2, 6), (4, 4, 1, 10), (7, 8, 2, 2)]
    assert chunks.split(counts, 100) == [(1, 8, 5, 18)]
    assert chunks.split([], 5) == []


async def test_three_instances_share_a_run_and_each_teacher_gets_one_reminder(
    province_settings: Settings, province: Deps
) -> None:
    jobs = [instance(province_settings, province, f"instance-{i}") for i in range(3)]
    reports = await asyncio.gather(*(j.run("remind", MONDAY_9) for j in jobs))
    sent = Counter(r.recipient for r in outbox_rows(province.db) if r.kind == "reminder")
    teachers = {f"t{s * 10 + t}" for s in range(1, SCHOOLS + 1) for t in (1, 2)}
    assert sent == dict.fromkeys(teachers, 1)
    # every instance reports the whole run; between them they did every chunk and the last step
    assert {(r.chunks, r.planned) for r in reports} == {(SCHOOLS, 10)}
    assert sum(r.mine for r in reports) == SCHOOLS + 1
    assert sum(r.queued for r in reports) == 10  # each counts what it queued
    rows = chunk_rows(province.db)
    assert [r.status for r in rows] == ["done"] * (SCHOOLS + 1)
    assert {(r.first_school, r.last_school) for r in rows if r.chunk} == {
        (s, s) for s in range(1, SCHOOLS + 1)
    }
    # a second run on any instance finds the run finished and adds nothing
    again = await jobs[0].run("remind", MONDAY_9 + timedelta(minutes=5))
    assert (again.queued, again.mine) == (0, 0)
    assert len(outbox_rows(province.db)) == 10


async def test_a_dead_instances_chunk_is_taken_over_when_its_lease_expires(
    province_settings: Settings, province: Deps
) -> None:
    db = province.db
    with db.begin() as conn:
        chunks.plan(conn, "remind", MONDAY, 4)
    # Two instances stopped renewing their leases: chunk 1's expires in two seconds, chunk 2's
    # expired a second ago (its instance died 31 s ago).
    gone = datetime.now(UTC) - timedelta(seconds=31)
    with db.begin() as conn:
        second = chunks.claim(
            conn, "remind", MONDAY, "slow", datetime.now(UTC), timedelta(seconds=2)
        )
        first = chunks.claim(conn, "remind", MONDAY, "dead", gone, timedelta(seconds=30))
    assert second is not None and second.number == 1
    assert first is not None and first.number == 2
    settings = make_settings(str(db.engine.url), job_chunk_students=4)
    jobs = Jobs(settings, province, ["wecom"], owner="survivor")
    report = await asyncio.wait_for(jobs.run("remind", MONDAY_9), 20)
    assert report.mine == SCHOOLS + 1  # all of them, the two abandoned ones included
    rows = chunk_rows(db)
    assert {r.owner for r in rows} == {"survivor"}
    attempts = {r.chunk: r.attempts for r in rows}
    assert attempts[1] == attempts[2] == 2  # (the lost instances', then ours)
    sent = Counter(r.recipient for r in outbox_rows(db))
    assert len(sent) == 2 * SCHOOLS and set(sent.values()) == {1}
    # The stalled instance wakes up and tries to finish chunk 2: its lease is gone, so its
    # transaction must not count the chunk as its own.
    with db.begin() as conn, pytest.raises(chunks.LeaseLost):
        chunks.finish(conn, first, "dead", datetime.now(UTC), planned=2, queued=2, unreachable=0)


async def test_a_chunk_failing_on_bad_data_is_given_up_and_named_in_the_bureau_digest(
    province_settings: Settings, province: Deps, caplog: pytest.LogCaptureFixture
) -> None:
    db = province.db
    with db.begin() as conn:
        # School 3 holds a follow-up in a state no version of homevisit writes (a hand edit):
        # loading its chunk raises; the other schools must not notice.
        conn.execute(
            insert(visits).values(
                id=1,
                student_id=310,
                staff_id=31,
                form_id="f",
                form_version="1",
                status="submitted",
                reached=True,
                answers={},
                started_at=MONDAY_9 - timedelta(days=1),
                updated_at=MONDAY_9 - timedelta(days=1),
                submitted_at=MONDAY_9 - timedelta(days=1),
            )
        )
        conn.execute(
            insert(followups).values(
                visit_id=1,
                student_id=310,
                owner_staff_id=31,
                kind="device",
                detail="需要平板",
                due_date=MONDAY + timedelta(days=3),
                status="mislaid",
                created_at=MONDAY_9 - timedelta(days=1),
            )
        )
    jobs = instance(province_settings, province, "one")
    remind = await jobs.run("remind", MONDAY_9)
    assert (remind.failed, remind.chunks, remind.mine) == (1, SCHOOLS, SCHOOLS)  # 4 + last step
    sent = {r.recipient for r in outbox_rows(db)}
    assert "t31" not in sent and "t32" not in sent
    assert {f"t{s}{t}" for s in (1, 2, 4, 5) for t in (1, 2)} <= sent
    failed = [r for r in chunk_rows(db) if r.status == "failed"]
    assert [(r.first_school, r.attempts) for r in failed] == [(3, chunks.MAX_ATTEMPTS)]
    assert failed[0].error.startswith("ValueError at ")
    assert "mislaid" not in failed[0].error
    assert "chunk 3 failed (attempt 3, given up" in caplog.text
    assert "mislaid" not in caplog.text and "需要平板" not in caplog.text
    # not recorded as run: a restart (or `homevisit remind`) tries the failed chunk again
    assert not await jobs.has_run("remind", MONDAY)

    digest = await jobs.run("digest", MONDAY_9 + timedelta(hours=8))
    assert digest.failed == 1
    [bureau] = [r.body for r in outbox_rows(db) if r.kind == "bureau_digest"]
    assert "今天的定时任务有部分没有完成" in bureau
    assert "· 家访提醒没有发给这些学校的老师：第3小学" in bureau
    assert "· 日报没有发给这些学校的协调员：第3小学" in bureau
    assert "第1小学：已访 0/6" in bureau  # the others' lines are there
    coordinators = {r.recipient for r in outbox_rows(db) if r.kind == "digest"}
    assert coordinators == {"c1", "c2", "c4", "c5"}

    # fixed: the next start-up runs it again, and only the failed chunk sends anything
    with db.begin() as conn:
        conn.execute(update(followups).values(status="open"))
    before = len(outbox_rows(db))
    again = await jobs.run("remind", MONDAY_9 + timedelta(hours=9))
    assert (again.failed, again.mine) == (0, 2)  # chunk 3 and the last step
    new = {r.recipient for r in outbox_rows(db)[before:]}
    assert new == {"t31", "t32"}
    assert await jobs.has_run("remind", MONDAY)


async def test_two_runs_planned_at_the_same_moment_write_one_set_of_chunks(
    province_settings: Settings, province: Deps
) -> None:
    db = province.db

    def plan(_: int) -> bool:
        with db.begin() as conn:
            return chunks.plan(conn, "digest", MONDAY, 4)

    results = await asyncio.gather(*(asyncio.to_thread(plan, i) for i in range(4)))
    assert sorted(results) == [False, False, False, True]
    with db.begin() as conn:
        n = conn.execute(
            select(func.count()).select_from(job_chunks).where(job_chunks.c.job == "digest")
        ).scalar_one()
        assert conn.execute(select(job_runs)).all() == []
    assert n == SCHOOLS + 1


async def test_the_bureau_hears_of_every_climbed_escalation_once_twenty_by_name(
    province_settings: Settings, province: Deps
) -> None:
    db = province.db
    yesterday = MONDAY_9 - timedelta(days=1)
    with db.begin() as conn:
        conn.execute(
            insert(visits),
            [
                {"id": n, "student_id": 110 + n % 3, "staff_id": 11, "form_id": "f"}
                | {"form_version": "1", "status": "submitted", "reached": True, "answers": {}}
                | {"started_at": yesterday, "updated_at": yesterday, "submitted_at": yesterday}
                for n in range(1, 26)
            ],
        )
        conn.execute(
            insert(followups),
            [
                {"visit_id": n, "student_id": 110 + n % 3, "owner_staff_id": 11, "kind": "device"}
                | {"detail": f"需要{n}", "due_date": MONDAY - timedelta(days=30 - n)}
                | {"status": "escalated", "created_at": yesterday, "escalated_at": yesterday}
                | {"climbed_at": yesterday}
                for n in range(1, 26)
            ],
        )
    jobs = instance(province_settings, province, "one")
    await jobs.run("remind", MONDAY_9)
    [told] = [r.body for r in outbox_rows(db) if r.recipient == "b1"]
    assert "已上报教育局" in told and "……等共25项" in told
    assert told.count("· 第1小学 ·") == 20  # the earliest due twenty, by name
    with db.begin() as conn:
        assert told_to_bureau(conn) == 25  # every one of them is "notified" to B1
    again = await jobs.run("remind", MONDAY_9 + timedelta(days=1))  # Tuesday: nothing new
    assert again.queued == 10  # the teachers' reminders only
    assert [r.body for r in outbox_rows(db) if r.recipient == "b1"] == [told]


def told_to_bureau(conn: Any) -> int:
    return int(
        conn.execute(
            select(func.count()).where(
                followup_events.c.event == "notified", followup_events.c.staff_id == 1
            )
        ).scalar_one()
    )
