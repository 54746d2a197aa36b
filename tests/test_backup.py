"""Backups of a live SQLite database and restores (issue 16 item 5), against real processes.

`homevisit serve` answers 20 teachers' check-ins while `homevisit db backup` copies the file; the
copy, restored, holds every answer committed before the backup began and passes
`PRAGMA integrity_check`. A backup killed half-way leaves the previous one intact; a truncated
file is refused by `db restore`, which changes nothing; a database in use is refused too.
PostgreSQL: the README's pg_dump / pg_restore commands, run as written.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import create_engine, func, select, text

from storage.backup import BackupError, backups_in, daily_backup
from storage.db import Database
from storage.schema import visits
from tests.conftest import PG_URL, require_pg
from tests.procs import ROOT, BotServer, bot_env, run_bot

API_TOKEN = "backup-test-token-0123456789"
TEACHERS = 20
ANSWERS = ["3", "1", "2", "1", "2", "1", "1", "1", "1", "1", "无", "提交"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _roster(folder: Path) -> list[Path]:
    staff = folder / "staff.csv"
    pupils = folder / "students.csv"
    staff.write_text(
        "工号,姓名,学校,角色\n" + "".join(f"T{n:03d},教师{n},一小,教师\n" for n in range(TEACHERS)),
        encoding="utf-8",
    )
    pupils.write_text(
        "学籍号,姓名,学校,班级,资助类别,班主任工号\n"
        + "".join(f"S{n:03d},学生{n}号,一小,一年级1班,低保,T{n:03d}\n" for n in range(TEACHERS)),
        encoding="utf-8",
    )
    return [staff, pupils]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return bot_env(DATABASE_URL=f"sqlite:///{tmp_path / 'live.db'}", API_TOKEN=API_TOKEN)


@pytest.fixture
async def server(env: dict[str, str], tmp_path: Path) -> AsyncIterator[BotServer]:
    imported = await run_bot(env, tmp_path, "roster", "import", *map(str, _roster(tmp_path)))
    assert imported.returncode == 0, imported.stderr
    bot = BotServer("serve", env, tmp_path)
    bot.start()
    try:
        async with aiohttp.ClientSession() as http:
            await bot.wait_ready(http)
        yield bot
    finally:
        bot.stop()


async def test_backup_under_load_restores_every_committed_answer(
    server: BotServer, env: dict[str, str], tmp_path: Path
) -> None:
    committed: set[str] = set()
    committed_before: set[str] = set()

    async def checkin(http: aiohttp.ClientSession, n: int) -> None:
        user = f"T{n:03d}"
        await asyncio.sleep(n * 0.15)  # staggered: the backup starts with most still going
        for i, line in enumerate(["家访", f"学生{n}号", *ANSWERS]):
            async with http.post(
                f"{server.url}/api/messages",
                json={"user": user, "text": line, "message_id": f"{user}-{i}"},
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                replies = (await resp.json())["replies"]
        assert any("已提交" in r for r in replies), replies
        committed.add(f"S{n:03d}")

    async def take_backup() -> subprocess.CompletedProcess[str]:
        while len(committed) < 5:  # some committed, the others in flight
            await asyncio.sleep(0.02)
        committed_before.update(committed)
        return await run_bot(env, tmp_path, "db", "backup", "--out", str(tmp_path / "b.db"))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        backup_run = asyncio.create_task(take_backup())
        await asyncio.gather(*(checkin(http, n) for n in range(TEACHERS)))
        made = await backup_run
    assert made.returncode == 0, made.stderr
    assert len(committed) == TEACHERS  # serve kept answering throughout
    assert 5 <= len(committed_before) < TEACHERS  # the backup ran with check-ins in flight

    refused = await run_bot(env, tmp_path, "db", "restore", str(tmp_path / "b.db"))
    assert refused.returncode == 1 and "in use" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1

    restored_env = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'restored.db'}"}
    restored = await run_bot(restored_env, tmp_path, "db", "restore", str(tmp_path / "b.db"))
    assert restored.returncode == 0, restored.stderr
    assert _integrity(tmp_path / "restored.db") == "ok"
    engine = create_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT s.student_no, v.answers FROM visits v "
                    "JOIN students s ON s.id = v.student_id WHERE v.status = 'submitted'"
                )
            ).all()
    finally:
        engine.dispose()
    found = {r.student_no for r in rows}
    assert committed_before <= found
    assert all('"method"' in r.answers or len(r.answers) > 2 for r in rows)
    # and the restored copy works: the CLI exports from it
    exported = await run_bot(restored_env, tmp_path, "export", "--out", str(tmp_path / "x.csv"))
    assert exported.returncode == 0 and f"exported {len(found)} visits" in exported.stdout


async def test_a_restored_backup_is_identical(env: dict[str, str], tmp_path: Path) -> None:
    assert (await run_bot(env, tmp_path, "demo")).returncode == 0
    assert (await run_bot(env, tmp_path, "db", "backup", "--out", "b.db")).returncode == 0
    other = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'copy.db'}"}
    assert (await run_bot(other, tmp_path, "db", "restore", "b.db")).returncode == 0
    dumps = []
    for name in ("live.db", "copy.db"):
        conn = sqlite3.connect(tmp_path / name)
        dumps.append(list(conn.iterdump()))
        conn.close()
    assert dumps[0] == dumps[1]


def test_a_truncated_backup_is_refused_and_nothing_changes(
    env: dict[str, str], tmp_path: Path
) -> None:
    subprocess.run([sys.executable, "-m", "bot", "demo"], env=env, cwd=tmp_path, check=True)
    live = tmp_path / "live.db"
    good = tmp_path / "good.db"
    daily = subprocess.run(
        [sys.executable, "-m", "bot", "db", "backup", "--out", str(good)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert daily.returncode == 0, daily.stderr
    bad = tmp_path / "bad.db"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE x (y)").connection.close()
    before = _sha(live)
    for candidate, words in (
        (bad, "nothing was changed"),
        (foreign, "not a homevisit database"),
        (tmp_path / "missing.db", "no such file"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "bot", "db", "restore", str(candidate)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert _sha(live) == before


_KILLED_BACKUP = """
import os, signal, sys
from pathlib import Path
import storage.backup as b
def die(path):  # the copy is written, not yet renamed: the machine loses the process here
    os.kill(os.getpid(), signal.SIGKILL)
b._fsync = die
b.daily_backup(Path(sys.argv[1]), Path(sys.argv[2]), 14, __import__("datetime").datetime.now())
"""


def test_a_backup_killed_half_way_leaves_the_previous_one_intact(
    env: dict[str, str], tmp_path: Path
) -> None:
    subprocess.run([sys.executable, "-m", "bot", "demo"], env=env, cwd=tmp_path, check=True)
    live, folder = tmp_path / "live.db", tmp_path / "backups"
    first = daily_backup(live, folder, 14, datetime(2026, 3, 1, 2, 30, tzinfo=UTC))
    before = _sha(first.path)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BACKUP, str(live), str(folder)],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
    )
    assert killed.returncode == -9
    assert backups_in(folder) == [first.path] and _sha(first.path) == before
    assert _integrity(first.path) == "ok"
    assert list(folder.glob(".*.tmp"))  # the half-made copy, under its temporary name
    daily_backup(live, folder, 14, datetime(2026, 3, 2, 2, 30, tzinfo=UTC))
    assert not list(folder.glob(".*.tmp")) and len(backups_in(folder)) == 2


def test_daily_backups_keep_the_newest(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'live.db'}")
    db.upgrade()
    db.close()
    folder = tmp_path / "backups"
    start = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
    for day in range(5):
        daily_backup(tmp_path / "live.db", folder, 3, start + timedelta(days=day))
    names = [p.name for p in backups_in(folder)]
    assert names == [f"homevisit-2026030{d}-023000.db" for d in (3, 4, 5)]
    with pytest.raises(BackupError, match="no database"):
        daily_backup(tmp_path / "nope.db", folder, 3, start)


async def test_serve_takes_a_backup_at_start_up(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "nightly"
    bot = BotServer("serve", {**env, "HOMEVISIT_BACKUP_DIR": str(folder)}, tmp_path)
    bot.start()
    try:
        async with aiohttp.ClientSession() as http:
            await bot.wait_ready(http)
        for _ in range(100):
            if backups_in(folder):
                break
            await asyncio.sleep(0.1)
        assert len(backups_in(folder)) == 1, bot.log_tail()
        assert _integrity(backups_in(folder)[0]) == "ok"
    finally:
        bot.stop()


def test_postgresql_backup_with_pg_dump_and_pg_restore(tmp_path: Path) -> None:
    """The README's commands: pg_dump -Fc, then pg_restore into an empty database (here: a
    schema of the test database), which then holds the same rows."""
    require_pg()
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} is not installed (CI=true: this is a failure)")
            pytest.skip(f"{tool} is not installed")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    dump = tmp_path / "homevisit.dump"
    try:
        db = Database(f"{PG_URL}?options=-csearch_path%3D{schema}")
        db.upgrade()
        with db.begin() as conn:
            from storage.demo import load_demo

            load_demo(conn, now=datetime.now(UTC))
        db.close()
        subprocess.run(
            ["pg_dump", "-Fc", "-n", schema, "-f", str(dump), PG_URL], check=True, timeout=60
        )
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        subprocess.run(
            ["pg_restore", "--exit-on-error", "-d", PG_URL, str(dump)], check=True, timeout=60
        )
        with admin.connect() as c:
            count = c.execute(text(f'SELECT count(*) FROM "{schema}".students')).scalar()
            version = c.execute(
                text(f'SELECT version_num FROM "{schema}".alembic_version')
            ).scalar()
        assert count == 12 and version is not None
        restored = Database(f"{PG_URL}?options=-csearch_path%3D{schema}")
        try:
            with restored.begin() as conn:
                assert conn.execute(select(func.count()).select_from(visits)).scalar() == 0
                from storage.audit import verify_chain

                assert verify_chain(conn).ok
        finally:
            restored.close()
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def test_backup_settings_are_checked(tmp_path: Path) -> None:
    from bot.core.errors import ConfigError
    from config.settings import load_settings

    (tmp_path / "file").write_text("x", encoding="utf-8")
    good = load_settings(
        {"HOMEVISIT_BACKUP_DIR": str(tmp_path / "b"), "HOMEVISIT_BACKUP_KEEP": "3"}, env_file=None
    )
    assert (good.backup_dir, good.backup_keep) == (tmp_path / "b", 3)
    assert load_settings({}, env_file=None).backup_dir is None
    for env, words in (
        ({"HOMEVISIT_BACKUP_DIR": str(tmp_path / "file")}, "is not a folder"),
        ({"HOMEVISIT_BACKUP_KEEP": "0"}, "HOMEVISIT_BACKUP_KEEP"),
        ({"HOMEVISIT_RETENTION_DAYS": "7"}, "HOMEVISIT_RETENTION_DAYS"),
        (
            {"HOMEVISIT_BACKUP_DIR": str(tmp_path), "DATABASE_URL": "postgresql://x@h/db"},
            "pg_dump",
        ),
    ):
        with pytest.raises(ConfigError, match=words):
            load_settings(env, env_file=None)
    assert load_settings({"HOMEVISIT_RETENTION_DAYS": "365"}, env_file=None).retention_days == 365


def test_db_backup_on_postgresql_points_to_pg_dump(tmp_path: Path) -> None:
    env = bot_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "db", "backup", "--out", "x.db"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "pg_dump" in result.stderr
    assert result.stderr.count("\n") == 1
