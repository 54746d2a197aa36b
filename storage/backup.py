"""Backups of a SQLite database, and restoring one.

A backup is SQLite's online backup API (`sqlite3.Connection.backup`) in one step: it reads a
consistent snapshot while `serve` keeps writing (WAL mode: readers never block the writer). The
copy is written under a temporary name beside the target, switched to a self-contained rollback
journal, checked with `PRAGMA integrity_check`, flushed to disk and only then renamed into place,
so a process killed half-way leaves the previous backup as it was (and a stray temporary file
that the next backup removes).

Restoring refuses a database in use. How that is known: every long-running process on the
database (`serve`, `chat`) holds a shared `flock` on `<database>.lock` for its lifetime, and the
restore takes it exclusively without waiting. The kernel drops the lock when a process ends, even
on SIGKILL, so a crash never leaves a stale lock behind (a PID file would). A SQLite lock cannot
tell: an idle `serve` holds none. The backup file is checked before anything is touched: it must
pass `PRAGMA integrity_check` and be a homevisit database at a migration this version knows.
A truncated or foreign file is refused and the database is left as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.core.errors import HomevisitError

BACKUP_PREFIX = "homevisit-"
BACKUP_SUFFIX = ".db"


class BackupError(HomevisitError):
    """A backup or restore that cannot be done; nothing was changed."""


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///...` URL; BackupError for anything else."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        raise BackupError(
            "db backup/restore is for SQLite; for PostgreSQL use pg_dump / pg_restore "
            "(see the README, section Backups)"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("DATABASE_URL names no database file")
    return Path(parsed.database)


def _lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def in_use(database: Path) -> Iterator[None]:
    """Hold the shared lock that tells `restore` this database is in use (see the module doc).
    BackupError when a restore is running on it right now."""
    database.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(database), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"{database} is being restored; try again when it is done") from None
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


@contextlib.contextmanager
def _exclusive(database: Path) -> Iterator[None]:
    fd = os.open(_lock_path(database), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"{database} is in use (homevisit serve or chat is running on it): "
                "stop it first; nothing was changed"
            ) from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- backup
@dataclass(frozen=True, slots=True)
class BackupReport:
    path: Path
    size: int


def backup(database: Path, out: Path) -> BackupReport:
    """A consistent copy of the live database at `out` (replaced atomically when it exists)."""
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    folder = out.parent
    if not folder.is_dir():
        raise BackupError(f"文件夹 {folder} 不存在 / folder {folder} does not exist")
    if out.is_dir():
        raise BackupError(f"{out} 是文件夹，请给出文件名 / {out} is a folder: give a file name")
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(name)
    try:
        source = sqlite3.connect(database, timeout=30)
        try:
            target = sqlite3.connect(temp)
            try:
                source.backup(target)  # one step: one consistent snapshot
                target.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
                problem = _integrity(target)
                if problem:
                    raise BackupError(f"the copy failed its integrity check ({problem})")
            finally:
                target.close()
        finally:
            source.close()
        _fsync(temp)
        os.replace(temp, out)
        _fsync_dir(folder)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, sqlite3.Error | OSError):
            raise BackupError(f"backup to {out} failed: {_first_line(exc)}") from exc
        raise
    return BackupReport(out, out.stat().st_size)


def daily_backup(database: Path, folder: Path, keep: int, now: datetime) -> BackupReport:
    """A backup named after `now` in `folder`; then only the newest `keep` are kept (and the
    temporary files of backups that were killed half-way are removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stray in folder.glob(f".{BACKUP_PREFIX}*.tmp"):
        stray.unlink(missing_ok=True)
    out = folder / f"{BACKUP_PREFIX}{now.strftime('%Y%m%d-%H%M%S')}{BACKUP_SUFFIX}"
    report = backup(database, out)
    for old in backups_in(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return report


def backups_in(folder: Path) -> list[Path]:
    """The finished backups in `folder`, oldest first (their names sort by time)."""
    return sorted(folder.glob(f"{BACKUP_PREFIX}*{BACKUP_SUFFIX}"))


# ---------------------------------------------------------------------------- restore
def check_backup(path: Path, known_revisions: set[str]) -> str:
    """The backup's migration revision; BackupError when it is damaged or not ours."""
    if not path.is_file():
        raise BackupError(f"no such file {path}")
    try:
        conn = sqlite3.connect(_read_only(path), uri=True)
        try:
            problem = _integrity(conn)
            if problem:
                raise BackupError(f"{path} is damaged ({problem}); nothing was changed")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"alembic_version", "students", "visits", "audit_log"} <= tables:
                raise BackupError(f"{path} is not a homevisit database; nothing was changed")
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(
            f"{path} is not a readable SQLite database ({_first_line(exc)}); nothing was changed"
        ) from exc
    if revision is None or revision[0] not in known_revisions:
        found = revision[0] if revision else "none"
        raise BackupError(
            f"{path} is at migration {found}, unknown to this version; nothing was changed"
        )
    return str(revision[0])


def restore(path: Path, database: Path, known_revisions: set[str]) -> str:
    """Replace `database` with the backup at `path`; its migration revision."""
    revision = check_backup(path, known_revisions)
    database.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(database):
        fd, name = tempfile.mkstemp(dir=database.parent, prefix=f".{database.name}.", suffix=".tmp")
        os.close(fd)
        temp = Path(name)
        try:
            source = sqlite3.connect(_read_only(path), uri=True)
            target = sqlite3.connect(temp)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
                source.close()
            _fsync(temp)
            # The old database's -wal would be replayed onto the new file: fold it in first,
            # and drop what is left (nobody holds the database: we hold the lock).
            _retire_wal(database)
            os.replace(temp, database)
            _fsync_dir(database.parent)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, sqlite3.Error | OSError):
                raise BackupError(f"restore failed: {_first_line(exc)}") from exc
            raise
    return revision


def _retire_wal(database: Path) -> None:
    if database.is_file():
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(database)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
    for suffix in ("-wal", "-shm", "-journal"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)


def _read_only(path: Path) -> str:
    """A URI opening `path` read-only, as a file nobody writes (no -wal or -shm is made)."""
    return f"{path.resolve().as_uri()}?mode=ro&immutable=1"


def _integrity(conn: sqlite3.Connection) -> str:
    """'' when `PRAGMA integrity_check` says ok, else its first complaint."""
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    first = str(rows[0][0]) if rows else "no answer"
    return "" if first == "ok" else first[:200]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(folder)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
