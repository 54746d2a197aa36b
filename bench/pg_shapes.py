"""Shapes of one answer's transaction on raw psycopg, side by side (why `SqlStore` holds writes).

    .venv/bin/python bench/pg_shapes.py [--transactions 8000] [--threads 10] [--rounds 2]

Every shape does the same work as an answer turn on PostgreSQL: lock and read a session row,
update a draft's answers, update the session, insert a message id; then commit. They differ only
in how the statements reach the server:

- `plain`: one statement per round trip (BEGIN, SELECT, 3 writes, COMMIT: 6 round trips)
- `cte`: the three writes as one statement of data-modifying CTEs (4 round trips; what
  `SqlStore.flush` does)
- `pipeline`: the whole transaction in psycopg's pipeline mode (2 syncs)
- `pipeline-read`: pipeline mode for BEGIN + the read only, then the CTE and COMMIT
- `client-side`: `BEGIN; SELECT …` and `WITH …; COMMIT` as multi-statement queries with
  client-side parameter binding (2 round trips, no server-side prepared statements)

Threads and an asyncio loop like the server's (20 callers, `--threads` workers, one connection
each). Prints transactions per second and the Python process's CPU per transaction. Uses a
scratch schema in the bench PostgreSQL (`HOMEVISIT_BENCH_PG`), dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

PG = os.environ.get("HOMEVISIT_BENCH_PG", "postgresql://root@127.0.0.1:5432/test")
ROWS = 200
PAYLOAD = json.dumps({"q": "study", "answers": {f"q{i}": "一二三" * 3 for i in range(8)}})

READ = "SELECT data, version FROM s WHERE k = %s FOR UPDATE"
ANSWERS = "UPDATE v SET answers = %s WHERE id = %s AND status = 'draft'"
SESSION = "UPDATE s SET data = %s, version = version + 1 WHERE k = %s AND version = %s"
REMEMBER = "INSERT INTO m VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING id"
WRITES = f"""WITH a AS ({ANSWERS} RETURNING 1), b AS ({SESSION} RETURNING 1),
c AS ({REMEMBER.replace(" RETURNING id", " RETURNING 1")})
SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), (SELECT count(*) FROM c)"""

Shape = Callable[[psycopg.Connection[Any], int], None]


def _args(i: int, version: int) -> tuple[Any, ...]:
    key = f"k{i % ROWS}"
    return (PAYLOAD, i % ROWS, PAYLOAD, key, version, f"m{i}-{uuid.uuid4().hex}", '["ok"]')


def plain(conn: psycopg.Connection[Any], i: int) -> None:
    with conn.transaction():
        cur = conn.cursor()
        _, version = cur.execute(READ, (f"k{i % ROWS}",)).fetchone() or (None, 0)
        a = _args(i, version)
        assert cur.execute(ANSWERS, a[0:2]).rowcount == 1
        assert cur.execute(SESSION, a[2:5]).rowcount == 1
        assert cur.execute(REMEMBER, a[5:7]).fetchone()


def cte(conn: psycopg.Connection[Any], i: int) -> None:
    with conn.transaction():
        cur = conn.cursor()
        _, version = cur.execute(READ, (f"k{i % ROWS}",)).fetchone() or (None, 0)
        assert cur.execute(WRITES, _args(i, version)).fetchone() == (1, 1, 1)


def pipeline(conn: psycopg.Connection[Any], i: int) -> None:
    with conn.pipeline() as p, conn.transaction():
        cur = conn.cursor()
        _, version = cur.execute(READ, (f"k{i % ROWS}",)).fetchone() or (None, 0)
        a = _args(i, version)
        w1, w2, w3 = conn.cursor(), conn.cursor(), conn.cursor()
        w1.execute(ANSWERS, a[0:2])
        w2.execute(SESSION, a[2:5])
        w3.execute(REMEMBER, a[5:7])
        p.sync()
        assert w1.rowcount == 1 and w2.rowcount == 1 and w3.fetchone()


def pipeline_read(conn: psycopg.Connection[Any], i: int) -> None:
    with conn.transaction():
        cur = conn.cursor()
        with conn.pipeline():
            _, version = cur.execute(READ, (f"k{i % ROWS}",)).fetchone() or (None, 0)
        assert cur.execute(WRITES, _args(i, version)).fetchone() == (1, 1, 1)


def client_side(conn: psycopg.Connection[Any], i: int) -> None:
    conn.autocommit = True  # the statements carry BEGIN and COMMIT themselves
    cur = psycopg.ClientCursor(conn)
    cur.execute("BEGIN; " + READ, (f"k{i % ROWS}",))
    cur.nextset()
    _, version = cur.fetchone() or (None, 0)
    cur.execute(WRITES + "; COMMIT", _args(i, version))


SHAPES: dict[str, Shape] = {
    "plain": plain,
    "cte": cte,
    "pipeline": pipeline,
    "pipeline-read": pipeline_read,
    "client-side": client_side,
}


def run(shape: Shape, dsn: str, transactions: int, threads: int) -> tuple[float, float]:
    """(transactions per second, Python CPU ms per transaction)."""
    jobs: queue.SimpleQueue[tuple[int, asyncio.Future[None]] | None] = queue.SimpleQueue()

    def worker(loop: asyncio.AbstractEventLoop) -> None:
        with psycopg.connect(dsn) as conn:
            while (job := jobs.get()) is not None:
                i, future = job
                shape(conn, i)
                loop.call_soon_threadsafe(future.set_result, None)

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        pool = [threading.Thread(target=worker, args=(loop,)) for _ in range(threads)]
        for t in pool:
            t.start()
        locks = [asyncio.Lock() for _ in range(ROWS)]  # one turn per conversation at a time
        callers = asyncio.Semaphore(20)

        async def one(i: int) -> None:
            async with callers, locks[i % ROWS]:
                future = loop.create_future()
                jobs.put((i, future))
                await future

        await asyncio.gather(*(one(i) for i in range(ROWS)))  # connect, prepare
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(transactions)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        for _ in pool:
            jobs.put(None)
        for t in pool:
            t.join()
        return transactions / wall, 1000 * cpu / transactions

    return asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transactions", type=int, default=8000)
    p.add_argument("--threads", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="each shape this many times, interleaved")
    args = p.parse_args()
    schema = f"bench_shapes_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            admin.execute("CREATE TABLE s (k text PRIMARY KEY, data json, version int)")
            admin.execute("CREATE TABLE v (id int PRIMARY KEY, answers json, status text)")
            admin.execute("CREATE TABLE m (id text PRIMARY KEY, replies json)")
            for n in range(ROWS):
                admin.execute("INSERT INTO s VALUES (%s, '{}', 1)", (f"k{n}",))
                admin.execute("INSERT INTO v VALUES (%s, '{}', 'draft')", (n,))
            dsn = psycopg.conninfo.make_conninfo(PG, options=f"-csearch_path={schema}")
            print(f"{'shape':<15}{'tx/s':>8}{'Python CPU ms/tx':>19}")
            for _ in range(args.rounds):
                for name, shape in SHAPES.items():
                    rate, cpu = run(shape, dsn, args.transactions, args.threads)
                    print(f"{name:<15}{rate:>8.0f}{cpu:>19.3f}", flush=True)
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
