"""Time the console on a city-sized roster: the dashboards and the first page of each list.

    .venv/bin/python bench/console.py [--students 100000] [--teachers 5000] \
        [--backends sqlite,postgresql] [--repeat 5]

Generates the city of `bench/jobs.py` (its generator: schools, teachers, students with aid
categories, half of them visited in the last weeks, open follow-ups, a bureau member), then
serves the real app on a loopback port and times full HTTP requests (session check, queries and
template rendering) as a signed-in browser would make them: the bureau member's pages, then a
school coordinator's. Prints the median, fastest and
slowest of `--repeat` runs per page, and the median CPU time of this process per request (the
server's Python, and on SQLite the queries too: a figure that other work on a shared machine
disturbs far less than the wall clock; PostgreSQL's own CPU is not in it). The target is under
300 ms. With `--profile`, each page is fetched once more with every SQL statement timed, and the
statements are printed slowest first (with `--explain`, each one's plan: SQLite `EXPLAIN QUERY
PLAN`, PostgreSQL `EXPLAIN ANALYZE`, and a Python profile of the request).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import create_engine, event, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.jobs import NOW, generate  # noqa: E402
from bot.app import create_app  # noqa: E402
from bot.deps import Deps  # noqa: E402
from config.calendar import load_calendar  # noqa: E402
from config.forms import load_form  # noqa: E402
from config.settings import load_settings  # noqa: E402
from storage.console import issue_console_token  # noqa: E402
from storage.db import Database  # noqa: E402

BUREAU, COORDINATOR = "B00001", "C00007"  # (the generator's coordinator of school 7)
PAGES = [
    ("bureau dashboard", "/console/", BUREAU),
    ("students, first page", "/console/students", BUREAU),
    ("students not visited", "/console/students?state=unvisited", BUREAU),
    ("students overdue, one school", "/console/students?state=overdue&school=7", BUREAU),
    ("follow-ups, first page", "/console/followups", BUREAU),
    ("follow-ups overdue", "/console/followups?state=overdue", BUREAU),
    ("audit log", "/console/audit", BUREAU),
    ("school dashboard", "/console/", COORDINATOR),
    ("school: students not visited", "/console/students?state=unvisited", COORDINATOR),
    ("school: follow-ups open", "/console/followups?state=open", COORDINATOR),
]


class FixedClock:
    def now(self):  # type: ignore[no-untyped-def]
        return NOW


async def _profile(db: Database, http: aiohttp.ClientSession, url: str, explain: bool) -> None:
    """One more request with each statement's time (and plan) printed, slowest first."""
    timed: list[tuple[float, str, Any]] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["t0"] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        timed.append(((time.perf_counter() - conn.info["t0"]) * 1000, statement, parameters))

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "after_cursor_execute", after)
    python = cProfile.Profile()  # the event loop's thread: the handler and the template, no SQL
    try:
        python.enable()
        async with http.get(url, allow_redirects=False) as r:
            await r.read()
    finally:
        python.disable()
        event.remove(db.engine, "before_cursor_execute", before)
        event.remove(db.engine, "after_cursor_execute", after)
    print(f"    {sum(t for t, _, _ in timed):.0f} ms in {len(timed)} statements")
    if explain:
        pstats.Stats(python).sort_stats("cumulative").print_stats(r"homevisit|bot/|jinja", 12)
    for ms, statement, parameters in sorted(timed, key=lambda t: -t[0])[:6]:
        if ms < 2:
            break
        print(f"    {ms:7.1f} ms  {' '.join(statement.split())[:150]}")
        if explain and statement.lstrip().upper().startswith("SELECT"):
            with db.engine.connect() as conn:
                pg = conn.dialect.name == "postgresql"
                prefix = "EXPLAIN (ANALYZE, BUFFERS) " if pg else "EXPLAIN QUERY PLAN "
                if pg:
                    conn.exec_driver_sql("SET jit = off")
                    conn.exec_driver_sql("SET work_mem = '64MB'")
                for line in conn.exec_driver_sql(prefix + statement, parameters).all():
                    print("               ", " | ".join(str(v) for v in line))


async def run(url: str, args: argparse.Namespace) -> None:
    db = Database(url)
    db.upgrade()
    t0 = time.perf_counter()
    generate(db, args.students, args.teachers)  # (the generator adds the bureau member B00001)
    if db.engine.dialect.name == "postgresql":  # as autovacuum would leave it
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    print(f"  generated in {time.perf_counter() - t0:.1f} s")
    settings = replace(load_settings({}, env_file=None), database_url=url)
    form = load_form(settings.form_path)
    deps = Deps(db, form, FixedClock(), load_calendar(settings.calendar_path))
    server = TestServer(create_app(settings, deps, serving=False), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    browsers: dict[str, aiohttp.ClientSession] = {}
    try:
        for who in (BUREAU, COORDINATOR):  # one signed-in browser each
            http = browsers[who] = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            with db.begin() as conn:
                token = issue_console_token(conn, who, NOW)
            async with http.get(f"{base}/console/login?token={token}", allow_redirects=False) as r:
                assert r.status == 303, r.status
        for label, path, who in [p for p in PAGES if args.pages in p[0]]:
            http = browsers[who]
            times, cpu = [], []
            for _ in range(args.repeat):
                start, cpu0 = time.perf_counter(), time.process_time()
                async with http.get(base + path, allow_redirects=False) as r:
                    body = await r.read()
                    assert r.status == 200, (path, r.status)
                times.append((time.perf_counter() - start) * 1000)
                cpu.append((time.process_time() - cpu0) * 1000)
            print(
                f"  {label:30} median {statistics.median(times):6.0f} ms   "
                f"min {min(times):6.0f} ms   max {max(times):6.0f} ms   "
                f"cpu {statistics.median(cpu):5.0f} ms   ({len(body) // 1024} KiB)"
            )
            if args.profile:
                await _profile(db, http, base + path, args.explain)
    finally:
        for http in browsers.values():
            await http.close()
    await server.close()
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--teachers", type=int, default=5_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="time each SQL statement")
    parser.add_argument("--explain", action="store_true", help="with --profile: query plans")
    parser.add_argument("--pages", default="", help="only pages whose label contains this")
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432/test")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(f"{backend}: {args.students:,} students, {args.teachers:,} teachers")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/bench.db"
                asyncio.run(run(url, args))
            continue
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = f"{args.pg}?options=-csearch_path%3D{schema}"
            asyncio.run(run(url, args))
        finally:
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


if __name__ == "__main__":
    main()
