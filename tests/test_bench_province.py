"""bench/province.py at a small size: the COPY-generated province is what the app would have
written (constraints, indexes, trigger-kept columns, sequences), it is reused by a second run, and
bench/jobs.py runs the jobs on it and leaves it reset for the next run."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from storage.db import Database
from tests.conftest import PG_URL, require_pg
from tests.procs import ROOT

STUDENTS, TEACHERS = 1000, 120  # two schools


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "--pg", PG_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def schema() -> Iterator[str]:
    require_pg()
    name = f"bench_t_{uuid.uuid4().hex[:10]}"
    yield name
    bench("bench/province.py", "--schema", name, "--drop")


def engine(schema: str) -> Engine:
    url = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    return create_engine(url, connect_args={"options": f"-csearch_path={schema}"})


def shape(conn: object, schema: str) -> set[tuple[str, str]]:
    """The constraints and indexes of `schema`, by name and definition."""
    rows = conn.execute(  # type: ignore[attr-defined]
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = CAST(:s AS regnamespace)"
            " UNION ALL SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = CAST(:s AS text)"
        ),
        {"s": schema},
    )
    return {(name, definition.replace(f"{schema}.", "")) for name, definition in rows}


def test_a_small_province_is_generated_reused_and_run(schema: str, tmp_path: Path) -> None:
    size = ["--students", str(STUDENTS), "--teachers", str(TEACHERS), "--schema", schema]
    first = bench("bench/province.py", *size)
    assert first.returncode == 0, first.stderr
    assert "generated" in first.stdout

    eng = engine(schema)
    try:
        with eng.connect() as conn:
            count = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("schools", "staff", "identities", "students", "assignments", "visits")
            }
            assert count == {
                "schools": 2,
                "staff": TEACHERS + 2,
                "identities": TEACHERS + 2,
                "students": STUDENTS,
                "assignments": STUDENTS + (STUDENTS + 2) // 3,
                "visits": STUDENTS // 2,
            }
            # The students' last-visit columns are what the visits' trigger keeps.
            wrong = conn.execute(
                text(
                    "SELECT count(*) FROM students s WHERE"
                    " s.last_reached_at IS DISTINCT FROM (SELECT max(submitted_at) FROM visits v"
                    "  WHERE v.student_id = s.id AND v.status = 'submitted' AND v.reached)"
                    " OR s.last_unreached_at IS DISTINCT FROM (SELECT max(submitted_at)"
                    "  FROM visits v WHERE v.student_id = s.id AND v.status = 'submitted'"
                    "  AND NOT v.reached)"
                )
            ).scalar_one()
            assert wrong == 0
            # every teacher of a student teaches at the student's school (the roster's rule)
            elsewhere = conn.execute(
                text(
                    "SELECT count(*) FROM assignments a JOIN students s ON s.id = a.student_id"
                    " JOIN staff t ON t.id = a.staff_id WHERE t.school_id <> s.school_id"
                )
            ).scalar_one()
            assert elsewhere == 0
            assert conn.execute(text("SELECT count(*) FROM followups")).scalar_one() > 50
            generated = shape(conn, schema)
    finally:
        eng.dispose()

    # Every constraint and index of a freshly migrated schema is back after the bulk load.
    fresh = f"bench_f_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{fresh}"'))
    try:
        db = Database(f"{PG_URL}?options=-csearch_path%3D{fresh}")
        db.upgrade()
        db.close()
        with admin.connect() as conn:
            assert shape(conn, fresh) == generated
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{fresh}" CASCADE'))
        admin.dispose()

    # The jobs run on it; a second run reuses the province, reset to its generated state.
    jobs = bench("bench/jobs.py", "--province", schema, "--students", str(STUDENTS),
                 "--teachers", str(TEACHERS))  # fmt: skip
    assert jobs.returncode == 0, jobs.stderr
    assert "reused" in jobs.stdout and "remind" in jobs.stdout and "rows/s" in jobs.stdout
    assert "1 instance(s):" in jobs.stdout and "2 instance(s):" in jobs.stdout
    assert "an instance failed" not in jobs.stdout + jobs.stderr
    again = bench("bench/province.py", *size)
    assert again.returncode == 0 and "reused" in again.stdout, again.stderr
    eng = engine(schema)
    try:
        with eng.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM job_runs")).scalar_one() == 0
            escalated = "SELECT count(*) FROM followups WHERE status <> 'open'"
            assert conn.execute(text(escalated)).scalar_one() == 0
            # The app's own writes go on: ids from the sequences, the trigger back on.
            conn.execute(
                text(
                    "INSERT INTO visits (student_id, staff_id, form_id, form_version, status,"
                    " reached, answers, started_at, updated_at, submitted_at) VALUES (2, 2,"
                    " 'home_visit', '2026.1', 'submitted', true, '{}', now(), now(), now())"
                )
            )
            last = "SELECT last_reached_at IS NOT NULL FROM students WHERE id = 2"
            assert conn.execute(text(last)).scalar_one() is True
    finally:
        eng.dispose()
