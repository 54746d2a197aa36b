"""Cost of each check-in step in-process: no HTTP, no concurrency, one turn at a time.

    .venv/bin/python bench/steps.py                        # SQLite temp file
    .venv/bin/python bench/steps.py --backend postgresql   # a fresh schema in the local PostgreSQL
    .venv/bin/python bench/steps.py --no-fsync             # SQLite with synchronous=OFF: CPU only

For each step of the check-in sequence (家访 → 1 → answers → 提交) it prints the mean wall time
of a whole turn (`Dispatcher` → `Engine.process` → one transaction, commit included), the
process CPU time per turn, and how many SQL statements the turn sent (BEGIN/COMMIT included).
This is where to look when `bench/run.py` shows homevisit far below the floor: the SQLite
floor pays one small statement and one commit per message.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import STEPS  # noqa: E402
from run import pg_create_schema, pg_drop_schema, seed  # noqa: E402


async def measure(url: str, teachers: int, rounds: int, no_fsync: bool) -> None:
    from sqlalchemy import event

    from bot.app import build_dispatcher
    from bot.core.types import InboundMessage
    from bot.deps import build_deps
    from config.settings import Settings

    settings = Settings(database_url=url)
    deps = build_deps(settings)
    if no_fsync:

        @event.listens_for(deps.db.engine, "connect")
        def _off(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA synchronous=OFF")

    # Statements as the driver sees them (storage/fastsql.py bypasses SQLAlchemy's events):
    # SQLite's own trace callback (BEGIN, SAVEPOINT and COMMIT included); on PostgreSQL every
    # cursor execute, plus BEGIN and COMMIT, each one round trip.
    statements = 0

    def _count(*_a: object) -> None:
        nonlocal statements
        statements += 1

    if url.startswith("sqlite"):

        @event.listens_for(deps.db.engine, "connect")
        def _trace(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            dbapi_conn.set_trace_callback(_count)

    else:
        import psycopg

        class CountingCursor(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                _count()
                return super().execute(*args, **kwargs)

        @event.listens_for(deps.db.engine, "connect")
        def _factory(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            dbapi_conn.cursor_factory = CountingCursor

        event.listen(deps.db.engine, "begin", _count)
        event.listen(deps.db.engine, "commit", _count)

    dispatcher = build_dispatcher(settings, deps)
    wall: dict[int, list[float]] = defaultdict(list)
    cpu: dict[int, list[float]] = defaultdict(list)
    stmts: dict[int, list[int]] = defaultdict(list)
    n = 0
    for r in range(rounds):
        for t in range(1, teachers + 1):
            user = f"BT{t:05d}"
            for i, (text, marker) in enumerate(STEPS):
                n += 1
                msg = InboundMessage("api", user, text, message_id=f"s{n}")
                s0, w0, c0 = statements, time.perf_counter(), time.process_time()
                replies = await dispatcher.handle(msg)
                w1, c1 = time.perf_counter(), time.process_time()
                if marker not in "\n".join(replies):
                    raise SystemExit(f"unexpected reply to {text!r}: {replies!r}")
                if r > 0 or t > 2:  # skip the very first turns (caches warming)
                    wall[i].append(w1 - w0)
                    cpu[i].append(c1 - c0)
                    stmts[i].append(statements - s0)
    deps.db.close()
    print(f"{'step':<8}{'wall ms':>9}{'CPU ms':>9}{'SQL':>6}")
    total_w = total_c = 0.0
    total_s = 0
    for i, (text, _m) in enumerate(STEPS):
        w, c = statistics.mean(wall[i]) * 1000, statistics.mean(cpu[i]) * 1000
        s = statistics.mean(stmts[i])
        total_w, total_c, total_s = total_w + w, total_c + c, total_s + s
        print(f"{text:<8}{w:>9.2f}{c:>9.2f}{s:>6.1f}")
    k = len(STEPS)
    print(f"{'mean':<8}{total_w / k:>9.2f}{total_c / k:>9.2f}{total_s / k:>6.1f}")
    print(
        f"=> {1000 / (total_w / k):.0f} messages/s one turn at a time (under load, group commit"
        " lets waiting turns share a commit)"
        if url.startswith("sqlite")
        else f"=> {1000 / (total_c / k):.0f} messages/s per core of Python CPU"
    )
    print("(CPU ms counts the whole process: the event loop and the database thread)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--teachers", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2, help="check-ins per teacher")
    p.add_argument("--no-fsync", action="store_true", help="SQLite synchronous=OFF")
    args = p.parse_args()
    schema = None
    with tempfile.TemporaryDirectory(prefix="homevisit-steps-") as tmp:
        if args.backend == "sqlite":
            url = f"sqlite:///{tmp}/steps.db"
        else:
            schema, url = pg_create_schema()
        try:
            seed(url, args.teachers, 5, "BT")
            asyncio.run(measure(url, args.teachers, args.rounds, args.no_fsync))
        finally:
            if schema:
                pg_drop_schema(schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
