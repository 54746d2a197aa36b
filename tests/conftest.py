"""Shared fixtures: a real database per test, on SQLite (a file) and on PostgreSQL.

PostgreSQL is the server this machine type starts (127.0.0.1:5432, trust auth, database `test`);
each test gets a schema of its own. Set HOMEVISIT_TEST_PG to point elsewhere. Under CI=true a
PostgreSQL that does not answer fails the run instead of skipping.

The `pgbouncer` backend is the same PostgreSQL through a private PgBouncer in transaction mode
(tests/pgbouncer.py), started on first use and stopped at the end of the run; the store contract,
the conversation and a `serve` test always run on it too, and HOMEVISIT_TEST_PGBOUNCER=1 adds it
to every test parametrised over `db_url`. Under CI=true a missing pgbouncer is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bot.app import build_dispatcher, conversation_over
from bot.core.types import InboundMessage
from bot.deps import Deps
from bot.dispatcher import Dispatcher
from config.calendar import SchoolCalendar
from config.forms import load_form
from config.settings import Secret, Settings, load_settings
from storage.db import Database
from storage.demo import demo_roster, load_demo
from storage.memory import MemoryStore, MemoryTurns
from storage.schema import metadata
from tests.pgbouncer import PgBouncer, pgbouncer_binary

PG_URL = os.environ.get("HOMEVISIT_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
PGBOUNCER_EVERYWHERE = os.environ.get("HOMEVISIT_TEST_PGBOUNCER") == "1"
BACKENDS = ["sqlite", "postgresql", *(["pgbouncer"] if PGBOUNCER_EVERYWHERE else [])]
# the backends of the tests that always run through the pooler too
POOLED_BACKENDS = [*BACKENDS, *([] if PGBOUNCER_EVERYWHERE else ["pgbouncer"])]


class FakeClock:
    """A clock the test moves by hand. Starts on a Monday morning in Shanghai (01:00 UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, **kwargs: float) -> None:
        self.current += timedelta(**kwargs)


def _pg_admin_url() -> str:
    return PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)


_pg_state: dict[str, bool] = {}


def pg_available() -> bool:
    if "ok" not in _pg_state:
        try:
            eng = create_engine(_pg_admin_url(), connect_args={"connect_timeout": 3})
            with eng.connect() as c:
                c.execute(text("SELECT 1"))
            eng.dispose()
            _pg_state["ok"] = True
        except Exception:
            _pg_state["ok"] = False
    return _pg_state["ok"]


def require_pg() -> None:
    if not pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} does not answer (CI=true: this is a failure)")
        pytest.skip(f"PostgreSQL at {PG_URL} does not answer")


def require_pgbouncer() -> None:
    if pgbouncer_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbouncer is not installed (CI=true: this is a failure)")
        pytest.skip("pgbouncer is not installed (python tests/ensure_tools.py)")


_bouncer: dict[str, PgBouncer] = {}
_pooled_urls: set[str] = set()


def run_pgbouncer() -> PgBouncer:
    """The run's private PgBouncer (started on first use)."""
    if "it" not in _bouncer:
        require_pgbouncer()
        bouncer = PgBouncer(PG_URL, Path(tempfile.mkdtemp(prefix="homevisit-pgbouncer-")))
        bouncer.start()
        _bouncer["it"] = bouncer
    return _bouncer["it"]


@pytest.fixture(scope="session", autouse=True)
def _stop_pgbouncer() -> Iterator[None]:
    yield
    if "it" in _bouncer:
        bouncer = _bouncer.pop("it")
        bouncer.stop()
        shutil.rmtree(bouncer.workdir, ignore_errors=True)


def pooled(url: str) -> bool:
    """Whether `url` goes through the test PgBouncer (then HOMEVISIT_PG_POOLER=pgbouncer)."""
    return url in _pooled_urls


def open_db(url: str, **kwargs: Any) -> Database:
    """A Database on a test URL, configured as HOMEVISIT_PG_POOLER would configure it."""
    return Database(url, pooled=pooled(url), **kwargs)


def make_db_url(backend: str, tmp_path: Path, bouncer: PgBouncer | None = None) -> Iterator[str]:
    """A fresh database: a SQLite file, or a schema of its own on PostgreSQL, reached directly
    (`postgresql`) or through `bouncer` (`pgbouncer`; default: the run's own)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'homevisit.db'}"
        return
    require_pg()
    if backend == "pgbouncer" and bouncer is None:
        bouncer = run_pgbouncer()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_admin_url())
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    query = f"options=-csearch_path%3D{schema}"
    url = f"{PG_URL}?{query}" if bouncer is None else bouncer.url(query)
    if bouncer is not None:
        _pooled_urls.add(url)
    try:
        yield url
    finally:
        _pooled_urls.discard(url)
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL, once for SQLite and once for PostgreSQL."""
    yield from make_db_url(request.param, tmp_path)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A Database with the schema created (migrations are tested on their own)."""
    database = open_db(db_url)
    metadata.create_all(database.engine)
    yield database
    database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---------------------------------------------------------------- a running bot on the demo roster


def make_settings(db_url: str, **overrides: object) -> Settings:
    env = {
        "DATABASE_URL": db_url,
        **({"HOMEVISIT_PG_POOLER": "pgbouncer"} if pooled(db_url) else {}),
    }
    base = load_settings(env, env_file=None)
    return replace(base, **overrides)  # type: ignore[arg-type]


class ChatDriver:
    """Talk to the real dispatcher as a teacher: `await bot.say("家访")` returns the reply text."""

    def __init__(self, dispatcher: Dispatcher, channel: str = "console") -> None:
        self.dispatcher = dispatcher
        self.channel = channel

    async def replies(self, text: str, user: str = "T001", **kw: Any) -> list[str]:
        message = InboundMessage(self.channel, user, text, **kw)
        return await self.dispatcher.handle(message)

    async def say(self, text: str, user: str = "T001", **kw: Any) -> str:
        return "\n\n".join(await self.replies(text, user, **kw))


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url, api_token=Secret("t" * 32))


@pytest.fixture
def deps(settings: Settings, db: Database, clock: FakeClock) -> Deps:
    with db.begin() as conn:
        load_demo(conn, now=clock.now())
    return Deps(db=db, form=load_form(settings.form_path), clock=clock)


@pytest.fixture
def bot(settings: Settings, deps: Deps) -> ChatDriver:
    """The real dispatcher on a real database (SQLite and PostgreSQL), with the demo roster."""
    return ChatDriver(build_dispatcher(settings, deps))


@pytest.fixture
def memory_bot(clock: FakeClock) -> ChatDriver:
    """The same conversation on the memory store with the demo roster: for conversation
    scripts, which the store contract suite ties to the databases."""
    store = MemoryStore()
    store.load_roster(demo_roster())
    settings = load_settings({}, env_file=None)
    form = load_form(settings.form_path)
    return ChatDriver(
        conversation_over(MemoryTurns(store), settings, form, clock, SchoolCalendar())
    )
