"""The audit log's hash chain: edits and removals are found, concurrent writers do not fork it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, text, update

from storage.audit import record, verify_chain
from storage.db import Database
from storage.migrate import upgrade
from storage.schema import audit_log
from tests.test_cli import env, homevisit  # noqa: F401  (the fixture)

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def _fill(db: Database, n: int) -> None:
    with db.begin() as conn:
        for i in range(n):
            record(
                conn,
                at=T0 + timedelta(minutes=i),
                actor=f"C{i:03d}",
                action="export",
                detail={"visits": i, "format": "csv"},
                school_id=i % 2 or None,
            )


def test_an_intact_chain_verifies(db: Database) -> None:
    _fill(db, 5)
    with db.begin() as conn:
        report = verify_chain(conn)
    assert report.ok and report.entries == 5 and len(report.last_hash) == 64


def test_an_edited_entry_is_named(db: Database) -> None:
    _fill(db, 5)
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 3).values(actor="SOMEONE"))
        report = verify_chain(conn)
    assert (report.broken_at, report.reason, report.entries) == (3, "entry changed", 2)


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(db: Database) -> None:
    _fill(db, 4)
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 2).values(hash="f" * 64))
        report = verify_chain(conn)
    assert report.broken_at == 2  # its own hash no longer matches
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 2).values(detail='{"visits":0}'))
        assert verify_chain(conn).broken_at == 2


def test_a_removed_entry_is_named(db: Database) -> None:
    _fill(db, 5)
    with db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == 2))
        report = verify_chain(conn)
    assert (report.broken_at, report.reason) == (2, "entry 2 removed")
    with db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == 1))
        assert verify_chain(conn).reason == "entries 1-2 removed"


def test_concurrent_writers_keep_one_chain(db: Database) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                with db.begin() as conn:
                    record(
                        conn,
                        at=T0,
                        actor=f"W{n}",
                        action="student_view",
                        detail={"i": i},
                        school_id=None,
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.begin() as conn:
        report = verify_chain(conn)
        ids = conn.execute(select(audit_log.c.id).order_by(audit_log.c.id)).scalars().all()
    assert report.ok and report.entries == 40 and ids == list(range(1, 41))


def test_the_migration_chains_existing_entries(db_url: str) -> None:
    database = Database(db_url)
    try:
        upgrade(database.engine, "0005")
        with database.engine.begin() as conn:
            for i in (1, 2, 5):  # a gap: renumbered by the migration
                conn.execute(
                    text(
                        "INSERT INTO audit_log (id, at, actor, action, detail) "
                        "VALUES (:id, :at, :actor, 'export', '{}')"
                    ),
                    {"id": i, "at": T0.replace(tzinfo=None), "actor": f"A{i}"},
                )
        database.upgrade()
        with database.begin() as conn:
            report = verify_chain(conn)
            actors = conn.execute(select(audit_log.c.actor).order_by(audit_log.c.id)).all()
        assert report.ok and report.entries == 3
        assert [a for (a,) in actors] == ["A1", "A2", "A5"]
    finally:
        database.close()


def test_cli_verify_names_the_edited_entry(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    assert homevisit(env, tmp_path, "demo").returncode == 0
    for n in range(3):
        out = tmp_path / f"e{n}.csv"
        assert homevisit(env, tmp_path, "export", "--out", str(out)).returncode == 0
    ok = homevisit(env, tmp_path, "audit", "verify")
    assert ok.returncode == 0 and "audit log intact: 4 entries" in ok.stdout, ok.stderr
    database = Database(env["DATABASE_URL"])
    try:
        with database.begin() as conn:
            conn.execute(update(audit_log).where(audit_log.c.id == 2).values(actor="nobody"))
    finally:
        database.close()
    broken = homevisit(env, tmp_path, "audit", "verify")
    assert broken.returncode == 1
    assert broken.stderr.count("\n") == 1 and "entry 2: entry changed" in broken.stderr
