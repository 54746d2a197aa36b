"""Time the console on a city-sized roster: the bureau's dashboard and the first page of each list.

    .venv/bin/python bench/console.py [--students 100000] [--teachers 5000] \
        [--backends sqlite,postgresql] [--repeat 5]

Generates the city of `bench/jobs.py` (its generator: schools, teachers, students with aid
categories, half of them visited in the last weeks, open follow-ups, a bureau member), then
serves the real app on a loopback port and times full HTTP requests (session check, queries and
template rendering) as a signed-in browser would make them. Prints the median and the slowest of
`--repeat` runs per page; the target is under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import create_engine, text

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

PAGES = [
    ("bureau dashboard", "/console/"),
    ("students, first page", "/console/students"),
    ("students not visited", "/console/students?state=unvisited"),
    ("students overdue, one school", "/console/students?state=overdue&school=7"),
    ("follow-ups, first page", "/console/followups"),
    ("follow-ups overdue", "/console/followups?state=overdue"),
    ("audit log", "/console/audit"),
]


class FixedClock:
    def now(self):  # type: ignore[no-untyped-def]
        return NOW


async def run(url: str, n_students: int, n_teachers: int, repeat: int) -> None:
    db = Database(url)
    db.upgrade()
    t0 = time.perf_counter()
    generate(db, n_students, n_teachers)
    with db.begin() as conn:  # (the generator adds the bureau member B00001)
        if db.engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    print(f"  generated in {time.perf_counter() - t0:.1f} s")
    settings = replace(load_settings({}, env_file=None), database_url=url)
    form = load_form(settings.form_path)
    deps = Deps(db, form, FixedClock(), load_calendar(settings.calendar_path))
    server = TestServer(create_app(settings, deps, serving=False), host="127.0.0.1")
    await server.start_server()
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        with db.begin() as conn:
            token = issue_console_token(conn, "B00001", NOW)
        base = str(server.make_url("")).rstrip("/")
        async with http.get(f"{base}/console/login?token={token}", allow_redirects=False) as r:
            assert r.status == 303, r.status
        for label, path in PAGES:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                async with http.get(base + path, allow_redirects=False) as r:
                    body = await r.read()
                    assert r.status == 200, (path, r.status)
                times.append((time.perf_counter() - start) * 1000)
            print(
                f"  {label:30} median {statistics.median(times):6.0f} ms   "
                f"max {max(times):6.0f} ms   ({len(body) // 1024} KiB)"
            )
    await server.close()
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--teachers", type=int, default=5_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432/test")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(f"{backend}: {args.students:,} students, {args.teachers:,} teachers")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/bench.db"
                asyncio.run(run(url, args.students, args.teachers, args.repeat))
            continue
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = f"{args.pg}?options=-csearch_path%3D{schema}"
            asyncio.run(run(url, args.students, args.teachers, args.repeat))
        finally:
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


if __name__ == "__main__":
    main()
