"""Benchmark the scheduled jobs on a city-sized roster: prints timings and peak memory.

    .venv/bin/python bench/jobs.py [--students 100000] [--teachers 5000] \
        [--backends sqlite,postgresql]

Generates schools, teachers (each with a WeCom id), students with aid categories, head teachers
and carers, a visit history (about half the students visited in the last weeks, some families
unreachable) and open follow-ups, straight into a fresh database with set-based inserts. Then runs
the reminder job and the digest job once each, as the scheduler would (each runs the escalation
ladder's steps first: about 13,000 open follow-ups, most of them overdue), then the reminder job
on the Friday when unacknowledged escalations climb to the bureau, and reports wall time and the
process's peak RSS. Nothing is sent: messages are only written to the outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.deps import Deps  # noqa: E402
from bot.jobs import Jobs  # noqa: E402
from config.calendar import load_calendar  # noqa: E402
from config.forms import load_form  # noqa: E402
from config.settings import load_settings  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.schema import (  # noqa: E402
    assignments,
    followups,
    identities,
    outbox,
    schools,
    staff,
    student_categories,
    students,
    visits,
)

CATEGORIES = ["建档立卡", "低保", "特困", "孤儿", "残疾", "大病", "留守"]
NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # a Tuesday, 09:00 in Shanghai
KINDS = ["device", "data_plan", "living_aid", "psych", "medical", "other"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(db: Database, n_students: int, n_teachers: int) -> None:
    rnd = random.Random(7)
    n_schools = max(1, n_teachers // 50)
    with db.begin() as conn:
        conn.execute(
            insert(schools), [{"id": i + 1, "name": f"第{i + 1}学校"} for i in range(n_schools)]
        )
        rows = [
            {
                "id": i + 1,
                "staff_no": f"T{i + 1:06d}",
                "name": f"教师{i + 1}",
                "school_id": i % n_schools + 1,
                "role": "teacher",
                "active": True,
            }
            for i in range(n_teachers)
        ]
        rows += [
            {
                "id": n_teachers + s + 1,
                "staff_no": f"C{s + 1:05d}",
                "name": f"协调员{s + 1}",
                "school_id": s + 1,
                "role": "coordinator",
                "active": True,
            }
            for s in range(n_schools)
        ]
        rows.append(  # one bureau member: escalations nobody acknowledges climb to them
            {
                "id": n_teachers + n_schools + 1,
                "staff_no": "B00001",
                "name": "教育局1",
                "school_id": None,
                "role": "bureau",
                "active": True,
            }
        )
        conn.execute(insert(staff), rows)
        conn.execute(
            insert(identities),
            [{"channel": "wecom", "external_id": f"u{r['id']}", "staff_id": r["id"]} for r in rows],
        )
        conn.execute(
            insert(students),
            [
                {
                    "id": i + 1,
                    "student_no": f"S{i + 1:08d}",
                    "name": f"学生{i + 1}",
                    "school_id": (i % n_teachers) % n_schools + 1,
                    "class_name": f"{i % 6 + 1}年级1班",
                    "active": True,
                }
                for i in range(n_students)
            ],
        )
        conn.execute(
            insert(student_categories),
            [
                {"student_id": i + 1, "category": c}
                for i in range(n_students)
                for c in rnd.sample(CATEGORIES, rnd.choice((1, 1, 2)))
            ],
        )
        links = [
            {"student_id": i + 1, "role": "head_teacher", "staff_id": i % n_teachers + 1}
            for i in range(n_students)
        ]
        links += [
            {"student_id": i + 1, "role": "carer", "staff_id": (i + 7) % n_teachers + 1}
            for i in range(0, n_students, 3)
        ]
        conn.execute(insert(assignments), links)
        visit_rows, fu_rows = [], []
        for i in range(0, n_students, 2):
            at = NOW - timedelta(days=rnd.randint(0, 20), hours=rnd.randint(0, 8))
            reached = rnd.random() > 0.1
            visit_rows.append(
                {
                    "id": len(visit_rows) + 1,
                    "student_id": i + 1,
                    "staff_id": i % n_teachers + 1,
                    "form_id": "home_visit",
                    "form_version": "2026.1",
                    "status": "submitted",
                    "method": "电话" if reached else "联系不上",
                    "reached": reached,
                    "answers": {"method": "电话"},
                    "started_at": at,
                    "updated_at": at,
                    "submitted_at": at,
                }
            )
            if reached and rnd.random() < 0.3:
                fu_rows.append(
                    {
                        "visit_id": len(visit_rows),
                        "student_id": i + 1,
                        "owner_staff_id": i % n_teachers + 1,
                        "kind": rnd.choice(KINDS),
                        "detail": "平板或电脑",
                        "due_date": (at + timedelta(days=3)).date(),
                        "status": "open",
                        "created_at": at,
                    }
                )
        conn.execute(insert(visits), visit_rows)
        conn.execute(insert(followups), fu_rows)


async def run_jobs(url: str, n_students: int, n_teachers: int) -> None:
    db = Database(url)
    db.upgrade()
    t0 = time.perf_counter()
    generate(db, n_students, n_teachers)
    print(
        f"  generated {n_students:,} students / {n_teachers:,} teachers in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    settings = replace(load_settings({}, env_file=None), database_url=url)
    deps = Deps(db, load_form(settings.form_path), calendar=load_calendar(settings.calendar_path))
    jobs = Jobs(settings, deps, ["wecom"])
    for job, at in (("remind", NOW), ("digest", NOW + timedelta(hours=8))):
        start = time.perf_counter()
        report = await jobs.run(job, at)
        print(
            f"  {job:6}: {time.perf_counter() - start:5.2f} s  ({report.planned:,} messages "
            f"planned, {report.queued:,} queued, {report.escalated:,} escalated, "
            f"{report.climbed:,} climbed)  "
            f"peak RSS so far {rss_mib():.0f} MiB"
        )
    start = time.perf_counter()
    report = await jobs.run("remind", NOW + timedelta(minutes=5))
    print(f"  remind again: {time.perf_counter() - start:5.2f} s, {report.queued} new messages")
    # Friday: the escalations nobody acknowledged climb to the bureau (the ladder's second step).
    start = time.perf_counter()
    report = await jobs.run("remind", NOW + timedelta(days=3))
    print(
        f"  remind Friday: {time.perf_counter() - start:5.2f} s  ({report.escalated:,} escalated, "
        f"{report.climbed:,} climbed to the bureau)"
    )
    with db.begin() as conn:
        open_fus = conn.execute(
            select(func.count()).select_from(followups).where(followups.c.status != "done")
        ).scalar_one()
        n = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    print(f"  open or escalated follow-ups: {open_fus:,}")
    print(f"  outbox rows: {n:,}")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--teachers", type=int, default=5_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432/test")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(f"{backend}:")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(run_jobs(f"sqlite:///{tmp}/bench.db", args.students, args.teachers))
        else:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.pg.replace("postgresql://", "postgresql+psycopg://", 1))
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                asyncio.run(
                    run_jobs(
                        f"{args.pg}?options=-csearch_path%3D{schema}", args.students, args.teachers
                    )
                )
            finally:
                with admin.begin() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
