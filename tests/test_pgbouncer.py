"""Issue 18 item 3: homevisit on PostgreSQL through PgBouncer 1.18 in transaction pooling mode.

A private pgbouncer (tests/pgbouncer.py) with five server connections in front of the test
PostgreSQL: with HOMEVISIT_PG_POOLER=pgbouncer settings are per transaction (nothing leaks to
the next client of a server connection) and no statement is prepared on the server; without it the
connection is refused naming the setting; migrations of two instances take turns, a real `serve`
process answers through it, and a pgbouncer restarted under load gives "please try again" and then
works again without a restart of homevisit. (The store contract and the conversation also run on
it: see conftest.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from bot.app import build_dispatcher
from bot.core.errors import ConfigError, StorageUnavailable
from bot.deps import Deps
from config.forms import load_form
from handlers import texts
from storage.db import Database, url_options
from storage.demo import load_demo
from storage.migrate import MIGRATIONS
from storage.schema import metadata, visits
from tests.conftest import (
    PG_URL,
    ChatDriver,
    FakeClock,
    make_db_url,
    make_settings,
    require_pg,
    require_pgbouncer,
)
from tests.pgbouncer import POOL_SIZE, PgBouncer
from tests.procs import BotServer, bot_env, run_bot

API_TOKEN = "pgbouncer-test-token-0123456789abcdef"
METRICS_TOKEN = "pgbouncer-test-metrics-0123456789"
LIST_REPLY = "最需要先访的在前"  # in every teacher's 家访 list


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[PgBouncer]:
    """A pgbouncer of this test's own (the restart test restarts it)."""
    require_pg()
    require_pgbouncer()
    own = PgBouncer(PG_URL, tmp_path)
    own.start()
    yield own
    own.stop()


@pytest.fixture
def url(tmp_path: Path, bouncer: PgBouncer) -> Iterator[str]:
    """An empty schema of its own, reached through `bouncer`."""
    yield from make_db_url("pgbouncer", tmp_path, bouncer)


def demo_db(url: str, clock: FakeClock) -> Database:
    db = Database(url, pooled=True)
    metadata.create_all(db.engine)
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
    return db


def demo_bot(url: str, db: Database, clock: FakeClock) -> ChatDriver:
    settings = make_settings(url)
    assert settings.pg_pooler == "pgbouncer"
    return ChatDriver(build_dispatcher(settings, Deps(db, load_form(settings.form_path), clock)))


def session_setting(bouncer: PgBouncer, name: str) -> set[str]:
    """`SHOW name` on every server connection of the pool, as a plain client sees them."""
    seen = set()
    with contextlib.ExitStack() as stack:
        conns = [
            stack.enter_context(psycopg.connect(bouncer.url(), autocommit=False))
            for _ in range(POOL_SIZE)
        ]
        for conn in conns:  # as many open transactions as server connections: each one's own
            row = conn.execute(f"SHOW {name}").fetchone()
            assert row is not None
            seen.add(str(row[0]))
    return seen


# ---------------------------------------------------------------- settings per transaction


def test_url_options_become_per_transaction_settings() -> None:
    assert url_options("-csearch_path=t_1 -c statement_timeout=3000") == {
        "search_path": "t_1",
        "statement_timeout": "3000",
    }
    assert url_options("--lock-timeout=100") == {"lock_timeout": "100"}
    assert url_options("") == {}
    for bad in ("-c", "-csearch_path", "search_path=x", "-c a;b=1", r"-c x=a\ b"):
        with pytest.raises(ConfigError, match="DATABASE_URL"):
            url_options(bad)


async def test_settings_hold_in_each_transaction_and_leak_to_no_other_client(
    url: str, bouncer: PgBouncer, clock: FakeClock
) -> None:
    db = demo_db(url, clock)
    schema = url_options(url.split("options=", 1)[1].replace("%3D", "="))["search_path"]

    def read(conn: Connection) -> tuple[str, ...]:
        names = ("search_path", "statement_timeout", "lock_timeout")
        return tuple(str(conn.exec_driver_sql(f"SHOW {n}").scalar()) for n in names)

    try:
        seen = await asyncio.gather(*(db.run(read) for _ in range(60)))
        assert set(seen) == {(schema, "15s", "5s")}
        with db.begin() as conn:
            assert conn.execute(select(visits)).all() == []  # the schema's tables, by name
    finally:
        db.close()
    # The server connections homevisit used are back to their defaults for the next client.
    assert schema not in " ".join(session_setting(bouncer, "search_path"))
    assert session_setting(bouncer, "statement_timeout") == {"0"}


async def test_concurrent_turns_through_the_pooler_use_no_prepared_statements(
    url: str, clock: FakeClock
) -> None:
    db = demo_db(url, clock)
    bot = demo_bot(url, db, clock)
    try:
        for _ in range(3):  # ten workers on five server connections, the same statements
            replies = await asyncio.gather(
                *(bot.say("家访", user=u) for u in ("T001", "T002") for _ in range(10))
            )
            assert all(LIST_REPLY in r for r in replies), replies
        raw = await db.run(lambda c: c.connection.driver_connection)
        assert isinstance(raw, psycopg.Connection)
        assert raw.prepare_threshold is None
    finally:
        db.close()


async def test_a_pooler_nobody_announced_refuses_the_connection_naming_the_setting(
    url: str, tmp_path: Path
) -> None:
    """Without HOMEVISIT_PG_POOLER the startup options go out as for a direct connection, and
    PgBouncer refuses them: at once, before any prepared statement could meet another client's."""
    db = Database(url)
    try:
        with pytest.raises(StorageUnavailable, match="set HOMEVISIT_PG_POOLER=pgbouncer"):
            await db.run(lambda conn: conn.execute(text("SELECT 1")).scalar())
    finally:
        db.close()
    result = await run_bot(bot_env(DATABASE_URL=url), tmp_path, "db", "upgrade")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "homevisit: the database does not answer (OperationalError: connection failed: "
        f'connection to server at "127.0.0.1", port {urlsplit(url).port} failed: FATAL:  '
        "unsupported startup parameter: options (through a connection pooler? set "
        "HOMEVISIT_PG_POOLER=pgbouncer))"
    ]


# ---------------------------------------------------------------- migrations and the CLI


async def test_two_instances_migrate_through_the_pooler_one_after_the_other(
    url: str, tmp_path: Path
) -> None:
    env = bot_env(DATABASE_URL=url, HOMEVISIT_PG_POOLER="pgbouncer")
    results = await asyncio.gather(*(run_bot(env, tmp_path, "db", "upgrade") for _ in range(2)))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "database is up to date"
        assert result.stderr == ""
    db = Database(url, pooled=True)
    try:
        with db.begin() as conn:
            assert conn.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalars().all() == [ScriptDirectory(str(MIGRATIONS)).get_current_head()]
    finally:
        db.close()


async def test_cli_failures_through_the_pooler_are_one_line(
    url: str, bouncer: PgBouncer, tmp_path: Path
) -> None:
    bad_options = url.replace("options=", "options=-x%20", 1)
    env = bot_env(DATABASE_URL=bad_options, HOMEVISIT_PG_POOLER="pgbouncer")
    result = await run_bot(env, tmp_path, "db", "upgrade")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "homevisit: configuration error: DATABASE_URL: options must be -c name=value settings"
    ]
    bouncer.stop()  # the pooler is down
    env = bot_env(DATABASE_URL=url, HOMEVISIT_PG_POOLER="pgbouncer")
    result = await run_bot(env, tmp_path, "db", "upgrade")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("homevisit: the database does not answer")


# ---------------------------------------------------------------- serving, and a restart


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_serve_answers_through_the_pooler(
    url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = bot_env(
        DATABASE_URL=url,
        HOMEVISIT_PG_POOLER="pgbouncer",
        API_TOKEN=API_TOKEN,
        HOMEVISIT_METRICS_TOKEN=METRICS_TOKEN,
    )
    demo = await run_bot(env, tmp_path, "demo")
    assert demo.returncode == 0, demo.stderr
    server = BotServer("serve", env, tmp_path)
    server.start()
    try:
        await server.wait_ready(http)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}

        async def say(user: str, words: str) -> str:
            body = {"user": user, "text": words}
            async with http.post(f"{server.url}/api/messages", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                return "\n".join((await r.json())["replies"])

        lists = await asyncio.gather(*(say(u, "家访") for u in ("T001", "T002") * 10))
        assert all(LIST_REPLY in r for r in lists), lists
        started = await asyncio.gather(say("T001", "周小禾"), say("T002", "孙小川"))
        assert "开始登记 周小禾" in started[0] and "开始登记 孙小川" in started[1]
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        async with http.get(f"{server.url}/metrics", headers=scrape) as r:
            assert r.status == 200
            metrics = await r.text()
        assert 'homevisit_messages_total{channel="api",outcome="answered"} 22.0' in metrics
        assert "homevisit_database_up 1.0" in metrics
        assert "Traceback" not in server.log_tail(100_000)
    finally:
        server.stop()


async def test_a_pgbouncer_restart_under_load_asks_to_try_again_then_recovers(
    url: str, bouncer: PgBouncer, clock: FakeClock
) -> None:
    db = demo_db(url, clock)
    bot = demo_bot(url, db, clock)
    replies: list[str] = []
    stop = asyncio.Event()

    async def load(user: str) -> None:
        while not stop.is_set():
            replies.append(await bot.say("家访", user=user))

    try:
        workers = [asyncio.create_task(load(u)) for u in ("T001", "T002", "T001", "T002")]
        await asyncio.sleep(0.5)
        before = len(replies)
        await asyncio.to_thread(bouncer.stop)  # immediate shutdown: every connection is cut
        await asyncio.sleep(1.0)  # homevisit meanwhile keeps answering
        await asyncio.to_thread(bouncer.start)
        # Recovery without a restart of homevisit: the same Database, the same dispatcher.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and LIST_REPLY not in replies[-1]:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        assert before > 0
        assert texts.UNAVAILABLE in replies[before:]
        # nothing else: no apology for an error nobody expected, no half-answer
        assert all(LIST_REPLY in r or r == texts.UNAVAILABLE for r in replies), set(replies)
        assert LIST_REPLY in replies[-1]
        assert "开始登记 周小禾" in await bot.say("周小禾")
    finally:
        stop.set()
        db.close()
