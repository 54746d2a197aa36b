"""A private PgBouncer for tests: transaction pooling in front of the test PostgreSQL.

Debian's `pgbouncer` (1.18, installed by tests/ensure_tools.py) on a free loopback port, with
auth `any` (every client logs in to PostgreSQL as the test URL's user) and fewer server
connections than homevisit opens, so transactions of different clients really share them.
PgBouncer refuses to run as root: started by root, it drops to `nobody` (its `user` setting).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from tests.procs import free_port

POOL_SIZE = 5  # server connections per database and user (homevisit alone opens up to 20)


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


class PgBouncer:
    """One pgbouncer process; `restart()` kills it (immediate shutdown) and starts it again on
    the same port, as an operator's restart or a crash would."""

    def __init__(self, pg_url: str, workdir: Path) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer")
        self.binary = binary
        self.pg = urlsplit(pg_url)
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "pgbouncer.ini"
        self.log_path = workdir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._write_config()

    def url(self, query: str = "") -> str:
        """The test PostgreSQL URL, through this pooler."""
        netloc = f"{self.pg.username}@127.0.0.1:{self.port}"
        return urlunsplit((self.pg.scheme, netloc, self.pg.path, query, ""))

    def _write_config(self) -> None:
        target = f"host={self.pg.hostname or '127.0.0.1'} port={self.pg.port or 5432}"
        lines = [
            "[databases]",
            f"* = {target} user={self.pg.username}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = any",
            "pool_mode = transaction",
            "max_client_conn = 1000",
            f"default_pool_size = {POOL_SIZE}",
            "server_connect_timeout = 5",
        ]
        if os.geteuid() == 0:
            lines.append("user = nobody")
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o644)

    def start(self, timeout: float = 10.0) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # immediate shutdown: clients are cut off
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
