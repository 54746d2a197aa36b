"""The database handle: one SQLAlchemy engine and the worker threads that use it.

Why synchronous SQLAlchemy Core on worker threads instead of the asyncio ORM: a conversation turn
is a handful of tiny statements. Through the async ORM over aiosqlite every statement costs a
thread hop and an ORM flush (issue 2 reports about 300 requests/s for it here); run as one
function on a worker thread a turn costs one hop, and the whole turn is one short transaction.
SQLite gets a single worker (it has one writer anyway, and `BEGIN IMMEDIATE` means a transaction
never has to upgrade its lock); PostgreSQL gets one worker per pooled connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.core.errors import ConfigError, StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

PG_POOL_SIZE = 10


def engine_url(url: str) -> str:
    """Map the user-facing URL (`sqlite:///x.db`, `postgresql://...`) to a synchronous driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str) -> Engine:
    sync_url = engine_url(url)
    if sync_url.startswith("sqlite"):
        database = make_url(sync_url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            sync_url, hide_parameters=True, connect_args={"timeout": 10, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if sync_url.startswith("postgresql"):
        # A URL may carry its own libpq options (tests use `?options=-csearch_path%3D...`).
        parsed = make_url(sync_url)
        options = " ".join(
            filter(None, [str(parsed.query.get("options", "")), "-c lock_timeout=5000"])
        )
        return create_engine(
            parsed.difference_update_query(["options"]),
            hide_parameters=True,  # never let student data into an exception message or a log
            pool_size=PG_POOL_SIZE,
            max_overflow=0,
            pool_timeout=5,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 5, "options": options},
        )
    raise ConfigError(f"DATABASE_URL: unsupported database {url.split(':', 1)[0]!r}")


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the teacher sees the reply (WAL keeps this cheap).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: two processes never deadlock upgrading a read lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Owns the engine and the executor; `run` executes a function in one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        workers = 1 if self.is_sqlite else PG_POOL_SIZE
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on the calling thread (CLI commands and tests)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, PoolTimeout) as exc:
            # connection refused or lost, pool exhausted, SQLite busy past its timeout
            raise StorageUnavailable(type(exc).__name__) from exc

    def _call(self, fn: Callable[[Connection], T]) -> T:
        with self.begin() as conn:
            return fn(conn)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` inside one transaction on a database worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self.run(lambda c: c.execute(text("SELECT 1")).scalar()), 3)
        except Exception:  # any failure means "not healthy"; the reason is logged once
            log.warning("database ping failed", exc_info=True)
            return False
        return True

    def upgrade(self) -> None:
        """Apply migrations up to the newest (safe to call on every start)."""
        from storage.migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
