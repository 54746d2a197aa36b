"""Every CLI failure is one line naming the problem, never a traceback (real processes)."""

from __future__ import annotations

import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import bot_env


def homevisit(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("homevisit: ")
    return lines[0]


@pytest.fixture
def refusing_pooler() -> Iterator[int]:
    """A server that answers every PostgreSQL start-up as PgBouncer 1.18 answers `options`."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def answer() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                length = struct.unpack("!I", conn.recv(4))[0]
                code = struct.unpack("!I", conn.recv(4))[0]
                if code == 80877103:  # SSLRequest: no SSL here, then the real start-up
                    conn.sendall(b"N")
                    length = struct.unpack("!I", conn.recv(4))[0]
                    conn.recv(4)
                conn.recv(length - 8)
                fields = b"SFATAL\0C08P01\0Munsupported startup parameter: options\0\0"
                conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("command", [["db", "upgrade"], ["serve", "--port", "0"], ["demo"]])
def test_an_unreachable_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    env = bot_env(DATABASE_URL="postgresql://root@127.0.0.1:1/test")  # nothing listens on 1
    line = one_line_error(homevisit(env, tmp_path, *command))
    assert "the database does not answer" in line and "refused" in line.lower()


def test_a_pooler_refusing_a_startup_parameter_is_one_line_naming_it(
    tmp_path: Path, refusing_pooler: int
) -> None:
    env = bot_env(DATABASE_URL=f"postgresql://root@127.0.0.1:{refusing_pooler}/test")
    line = one_line_error(homevisit(env, tmp_path, "db", "upgrade"))
    assert "unsupported startup parameter: options" in line


def test_a_form_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    form = tmp_path / "form.yaml"
    form.write_bytes("id: 家访\n".encode("gb18030"))
    env = bot_env(DATABASE_URL=f"sqlite:///{tmp_path / 'hv.db'}", HOMEVISIT_FORM=str(form))
    line = one_line_error(homevisit(env, tmp_path, "demo"))
    assert str(form) in line and "UTF-8" in line


def test_a_setting_out_of_range_is_one_line_naming_it(tmp_path: Path) -> None:
    env = bot_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'hv.db'}",
        HOMEVISIT_SESSION_TTL_HOURS="99999999999",
    )
    line = one_line_error(homevisit(env, tmp_path, "demo"))
    assert "HOMEVISIT_SESSION_TTL_HOURS" in line


def test_a_sqlite_write_lock_held_by_another_process_is_one_line(tmp_path: Path) -> None:
    db_file = tmp_path / "hv.db"
    env = bot_env(DATABASE_URL=f"sqlite:///{db_file}")
    assert homevisit(env, tmp_path, "demo").returncode == 0
    roster = tmp_path / "students.csv"
    roster.write_text(
        "学籍号,姓名,学校,班级,资助类别,班主任工号\nDEMO0001,王小雨,示例区实验小学,三年级1班,低保,T001\n",
        encoding="utf-8",
    )
    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    try:
        started = time.monotonic()
        line = one_line_error(homevisit(env, tmp_path, "roster", "import", str(roster)))
        assert "the database does not answer" in line and "locked" in line
        assert time.monotonic() - started < 60
    finally:
        holder.execute("ROLLBACK")
        holder.close()
