"""Alembic environment: always online, on the engine handed over by `storage.migrate`."""

from __future__ import annotations

from alembic import context

from storage.migrate import take_migration_lock
from storage.schema import metadata

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        take_migration_lock(connection)
        context.run_migrations()
