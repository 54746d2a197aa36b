"""Faults on PostgreSQL: the server going away mid-run, and an exhausted connection pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from bot.app import build_dispatcher
from bot.deps import Deps
from bot.dispatcher import TURN_DEADLINE
from config.forms import load_form
from config.settings import Settings
from handlers import texts
from storage.db import PG_POOL_SIZE, Database
from storage.demo import load_demo
from storage.schema import metadata, visits
from tests.conftest import ChatDriver, FakeClock, make_db_url, make_settings
from tests.tcp_proxy import OutageProxy


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    yield from make_db_url("postgresql", tmp_path)


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[OutageProxy]:
    parts = urlsplit(pg_url)
    p = OutageProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await p.start()
    yield p
    await p.stop()


def demo_database(url: str, clock: FakeClock, *, pool_timeout: float = 5.0) -> Database:
    """A Database on `url` with the schema and the demo roster."""
    db = Database(url, pool_timeout=pool_timeout)
    metadata.create_all(db.engine)
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
    return db


def demo_bot(settings: Settings, db: Database, clock: FakeClock) -> ChatDriver:
    return ChatDriver(build_dispatcher(settings, Deps(db, load_form(settings.form_path), clock)))


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}").geturl()


async def test_database_outage_gets_an_apology_and_recovers(
    pg_url: str, proxy: OutageProxy, clock: FakeClock
) -> None:
    demo_database(pg_url, clock).close()
    settings: Settings = make_settings(through(pg_url, proxy.port))
    db = Database(settings.database_url)
    try:
        bot = demo_bot(settings, db, clock)
        await bot.say("周小禾")
        assert "【第2题/" in await bot.say("3")
        assert await db.ping()

        proxy.cut()  # PostgreSQL "restarts": connections drop, new ones are refused
        started = time.monotonic()
        assert await bot.say("1") == texts.UNAVAILABLE
        assert not await db.ping()
        assert time.monotonic() - started < 30

        proxy.restore()
        assert await db.ping()
        resumed = await bot.say("1")  # the same answer again: nothing was half-written
        assert "【第3题/" in resumed
        answers = await db.run(lambda c: c.execute(select(visits.c.answers)).scalar_one())
        assert answers == {"method": "电话", "study": "好"}
    finally:
        db.close()


async def test_exhausted_pool_answers_instead_of_hanging(pg_url: str, clock: FakeClock) -> None:
    settings = make_settings(pg_url)
    db = demo_database(pg_url, clock, pool_timeout=0.5)  # (waiting out 5 s proves no more)
    bot = demo_bot(settings, db, clock)
    held = [db.engine.connect() for _ in range(PG_POOL_SIZE)]  # every pooled connection in use
    try:
        started = time.monotonic()
        replies = await asyncio.gather(*(bot.say("家访", user=u) for u in ("T001", "T002")))
        assert replies == [texts.UNAVAILABLE] * 2
        assert time.monotonic() - started < 20
    finally:
        for conn in held:
            conn.close()
    assert "共5名" in await bot.say("家访")
    db.close()


async def test_a_connection_killed_while_idle_is_replaced_without_failing_a_turn(
    pg_url: str, clock: FakeClock
) -> None:
    settings = make_settings(pg_url)
    db = demo_database(pg_url, clock)
    bot = demo_bot(settings, db, clock)
    try:
        assert "共5名" in await bot.say("家访")
        pid = await db.run(lambda c: c.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        admin = Database(pg_url)
        with admin.begin() as conn:  # PostgreSQL restarts, or a failover drops the connection
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")  # type: ignore[arg-type]
        admin.close()
        assert "开始登记" in await bot.say("周小禾")  # the first turn afterwards still works
    finally:
        db.close()


async def test_a_stalled_connection_is_answered_busy_within_seconds_and_replaced(
    pg_url: str, proxy: OutageProxy, clock: FakeClock
) -> None:
    demo_database(pg_url, clock).close()
    settings: Settings = make_settings(through(pg_url, proxy.port))
    db = Database(settings.database_url)
    try:
        bot = demo_bot(settings, db, clock)
        teachers = ("T001", "T002", "T003")
        for user in teachers:  # every worker thread that serves them has its connection open
            assert "近14天" in await bot.say("进度", user=user)

        proxy.stall()  # sockets stay open, nothing is forwarded: no error reaches libpq
        started = time.monotonic()
        replies = await asyncio.gather(*(bot.say("进度", user=u) for u in teachers * 3))
        took = time.monotonic() - started
        assert replies == [texts.UNAVAILABLE] * 9
        # each teacher's three messages wait their turn: at most three deadlines in a row
        assert took < 3 * TURN_DEADLINE + 3

        proxy.resume()
        started = time.monotonic()
        for user in teachers:
            assert "近14天" in await bot.say("进度", user=user)
        assert time.monotonic() - started < 10  # fresh connections, no restart
    finally:
        db.close()


async def test_work_abandoned_at_the_deadline_does_not_commit_later(
    pg_url: str, proxy: OutageProxy, clock: FakeClock
) -> None:
    """A teacher told "busy" must not find the answer saved after all: it would shift every
    later answer by one question."""
    demo_database(pg_url, clock).close()
    settings: Settings = make_settings(through(pg_url, proxy.port))
    db = Database(settings.database_url)
    try:
        bot = demo_bot(settings, db, clock)
        await bot.say("周小禾")
        proxy.stall()
        assert await bot.say("3") == texts.UNAVAILABLE
        proxy.resume()
        answers = await db.run(lambda c: c.execute(select(visits.c.answers)).scalar_one())
        assert answers == {}
        assert "【第2题/" in await bot.say("3")
    finally:
        db.close()
