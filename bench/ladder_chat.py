"""Time the coordinators' and the bureau's chat commands (#14) on a city-sized roster.

    .venv/bin/python bench/ladder_chat.py [--students 100000] [--teachers 5000] \
        [--backends sqlite,postgresql] [--repeat 5]

Generates the city of `bench/jobs.py`, runs the reminder job once (which escalates the overdue
follow-ups), then sends each command through the real dispatcher (the same turn as a chat message:
lock, session, store, reply) as a school coordinator (2,000 students) and as the bureau (all
schools). Prints the median and the slowest of `--repeat` turns per command.
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

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.jobs import NOW, generate  # noqa: E402
from bot.app import build_dispatcher  # noqa: E402
from bot.core.types import InboundMessage  # noqa: E402
from bot.deps import Deps  # noqa: E402
from bot.jobs import Jobs  # noqa: E402
from config.calendar import load_calendar  # noqa: E402
from config.forms import load_form  # noqa: E402
from config.settings import load_settings  # noqa: E402
from storage.db import Database  # noqa: E402

COMMANDS = ("上报", "逾期", "概况", "未访", "确认 1 已联系", "催办 T000001")


class FixedClock:
    def now(self):  # type: ignore[no-untyped-def]
        return NOW


async def run(url: str, n_students: int, n_teachers: int, repeat: int) -> None:
    db = Database(url)
    db.upgrade()
    generate(db, n_students, n_teachers)
    if db.engine.dialect.name == "postgresql":
        with db.begin() as conn:
            conn.execute(text("ANALYZE"))
    settings = replace(load_settings({}, env_file=None), database_url=url)
    deps = Deps(
        db, load_form(settings.form_path), FixedClock(), load_calendar(settings.calendar_path)
    )
    report = await Jobs(settings, deps, []).run("remind", NOW)
    print(f"  {report.escalated:,} follow-ups escalated")
    dispatcher = build_dispatcher(settings, deps)
    for who in ("C00001", "B00001"):
        for command in COMMANDS:
            times = []
            for _ in range(repeat if not command.startswith(("确认", "催办")) else 1):
                if command.startswith("确认"):
                    await dispatcher.handle(InboundMessage("console", who, "上报"))
                start = time.perf_counter()
                replies = await dispatcher.handle(InboundMessage("console", who, command))
                times.append((time.perf_counter() - start) * 1000)
            print(
                f"  {who} {command:12} median {statistics.median(times):6.1f} ms, "
                f"slowest {max(times):6.1f} ms  ({len(replies[0])} characters)"
            )
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
        print(f"{backend}:")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(run(f"sqlite:///{tmp}/b.db", args.students, args.teachers, args.repeat))
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
