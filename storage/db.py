"""The database handle: one SQLAlchemy engine and the worker threads that use it.

Why synchronous SQLAlchemy Core on worker threads instead of the asyncio ORM: a conversation turn
is a handful of tiny statements. Through the async ORM over aiosqlite every statement costs a
thread hop and an ORM flush (issue 2 reports about 300 requests/s for it here); run as one
function on a worker thread a turn costs one hop, and the whole turn is one short transaction.
SQLite gets a single worker (it has one writer anyway, and `BEGIN IMMEDIATE` means a transaction
never has to upgrade its lock); PostgreSQL gets a pool of worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.core.errors import ConfigError, StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

PG_POOL_SIZE = 20
# Each turn waits on several round trips (the GIL is free meanwhile), so more threads than cores
# pay off; measured with bench/run.py on 2 cores: 2 -> ~320, 8 -> ~530, 12 -> ~540 messages/s.
# The pool keeps headroom above the workers for CLI commands and health checks.
PG_WORKERS = 10
# How long a caller waits for its database work before giving up with StorageUnavailable (the
# work is then abandoned: rolled back if it has not committed, its connection cut if a query of
# it hangs). A stalled network (a proxy or a firewall that keeps the socket open but forwards
# nothing) would otherwise hold every request until TCP gives up, many minutes later.
DEFAULT_DEADLINE = 30.0
# libpq's own guards against a dead peer: a connection attempt gives up after CONNECT_TIMEOUT,
# and keepalives notice a host that vanished without a word.
CONNECT_TIMEOUT = 5
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20000,
}
# Guards on every session, or every transaction behind a pooler (see create_db_engine), in ms.
PG_TIMEOUTS = {"lock_timeout": "5000", "statement_timeout": "15000"}


def engine_url(url: str) -> str:
    """Map the user-facing URL (`sqlite:///x.db`, `postgresql://...`) to a synchronous driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    return parsed.render_as_string(hide_password=False)


# Chinese as itself, not \uXXXX: a session or a visit is a third of the bytes to send. One
# encoder for all (the engine's JSON columns, and storage.outbox's bulk insert): `json.dumps`
# with options builds a new one for every value.
json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def create_db_engine(url: str, *, pool_timeout: float = 5.0, pooled: bool = False) -> Engine:
    """The engine for `url`. `pooled`: PostgreSQL is reached through a pooler in transaction mode
    (PgBouncer), which hands each transaction to any of its server connections (see below)."""
    # SQLAlchemy's engine logs result rows at DEBUG (students' names, answers) and statements
    # at INFO: a log level set for the whole process must not switch that on.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    sync_url = engine_url(url)
    if sync_url.startswith("sqlite"):
        database = make_url(sync_url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            sync_url,
            hide_parameters=True,
            json_serializer=json_dumps,
            connect_args={"timeout": 10, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if sync_url.startswith("postgresql"):
        parsed = make_url(sync_url)
        # A URL may carry its own libpq options (tests use `?options=-csearch_path%3D...`).
        own = str(parsed.query.get("options", ""))
        connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, **PG_KEEPALIVES}
        if pooled:
            # A pooler refuses startup `options` ("unsupported startup parameter") and would hand
            # a session's settings to whoever gets its server connection next: the timeouts and
            # the URL's `-c name=value` options are set at the start of every transaction. And
            # no server-side prepared statements: the next transaction may run on a connection
            # that lacks ours, or holds another client's under the same name.
            per_transaction = {**PG_TIMEOUTS, **url_options(own)}
            connect_args["prepare_threshold"] = None
        else:
            # Directly, they are the session's own (no round trip per transaction).
            timeouts = " ".join(f"-c {name}={value}" for name, value in PG_TIMEOUTS.items())
            connect_args["options"] = " ".join(filter(None, [timeouts, own]))
        engine = create_engine(
            parsed.difference_update_query(["options"]),
            hide_parameters=True,  # never let student data into an exception message or a log
            json_serializer=json_dumps,
            pool_size=PG_POOL_SIZE,
            max_overflow=0,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
        if pooled:
            event.listen(engine, "begin", _PgTransactionSettings(per_transaction))
        return engine
    raise ConfigError(f"DATABASE_URL: unsupported database {url.split(':', 1)[0]!r}")


def url_options(options: str) -> dict[str, str]:
    """The `-c name=value` settings of a libpq `options` string (`--name=value` too)."""
    settings: dict[str, str] = {}
    words = options.split()
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            word = words.pop(0)
        elif word.startswith("-c"):
            word = word[2:]
        elif word.startswith("--"):
            word = word[2:].replace("-", "_")
        else:
            word = ""
        name, sep, value = word.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) or "\\" in value:
            raise ConfigError(["DATABASE_URL: options must be -c name=value settings"])
        settings[name] = value
    return settings


class _PgTransactionSettings:
    """Sets session settings for one transaction (`set_config(..., true)`, i.e. SET LOCAL) as it
    begins: in one statement, on the transaction's own server connection, gone at its end."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.sql = "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings))
        self.params = tuple(x for pair in settings.items() for x in pair)

    def __call__(self, conn: Connection) -> None:
        raw = conn.connection.driver_connection
        assert raw is not None
        dbapi = conn.dialect.loaded_dbapi
        try:
            raw.execute(self.sql, self.params)
        except dbapi.Error as exc:
            # (the driver's own error, which SQLAlchemy does not wrap here: wrap it as it would,
            # so a lost connection is dropped and the turn retried like any other)
            lost = conn.dialect.is_disconnect(exc, raw, None)
            if lost:
                conn.connection.invalidate(exc)
            else:  # no transaction object exists yet to roll the failed one back: do it here
                with contextlib.suppress(dbapi.Error):
                    raw.rollback()
            raise DBAPIError.instance(
                self.sql,
                self.params,
                exc,
                dbapi.Error,
                hide_parameters=True,
                connection_invalidated=lost,
                dialect=conn.dialect,
            ) from exc


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
    # (Straight on the driver: this runs once per message, and isolation_level=None means
    # the driver itself never begins or commits behind our back.)
    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        # another process holds the write lock past busy_timeout (or the disk is gone): this is
        # the driver's own error, which SQLAlchemy does not wrap, so say what it means here
        raise _unavailable(exc) from exc


def _unavailable(exc: BaseException) -> StorageUnavailable:
    """StorageUnavailable saying what the driver said, on its first line only.

    Connection and lock errors (refused, timed out, locked, a pooler refusing a parameter) quote
    no data, and an operator needs their words; the SQL statement SQLAlchemy appends is left out.
    """
    driver = getattr(exc, "orig", None) or exc
    first = (str(driver).strip().splitlines() or [""])[0][:200]
    if "unsupported startup parameter" in first:
        first += " (through a connection pooler? set HOMEVISIT_PG_POOLER=pgbouncer)"
    error = StorageUnavailable(f"{type(driver).__name__}: {first}" if first else type(exc).__name__)
    error.__cause__ = exc
    return error


class Abandoned(Exception):
    """The caller stopped waiting for this work: it must not commit (see `Database.run`)."""


class _Job:
    __slots__ = ("_lock", "_running_on", "expired", "fn", "future", "loop")

    def __init__(self, fn: Callable[[Connection], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self._lock = threading.Lock()
        self._running_on: Any = None  # the driver connection while the job runs on it
        self.expired = False  # its deadline passed before it was done

    @property
    def abandoned(self) -> bool:
        return self.future.cancelled()

    def expire(self) -> None:
        """The deadline's timer (on the job's loop)."""
        self.expired = self.future.cancel()

    def call(self, conn: Connection) -> Any:
        """Run the job on `conn` (inside the caller's transaction); Abandoned if the caller gave
        up meanwhile, so that the transaction rolls back instead of committing."""
        with self._lock:
            self._running_on = conn.connection.driver_connection
        try:
            result = self.fn(conn)
        finally:
            with self._lock:
                self._running_on = None
        if self.abandoned:
            raise Abandoned
        return result

    def cut(self) -> None:
        """From any thread: if the job is running a query, shut its connection's socket down.

        A query stuck on a stalled network then fails at once (the socket reads end-of-file),
        the connection is dropped and the thread is free for the next job.
        """
        with self._lock:
            raw = self._running_on
            pgconn = getattr(raw, "pgconn", None)  # psycopg; SQLite has no socket to cut
            if pgconn is None:
                return
            with contextlib.suppress(OSError, ValueError):
                fd = pgconn.socket
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)

    def settle(self, result: Any, error: BaseException | None) -> None:
        """On the job's event loop."""
        if self.future.cancelled():
            return
        if isinstance(error, StopIteration):  # a future refuses it (it would end a coroutine)
            wrapped = RuntimeError("a database job raised StopIteration")
            wrapped.__cause__ = error
            error = wrapped
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _settle_all(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Wake each event loop once per batch, not once per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
    for item in outcomes:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():

        def settle(items: list[tuple[_Job, Any, BaseException | None]] = items) -> None:
            for job, result, error in items:
                job.settle(result, error)

        # The caller's loop may be gone (shut down while its work was queued): nobody to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)


def _close_quietly(conn: Connection) -> None:
    """Drop a connection that failed: nothing more can be learnt from it."""
    with contextlib.suppress(Exception):
        conn.invalidate()
        conn.close()


class _JobQueue:
    """Jobs handed from event loops to database threads; each future is settled on its loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()

    def submit(self, fn: Callable[[Connection], T]) -> _Job:
        job = _Job(fn, asyncio.get_running_loop())
        self._queue.put(job)
        return job


class _SqliteWriter(_JobQueue):
    """SQLite's single writer, with group commit.

    Turns queue up while the writer is busy; it then runs every waiting turn in its own
    SAVEPOINT inside one transaction and commits once, so N turns share one fsync. A turn that
    fails rolls back to its savepoint only. No turn is answered before the commit that holds it
    is on disk, so durability is the same as one commit per turn.
    """

    MAX_BATCH = 64

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            batch = [job]
            stop = False
            while len(batch) < self.MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run(batch)
            if stop:
                break
        if self._conn is not None:
            self._conn.close()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self._conn = self.engine.connect()
        return self._conn

    def _run(self, batch: list[_Job]) -> None:
        # A job whose caller gave up while it was queued is not run: its turn must not commit
        # after the next message of the same teacher, which the caller's lock has let through.
        batch = [job for job in batch if not job.future.cancelled()]
        if not batch:
            return
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn = self._connection()
            with conn.begin():
                if len(batch) == 1:
                    outcomes.append((batch[0].call(conn), None))
                else:
                    for job in batch:
                        savepoint = conn.begin_nested()
                        try:
                            result = job.call(conn)
                        except (OperationalError, PoolTimeout) as exc:
                            savepoint.rollback()
                            outcomes.append((None, _unavailable(exc)))
                        except BaseException as exc:  # the writer must outlive any job
                            savepoint.rollback()
                            outcomes.append((None, exc))
                        else:
                            savepoint.commit()
                            outcomes.append((result, None))
        except (OperationalError, PoolTimeout) as exc:
            self._drop_connection()
            outcomes = [(None, _unavailable(exc))] * len(batch)
        except BaseException as exc:  # rolled back as a whole: every job of the batch failed
            outcomes = [(None, exc)] * len(batch)
        _settle_all([(job, r, e) for job, (r, e) in zip(batch, outcomes, strict=True)])

    def _drop_connection(self) -> None:
        if self._conn is not None:
            _close_quietly(self._conn)
            self._conn = None


class _WorkerPool(_JobQueue):
    """PostgreSQL's database threads: each takes the next job and runs it on its own connection.

    Lighter than `run_in_executor` (no concurrent.futures.Future chained to an asyncio one):
    about 30 µs less of the event loop's CPU per message, measured with 20 callers.
    """

    def __init__(self, size: int, call: Callable[[_Job], Any]) -> None:
        super().__init__()
        self._call = call
        self._threads = [
            threading.Thread(target=self._loop, name=f"db-{n}", daemon=True) for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.future.cancelled():  # the caller gave up while it was queued (see above)
                continue
            outcome: tuple[_Job, Any, BaseException | None]
            try:
                outcome = (job, self._call(job), None)
            except BaseException as exc:  # the thread must outlive any job
                outcome = (job, None, exc)
            _settle_all([outcome])


class Database:
    """Owns the engine and the database threads; `run` executes a function in one transaction.

    SQLite: one writer thread with group commit (see `_SqliteWriter`). PostgreSQL: a pool of
    worker threads, each keeping its own connection (no checkout per turn); a connection that
    fails is dropped and the next turn opens a new one.
    """

    def __init__(self, url: str, *, pool_timeout: float = 5.0, pooled: bool = False) -> None:
        self.url = url
        self.pooled = pooled
        self.engine = create_db_engine(url, pool_timeout=pool_timeout, pooled=pooled)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._writer: _SqliteWriter | None = None
        self._workers: _WorkerPool | None = None
        self._local = threading.local()
        self._opened: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on the calling thread (CLI commands and tests)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, PoolTimeout, sqlite3.OperationalError) as exc:
            # connection refused or lost, pool exhausted, SQLite busy past its timeout
            raise _unavailable(exc) from exc

    def _worker_call(self, job: _Job) -> Any:
        try:
            return self._attempt(job)
        except OperationalError as exc:
            if not exc.connection_invalidated or job.abandoned:
                raise _unavailable(exc) from exc
        # The thread's connection had died while idle (a restart, a failover): the turn was rolled
        # back with it, so run it once more on a fresh connection.
        try:
            return self._attempt(job)
        except (OperationalError, PoolTimeout) as exc:
            raise _unavailable(exc) from exc

    def _attempt(self, job: _Job) -> Any:
        conn: Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None or conn.invalidated or conn.closed:
                conn = self.engine.connect()
                self._local.conn = conn
                with self._lock:
                    self._opened = [c for c in self._opened if not c.closed] + [conn]
            with conn.begin():
                return job.call(conn)
        except PoolTimeout as exc:
            raise _unavailable(exc) from exc
        except OperationalError:
            if conn is not None:
                _close_quietly(conn)
            self._local.conn = None
            raise

    async def run(
        self, fn: Callable[[Connection], T], *, deadline: float | None = DEFAULT_DEADLINE
    ) -> T:
        """Run `fn(conn)` inside one transaction on a database thread; await its result.

        After `deadline` seconds (None: no limit, for long jobs) the caller stops waiting and
        gets StorageUnavailable; the work is abandoned: not run if it has not started, rolled
        back if it has not committed, its query cut off if it hangs on the network.
        """
        if self._closed:  # shutting down: no thread is left to run it
            raise StorageUnavailable("closed")
        if self.is_sqlite:
            if self._writer is None:
                self._writer = _SqliteWriter(self.engine)
            job = self._writer.submit(fn)
        else:
            if self._workers is None:
                self._workers = _WorkerPool(PG_WORKERS, self._worker_call)
            job = self._workers.submit(fn)
        if deadline is None:
            return cast(T, await job.future)
        # A timer that cancels the job's future (abandoned), not asyncio.timeout around the
        # await: the same for this one await at half the cost, every turn (bench/RESULTS.md).
        # Not wait_for either: see OutboxDelivery.run_forever.
        timer = job.loop.call_later(deadline, job.expire)
        try:
            return cast(T, await job.future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not job.expired or (task is not None and task.cancelling()):
                raise  # the caller itself was cancelled
        finally:
            timer.cancel()
        job.cut()
        log.warning("database work abandoned after %.0f s", deadline)
        raise StorageUnavailable("deadline") from None

    async def ping(self) -> bool:
        try:
            await self.run(lambda c: c.execute(text("SELECT 1")).scalar(), deadline=3)
        except Exception:  # any failure means "not healthy"; the reason is logged once
            log.warning("database ping failed")
            return False
        return True

    def upgrade(self) -> None:
        """Apply migrations up to the newest (safe to call on every start)."""
        from storage.migrate import upgrade

        try:
            upgrade(self.engine)
        except (OperationalError, PoolTimeout, sqlite3.OperationalError) as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._workers is not None:
            self._workers.close()
        for conn in self._opened:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()
