"""Persistence: SQLAlchemy tables, migrations and the stores that implement the core ports."""
