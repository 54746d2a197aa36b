"""Migrations build the same schema as the models, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage.schema import metadata
from tests.conftest import open_db


def test_migrations_match_the_models(db_url: str) -> None:
    db = open_db(db_url)
    try:
        db.upgrade()
        db.upgrade()  # running again is a no-op
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == []
        assert set(metadata.tables) <= tables and "alembic_version" in tables
    finally:
        db.close()
