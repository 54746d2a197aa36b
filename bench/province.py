"""A province on PostgreSQL for the job benchmarks: written by COPY once, reused by later runs.

    .venv/bin/python bench/province.py [--students 10000000] [--teachers 500000] \
        [--schema province_10m] [--pg postgresql://root@127.0.0.1:5432/test] [--drop]

The roster has the shape of bench/jobs.py's city (schools of 50 teachers, each teacher with a
WeCom id, a coordinator per school, students with one or two aid categories, a head teacher each
and a carer for every third, half of them visited in the last three weeks, a tenth of those visits
unreachable, open follow-ups on three in ten reached visits), but it streams: students are made
in chunks and each chunk goes to every table with one COPY per table, so memory stays that of one
chunk whatever the province's size. The visits' trigger is switched off during the load and the
students' last-visit columns are written directly, as the trigger would have set them.

The schema (migrated to the newest revision) keeps a `bench_roster` row saying what it holds: a
later run asking for the same size and seed reuses it at once, another size starts it afresh.
`reset()` puts back what the jobs change (outbox, job runs, escalated follow-ups), so every job
run on a reused province starts from the same state. `bench/jobs.py --province SCHEMA` uses it.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.db import Database  # noqa: E402

CATEGORIES = ["建档立卡", "低保", "特困", "孤儿", "残疾", "大病", "留守"]
KINDS = ["device", "data_plan", "living_aid", "psych", "medical", "other"]
NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # a Tuesday, 09:00 in Shanghai (as bench/jobs.py)
CHUNK = 100_000  # students per round of COPYs
TEACHERS_PER_SCHOOL = 50
DEFAULT_PG = "postgresql://root@127.0.0.1:5432/test"
NULL = "\\N"
# The generator's version, kept in bench_roster: a province written by an older one is rewritten
# (2: a student's carer teaches at the student's own school, as a roster import requires;
# 3: a school's students are stored together, as imported school by school).
SHAPE = 3


@dataclass(frozen=True, slots=True)
class Size:
    students: int
    teachers: int
    seed: int = 7

    @property
    def schools(self) -> int:
        return max(1, self.teachers // TEACHERS_PER_SCHOOL)


@dataclass
class _Chunk:
    """The COPY text of one chunk of students, table by table."""

    tables: dict[str, io.StringIO] = field(default_factory=dict)

    def row(self, table: str, *values: object) -> None:
        out = self.tables.setdefault(table, io.StringIO())
        out.write("\t".join(NULL if v is None else _text(v) for v in values))
        out.write("\n")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


COLUMNS = {
    "schools": ("id", "name"),
    "staff": ("id", "staff_no", "name", "school_id", "role", "active"),
    "identities": ("channel", "external_id", "staff_id"),
    "students": (
        "id",
        "student_no",
        "name",
        "school_id",
        "class_name",
        "active",
        "last_reached_at",
        "last_unreached_at",
    ),
    "student_categories": ("student_id", "category"),
    "assignments": ("student_id", "role", "staff_id"),
    "visits": (
        "id",
        "student_id",
        "staff_id",
        "form_id",
        "form_version",
        "status",
        "method",
        "reached",
        "answers",
        "revision",
        "started_at",
        "updated_at",
        "submitted_at",
    ),
    "followups": (
        "id",
        "visit_id",
        "student_id",
        "owner_staff_id",
        "kind",
        "detail",
        "due_date",
        "status",
        "created_at",
    ),
}
# the order a chunk is written in (foreign keys point backwards)
ORDER = ("students", "student_categories", "assignments", "visits", "followups")


def staff_chunk(size: Size) -> _Chunk:
    chunk = _Chunk()
    for s in range(size.schools):
        chunk.row("schools", s + 1, f"第{s + 1}学校")
    for i in range(size.teachers):
        chunk.row(
            "staff", i + 1, f"T{i + 1:07d}", f"教师{i + 1}", i % size.schools + 1, "teacher", True
        )
        chunk.row("identities", "wecom", f"u{i + 1}", i + 1)
    for s in range(size.schools):
        sid = size.teachers + s + 1
        chunk.row("staff", sid, f"C{s + 1:06d}", f"协调员{s + 1}", s + 1, "coordinator", True)
        chunk.row("identities", "wecom", f"u{sid}", sid)
    return chunk


def student_chunks(size: Size) -> Iterator[_Chunk]:
    """Chunks of students with their categories, assignments, visits and follow-ups. Visits go to
    every second student; ids are fixed by the student's number, so chunks are independent.

    A school's students come one after another (consecutive ids, so stored together), as a
    roster imported school by school leaves them; each has a head teacher of the school (the
    school's teachers in turn) and every third a carer, another teacher of the school."""
    rnd = random.Random(size.seed)
    followup_id = 0
    per_school = size.teachers // size.schools  # teachers of school s: s - 1 + k * schools
    for start in range(0, size.students, CHUNK):
        chunk = _Chunk()
        for i in range(start, min(start + CHUNK, size.students)):
            school = i * size.schools // size.students + 1
            teacher = school + (i % per_school) * size.schools
            reached_at = unreached_at = None
            visit: tuple[datetime, bool] | None = None
            if i % 2 == 0:
                at = NOW - timedelta(days=rnd.randint(0, 20), hours=rnd.randint(0, 8))
                visit = (at, rnd.random() > 0.1)
                if visit[1]:
                    reached_at = at
                else:
                    unreached_at = at
            chunk.row(
                "students",
                i + 1,
                f"S{i + 1:09d}",
                f"学生{i + 1}",
                school,
                f"{i % 6 + 1}年级1班",
                True,
                reached_at,
                unreached_at,
            )
            for category in rnd.sample(CATEGORIES, rnd.choice((1, 1, 2))):
                chunk.row("student_categories", i + 1, category)
            chunk.row("assignments", i + 1, "head_teacher", teacher)
            if i % 3 == 0:  # another teacher of the same school (the roster's rule)
                carer = school + ((i + 7) % per_school) * size.schools
                chunk.row("assignments", i + 1, "carer", carer)
            if visit is None:
                continue
            at, reached = visit
            visit_id = i // 2 + 1
            chunk.row(
                "visits",
                visit_id,
                i + 1,
                teacher,
                "home_visit",
                "2026.1",
                "submitted",
                "电话" if reached else "联系不上",
                reached,
                '{"method": "电话"}',
                0,
                at,
                at,
                at,
            )
            if reached and rnd.random() < 0.3:
                followup_id += 1
                due = (at + timedelta(days=3)).date()
                chunk.row(
                    "followups",
                    followup_id,
                    visit_id,
                    i + 1,
                    teacher,
                    rnd.choice(KINDS),
                    "平板或电脑",
                    due,
                    "open",
                    at,
                )
        yield chunk


def _copy(cur: psycopg.Cursor[Any], table: str, data: io.StringIO) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table]))
    )
    with cur.copy(stmt) as copy:
        copy.write(data.getvalue())


def _connect(pg: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(pg)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.commit()
    return conn


def _drop_secondary(cur: psycopg.Cursor[Any], schema: str) -> list[str]:
    """Drop the foreign keys and the plain indexes of the roster tables (a bulk load then builds
    each index once, instead of row by row); return the statements that put them back."""
    tables = list(COLUMNS)
    fks = cur.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE n.nspname = %s AND c.contype = 'f' AND c.conrelid::regclass::text = ANY(%s)",
        (schema, tables),
    ).fetchall()
    indexes = cur.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = %s"
        " AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
        " WHERE c.conname = i.indexname AND c.connamespace = %s::regnamespace)",
        (schema, tables, schema),
    ).fetchall()
    for table, name, _ in fks:
        cur.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
    for name, _ in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return [definition for _, definition in indexes] + [
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}'
        for table, name, definition in fks
    ]


def holds(pg: str, schema: str) -> Size | None:
    """The size of the province already in `schema`, if a complete one is there."""
    with psycopg.connect(pg) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name = 'bench_roster'",
            (schema,),
        ).fetchone()
        if found is None:
            return None
        try:
            row = conn.execute(
                sql.SQL("SELECT students, teachers, seed, shape FROM {}.bench_roster").format(
                    sql.Identifier(schema)
                )
            ).fetchone()
        except psycopg.errors.UndefinedColumn:  # written by an older generator
            return None
    if row is None or row[3] != SHAPE:
        return None
    return Size(*row[:3])


def generate(pg: str, schema: str, size: Size, *, log: Any = print) -> None:
    """(Re)create `schema` with the newest migrations and load `size` into it by COPY."""
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    db = Database(f"{pg}?options=-csearch_path%3D{schema}")
    try:
        db.upgrade()
    finally:
        db.close()
    started = time.perf_counter()
    with _connect(pg, schema) as conn, conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        cur.execute("ALTER TABLE visits DISABLE TRIGGER USER")  # last-visit columns come ready
        rebuild = _drop_secondary(cur, schema)
        conn.commit()
        first = staff_chunk(size)
        for table in ("schools", "staff", "identities"):
            _copy(cur, table, first.tables[table])
        conn.commit()
        done = 0
        for chunk in student_chunks(size):
            for table in ORDER:
                if table in chunk.tables:
                    _copy(cur, table, chunk.tables[table])
            conn.commit()  # a chunk at a time: the server's memory and WAL stay bounded too
            done = min(done + CHUNK, size.students)
            if done % (CHUNK * 10) == 0 or done == size.students:
                log(f"  {done:,} students in {time.perf_counter() - started:.0f} s")
        cur.execute("SET maintenance_work_mem = '256MB'")
        for statement in rebuild:
            cur.execute(statement)
        conn.commit()
        log(f"  indexes and foreign keys rebuilt at {time.perf_counter() - started:.0f} s")
        cur.execute("ALTER TABLE visits ENABLE TRIGGER USER")
        for table in ("schools", "staff", "students", "visits", "followups"):  # new ids go on
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({t}, 'id'),"
                    " (SELECT coalesce(max(id), 0) + 1 FROM {i}), false)"
                ).format(t=sql.Literal(table), i=sql.Identifier(table))
            )
        for table in COLUMNS:  # (a database-wide ANALYZE can deadlock with other schemas' DDL)
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        cur.execute(
            "CREATE TABLE bench_roster (students bigint, teachers int, seed int, shape int)"
        )
        cur.execute(
            "INSERT INTO bench_roster VALUES (%s, %s, %s, %s)",
            (size.students, size.teachers, size.seed, SHAPE),
        )
        conn.commit()


def ensure(pg: str, schema: str, size: Size, *, log: Any = print) -> bool:
    """The province of `size` in `schema`: reused when there, generated otherwise. True when it
    was generated now."""
    if holds(pg, schema) == size:
        reset(pg, schema)
        return False
    generate(pg, schema, size, log=log)
    return True


def reset(pg: str, schema: str) -> None:
    """Undo what the jobs write: the outbox, the runs, the escalations."""
    with _connect(pg, schema) as conn:
        conn.execute("TRUNCATE outbox, job_runs, job_chunks, followup_events")
        conn.execute(
            "UPDATE followups SET status = 'open', escalated_at = NULL, climbed_at = NULL"
            " WHERE status = 'escalated'"
        )
        conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=10_000_000)
    parser.add_argument("--teachers", type=int, default=500_000)
    parser.add_argument("--schema", default=None, help="default: province_<students>")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--drop", action="store_true", help="drop the schema and stop")
    args = parser.parse_args()
    schema = args.schema or f"province_{args.students}"
    if args.drop:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
        return
    size = Size(args.students, args.teachers)
    started = time.perf_counter()
    made = ensure(args.pg, schema, size)
    what = "generated" if made else "reused"
    print(
        f"{schema}: {size.students:,} students, {size.teachers:,} teachers {what} "
        f"in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
