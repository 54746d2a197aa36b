"""The floor: what this machine does with no homevisit code at all.

Two tiny aiohttp servers with the same request shape as `POST /api/messages`
(`{"user": ..., "text": ...}` in, `{"replies": [...]}` out), each run as its own process by
`bench/run.py`:

* ``--mode bare``   parse the JSON body, return a small JSON reply. Nothing else.
* ``--mode sqlite`` the same, plus one durable SQLite commit per request: WAL,
  ``synchronous=FULL``, one small upsert (INSERT ... ON CONFLICT DO UPDATE) of the sender's row,
  run through a single-thread executor, exactly like homevisit's one SQLite writer thread.

    .venv/bin/python bench/floor_app.py --mode sqlite --db /tmp/floor.db --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web


def _reply(data: object) -> web.Response:
    return web.json_response(data, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def healthz(_request: web.Request) -> web.Response:
    return _reply({"status": "ok"})


def bare_app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return _reply({"replies": [f"收到：{body.get('text', '')}"]})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/messages", handle)
    return app


def sqlite_app(path: str) -> web.Application:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS msgs (user TEXT PRIMARY KEY, text TEXT NOT NULL, n INTEGER)"
    )

    def write(user: str, text: str) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "INSERT INTO msgs (user, text, n) VALUES (?, ?, 1) "
                "ON CONFLICT(user) DO UPDATE SET text = excluded.text, n = n + 1 RETURNING n",
                (user, text),
            ).fetchone()
            conn.execute("COMMIT")  # durable: WAL + synchronous=FULL fsyncs the WAL here
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(row[0])

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        loop = asyncio.get_running_loop()
        n = await loop.run_in_executor(executor, write, body["user"], body["text"])
        return _reply({"replies": [f"收到第{n}条"]})

    async def close(_app: web.Application) -> None:
        executor.shutdown(wait=True)
        conn.close()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/messages", handle)
    app.on_cleanup.append(close)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("bare", "sqlite"), required=True)
    parser.add_argument("--db", help="SQLite file (mode sqlite)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.mode == "sqlite" and not args.db:
        parser.error("--mode sqlite needs --db")
    app = bare_app() if args.mode == "bare" else sqlite_app(args.db)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda t: print(t, file=sys.stderr),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
