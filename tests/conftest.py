"""Shared fixtures: a real database per test, on SQLite (a file) and on PostgreSQL.

PostgreSQL is the server this machine type starts (127.0.0.1:5432, trust auth, database `test`);
each test gets a schema of its own. Set HOMEVISIT_TEST_PG to point elsewhere. Under CI=true a
PostgreSQL that does not answer fails the run instead of skipping.
"""

from __future__ import annotations

import os
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

PG_URL = os.environ.get("HOMEVISIT_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


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


def make_db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'homevisit.db'}"
        return
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_admin_url())
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
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
    database = Database(db_url)
    metadata.create_all(database.engine)
    yield database
    database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---------------------------------------------------------------- a running bot on the demo roster


def make_settings(db_url: str, **overrides: object) -> Settings:
    base = load_settings({"DATABASE_URL": db_url}, env_file=None)
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
