"""`Database.run`: the hand-over between the event loop and the database threads."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy.engine import Connection

from bot.core.errors import StorageUnavailable
from storage.db import PG_WORKERS, Database
from tests.conftest import open_db


async def test_a_job_cancelled_while_queued_never_runs(db: Database) -> None:
    release = threading.Event()
    ran: list[str] = []

    def blocker(_conn: Connection) -> None:
        release.wait(10)

    def job(_conn: Connection) -> None:
        ran.append("cancelled job")

    # every database thread busy (SQLite has one writer), then a job that its caller abandons
    blockers = [asyncio.ensure_future(db.run(blocker)) for _ in range(PG_WORKERS)]
    await asyncio.sleep(0.2)
    abandoned = asyncio.ensure_future(db.run(job))
    await asyncio.sleep(0.05)
    abandoned.cancel()
    release.set()
    await asyncio.gather(*blockers)
    await db.run(lambda _conn: None)  # everything queued before it has been taken
    assert ran == [] and abandoned.cancelled()


async def test_stop_iteration_in_a_job_reaches_the_caller(db: Database) -> None:
    def job(_conn: Connection) -> None:
        raise StopIteration

    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(db.run(job), 5)
    assert await db.run(lambda _conn: 42) == 42  # the thread carries on


async def test_run_after_close_is_refused_at_once(db_url: str) -> None:
    database = open_db(db_url)
    database.upgrade()
    assert await database.run(lambda _conn: 1) == 1
    database.close()
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(database.run(lambda _conn: 1), 5)
