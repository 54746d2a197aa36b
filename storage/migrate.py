"""Alembic, driven from code: `homevisit db upgrade` and the automatic upgrade on start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).parent / "migrations"
# Several instances may start at once on one PostgreSQL: they take turns migrating.
PG_MIGRATION_LOCK = 0x686F6D65  # "home"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def known_revisions() -> set[str]:
    """Every migration revision this version of homevisit knows."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    return {rev.revision for rev in script.walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> None:
    # SQLite: BEGIN IMMEDIATE serialises; PostgreSQL: see take_migration_lock (env.py calls it).
    command.upgrade(alembic_config(engine), revision)


def take_migration_lock(conn: Connection) -> None:
    """Inside the migrations' transaction, before alembic reads the current revision: wait for
    any other instance's migration to commit (a transaction-level lock, so it holds through a
    pooler in transaction mode too, and is released by the commit or the rollback). A migration
    may take minutes on a province's tables: no statement timeout, and a minute to get a lock."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        text(
            "SELECT set_config('statement_timeout', '0', true),"
            " set_config('lock_timeout', '60000', true)"
        )
    )
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
