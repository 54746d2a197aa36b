"""Shared fixtures: a real database per test, on SQLite (a file) and on PostgreSQL.

PostgreSQL is the server this machine type starts (127.0.0.1:5432, trust auth, database `test`);
each test gets a schema of its own. Set HOMEVISIT_TEST_PG to point elsewhere. Under CI=true a
PostgreSQL that does not answer fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from storage.db import Database
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
