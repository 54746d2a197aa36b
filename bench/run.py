"""homevisit benchmark: the machine's floor next to real check-in traffic, in one run.

    .venv/bin/python bench/run.py                      # 10 s per target, SQLite and PostgreSQL
    .venv/bin/python bench/run.py --seconds 60 --backends sqlite   # the flat-memory check
    .venv/bin/python bench/run.py --profile --backends sqlite      # + a py-spy profile run

What runs, each server in its own process, each load from a separate client process
(`bench/loadgen.py`, an aiohttp client; 127.0.0.1 only; every run stops by itself):

1. floor/bare    `bench/floor_app.py --mode bare`: an aiohttp handler returning small JSON.
2. floor/sqlite  `bench/floor_app.py --mode sqlite`: plus one durable SQLite commit per request
                 (WAL, synchronous=FULL, one upsert) on a single-thread executor.
3. homevisit/<backend>  `homevisit serve` on a fresh SQLite file or a fresh PostgreSQL schema,
                 seeded with --teachers teachers x --students students each; every request is a
                 real check-in step over `POST /api/messages` (家访 → 1 → 7 answers → 提交 → ...),
                 each reply checked (200, not the apology, the expected step).

If `wrk` is installed the two floors are also measured with it (a C client needs much less CPU
than the Python one; it cannot play per-teacher sequences, so homevisit is not run under wrk).
The machine has 2 cores: client and server share them. Nothing is pinned.

Server RSS (VmRSS of /proc/PID/status) is read before the load, after the warm-up, and at the
end; with --seconds 60 that is the flat-memory check. Server CPU over the measured window is
shown too (100% = one core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
HOMEVISIT = str(Path(PY).parent / "homevisit")
TOKEN = "bench-" + "x" * 40  # API_TOKEN: 32+ characters
PG_BASE = os.environ.get("HOMEVISIT_BENCH_PG", "postgresql://root@127.0.0.1:5432/test")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- process helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def read_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def postgres_cpu_s() -> float:
    """CPU seconds used so far by all live `postgres` processes (the database server's share)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        if "(postgres)" in raw:
            fields = raw.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_busy_pct(seconds: float = 1.0) -> float:
    m0, t0 = read_machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    return 100 * (read_machine_busy_s() - m0) / (time.monotonic() - t0)


def wait_for_quiet(max_wait: float, threshold: float = 25.0) -> float:
    """Wait (up to `max_wait` s) until other processes use < `threshold`% CPU; return the last."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy_pct()
    told = False
    while busy >= threshold and time.monotonic() < deadline:
        if not told:
            print(
                f"  machine busy ({busy:.0f}% CPU used by other processes); waiting ...", flush=True
            )
            told = True
        busy = machine_busy_pct()
    if busy >= threshold:
        print(f"  WARNING: still {busy:.0f}% CPU busy with other processes; measuring anyway")
    return busy


class Sampler(threading.Thread):
    """Samples the server's RSS and CPU time every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, float, float]] = []  # (wall, rss kB, cpu s, machine)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss, cpu = read_rss_kb(self.pid), read_cpu_s(self.pid)
            if rss is not None and cpu is not None:
                self.samples.append((time.time(), rss, cpu, read_machine_busy_s()))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def at(self, t: float) -> tuple[float, int, float, float] | None:
        """The sample nearest to wall time `t`."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s[0] - t))


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # aiohttp shuts down cleanly on SIGINT
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int) -> Server:
    log = cwd / f"{name.replace('/', '_')}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, proc, port, log)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any homevisit setting of the caller's, plus `extra`."""
    drop = ("DATABASE_URL", "API_TOKEN", "WECOM_", "DINGTALK_", "HOMEVISIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------- databases
def pg_create_schema() -> tuple[str, str]:
    """A fresh schema in the local PostgreSQL; returns (schema, DATABASE_URL using it)."""
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    eng = create_engine(PG_BASE.replace("postgresql://", "postgresql+psycopg://", 1))
    with eng.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng.dispose()
    return schema, f"{PG_BASE}?options=-csearch_path%3D{schema}"


def pg_drop_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(PG_BASE.replace("postgresql://", "postgresql+psycopg://", 1))
    with eng.begin() as c:
        c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()


def pg_version() -> str:
    from sqlalchemy import create_engine, text

    eng = create_engine(PG_BASE.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.connect() as c:
            return str(c.execute(text("SHOW server_version")).scalar())
    finally:
        eng.dispose()


def seed(
    url: str, teachers: int, per_teacher: int, prefix: str, school: str = "压测实验学校"
) -> None:
    """Migrate, then insert one school, `teachers` teachers and their students directly."""
    from sqlalchemy import insert, select

    from storage.db import Database
    from storage.schema import assignments, schools, staff, student_categories, students

    db = Database(url)
    try:
        db.upgrade()
        with db.begin() as conn:
            school_id = conn.execute(
                insert(schools).values(name=school).returning(schools.c.id)
            ).scalar_one()
            conn.execute(
                insert(staff),
                [
                    {
                        "staff_no": f"{prefix}{t:05d}",
                        "name": f"压测教师{t}",
                        "school_id": school_id,
                        "role": "teacher",
                        "active": True,
                    }
                    for t in range(1, teachers + 1)
                ],
            )
            staff_ids = dict(conn.execute(select(staff.c.staff_no, staff.c.id)).all())
            rows = []
            for t in range(1, teachers + 1):
                for k in range(per_teacher):
                    n = (t - 1) * per_teacher + k + 1
                    rows.append(
                        {
                            "student_no": f"{prefix}BENCH{n:07d}",
                            "name": f"学生{n}",
                            "school_id": school_id,
                            "class_name": f"{k % 6 + 1}年级{t % 9 + 1}班",
                            "active": True,
                        }
                    )
            conn.execute(insert(students), rows)
            student_ids = dict(conn.execute(select(students.c.student_no, students.c.id)).all())
            cats = ("建档立卡", "低保", "留守", "特困", "残疾")
            assign, catrows = [], []
            for t in range(1, teachers + 1):
                for k in range(per_teacher):
                    n = (t - 1) * per_teacher + k + 1
                    sid = student_ids[f"{prefix}BENCH{n:07d}"]
                    assign.append(
                        {
                            "student_id": sid,
                            "role": "head_teacher",
                            "staff_id": staff_ids[f"{prefix}{t:05d}"],
                        }
                    )
                    catrows.append({"student_id": sid, "category": cats[n % len(cats)]})
            conn.execute(insert(assignments), assign)
            conn.execute(insert(student_categories), catrows)
    finally:
        db.close()


# ---------------------------------------------------------------------------- measuring
@dataclass
class Result:
    name: str
    client: str  # "aiohttp" or "wrk"
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    checkins: int = 0
    rss_start_kb: int | None = None
    rss_warm_kb: int | None = None
    rss_end_kb: int | None = None
    rss_max_kb: int | None = None
    rss_series: list[tuple[float, int]] = field(default_factory=list)
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)  # latency per step kind
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    machine_cpu_pct: float | None = None  # all processes, 200% = both cores
    busy_before_pct: float | None = None  # machine CPU in use just before the run
    db_cpu_pct: float | None = None  # PostgreSQL server processes
    note: str = ""


def run_loadgen(server: Server, args: argparse.Namespace, *, check: bool) -> Result:
    busy = wait_for_quiet(args.wait_idle)
    result = _run_loadgen(server, args, check=check)
    result.busy_before_pct = busy
    return result


def _run_loadgen(server: Server, args: argparse.Namespace, *, check: bool) -> Result:
    argv = [
        PY,
        str(BENCH / "loadgen.py"),
        "--url",
        server.url,
        "--token",
        TOKEN,
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--connections",
        str(args.connections),
        "--teachers",
        str(args.teachers),
        "--prefix",
        getattr(args, "prefix", "BT"),
    ]
    if check:
        argv.append("--check")
    if args.message_ids:
        argv.append("--message-ids")
    sampler = Sampler(server.proc.pid)
    rss_start = read_rss_kb(server.proc.pid)
    sampler.start()
    t_start = time.time()
    pg0 = postgres_cpu_s()
    proc = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=args.seconds + args.warmup + 120
    )
    pg_pct = 100 * (postgres_cpu_s() - pg0) / (time.time() - t_start)
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the measured window, in wall time, approximately: after the client's warm-up
    t_measure = t_start + args.warmup + 0.3  # ~0.3 s for the client process to start
    t_end = t_measure + args.seconds
    warm, end = sampler.at(t_measure), sampler.at(t_end)
    cpu_pct = machine_pct = None
    if warm and end and end[0] > warm[0]:
        cpu_pct = 100 * (end[2] - warm[2]) / (end[0] - warm[0])
        machine_pct = 100 * (end[3] - warm[3]) / (end[0] - warm[0])
    series = [(s[0] - t_start, s[1]) for s in sampler.samples]
    return Result(
        name=server.name,
        client="aiohttp",
        rps=out["rps"],
        p50_ms=out["p50_ms"],
        p99_ms=out["p99_ms"],
        ok=out["requests_ok"],
        errors=out["errors"],
        error_examples=out["error_examples"],
        checkins=out["checkins_completed"],
        rss_start_kb=rss_start,
        rss_warm_kb=warm[1] if warm else None,
        rss_end_kb=end[1] if end else None,
        rss_max_kb=max((s[1] for s in sampler.samples), default=None),
        rss_series=series,
        by_kind=out.get("by_kind", {}),
        server_cpu_pct=cpu_pct,
        client_cpu_pct=100 * out["client_cpu_s"] / (args.seconds + args.warmup),
        machine_cpu_pct=machine_pct,
        db_cpu_pct=pg_pct,
    )


WRK_LUA = """
wrk.method = "POST"
wrk.body = '{"user": "BT00001", "text": "1"}'
wrk.headers["Content-Type"] = "application/json"
"""


def _wrk_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def run_wrk(server: Server, args: argparse.Namespace, workdir: Path) -> Result:
    busy = wait_for_quiet(args.wait_idle)
    result = _run_wrk(server, args, workdir)
    result.busy_before_pct = busy
    return result


def _run_wrk(server: Server, args: argparse.Namespace, workdir: Path) -> Result:
    script = workdir / "post.lua"
    script.write_text(WRK_LUA)
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{int(args.seconds)}s", "--latency"]
    argv += ["-s", str(script), server.url + "/api/messages"]
    rss_start = read_rss_kb(server.proc.pid)
    cpu0, m0, t0 = read_cpu_s(server.proc.pid), read_machine_busy_s(), time.time()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60)
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, m1, t1 = read_cpu_s(server.proc.pid), read_machine_busy_s(), time.time()
    wrk_cpu = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    text = proc.stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    sock = re.search(r"Socket errors:(.*)", text)
    errors: dict[str, int] = {}
    if non2xx:
        errors["non-2xx"] = int(non2xx.group(1))
    if sock:
        n = sum(int(x) for x in re.findall(r"\d+", sock.group(1)))
        if n:
            errors["socket errors"] = n
    if not rps:
        errors["wrk failed"] = 1
    rss_end = read_rss_kb(server.proc.pid)
    return Result(
        name=server.name,
        client="wrk",
        rps=float(rps.group(1)) if rps else float("nan"),
        p50_ms=_wrk_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_wrk_ms(p99.group(1)) if p99 else float("nan"),
        errors=errors,
        error_examples={"wrk output": text[-500:]} if errors else {},
        rss_start_kb=rss_start,
        rss_end_kb=rss_end,
        server_cpu_pct=(100 * (cpu1 - cpu0) / (t1 - t0)) if cpu0 is not None and cpu1 else None,
        machine_cpu_pct=100 * (m1 - m0) / (t1 - t0),
        client_cpu_pct=100 * wrk_cpu / (t1 - t0),
        note="wrk -t1: one fixed body, no per-teacher sequence",
    )


def run_wrk_checkin(server: Server, args: argparse.Namespace) -> Result:
    """The check-in load played by wrk (`checkin.lua`): same steps, far less client CPU."""
    threads = args.connections  # one connection per thread: each thread keeps its own state

    def wrk(seconds: float, run_id: str) -> subprocess.CompletedProcess[str]:
        argv = ["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s"]
        argv += ["--latency", "-s", str(BENCH / "checkin.lua"), server.url + "/api/messages"]
        argv += [
            "--",
            str(args.teachers),
            getattr(args, "prefix", "BT"),
            TOKEN,
            run_id,
            str(threads),
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)

    busy = wait_for_quiet(args.wait_idle)
    run_id = uuid.uuid4().hex[:8]
    if args.warmup > 0:
        wrk(args.warmup, run_id + "w")
    rss_start = read_rss_kb(server.proc.pid)
    cpu0, m0, t0 = read_cpu_s(server.proc.pid), read_machine_busy_s(), time.time()
    pg0 = postgres_cpu_s() if server.name.endswith("postgresql") else None
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = wrk(args.seconds, run_id)
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, m1, t1 = read_cpu_s(server.proc.pid), read_machine_busy_s(), time.time()
    pg_pct = 100 * (postgres_cpu_s() - pg0) / (t1 - t0) if pg0 is not None else None
    errors: dict[str, int] = {}
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Result(
            server.name, "wrk", float("nan"), float("nan"), float("nan"),
            errors={"wrk failed": 1}, error_examples={"wrk failed": proc.stderr[-500:]},
        )  # fmt: skip
    for key, label in (("http_errors", "HTTP errors"), ("unexpected", "unexpected reply")):
        if out[key]:
            errors[label] = out[key]
    if out["socket_errors"]:
        errors["socket errors"] = out["socket_errors"]
    wrk_cpu = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    return Result(
        name=server.name,
        client="wrk",
        rps=out["requests"] / (out["duration_us"] / 1e6),
        p50_ms=out["p50_us"] / 1000,
        p99_ms=out["p99_us"] / 1000,
        ok=out["requests"] - sum(errors.values()),
        errors=errors,
        error_examples={kind: out["example"] for kind in errors},
        checkins=out["checkins"],
        rss_start_kb=rss_start,
        rss_end_kb=read_rss_kb(server.proc.pid),
        server_cpu_pct=(100 * (cpu1 - cpu0) / (t1 - t0)) if cpu0 is not None and cpu1 else None,
        machine_cpu_pct=100 * (m1 - m0) / (t1 - t0),
        client_cpu_pct=100 * wrk_cpu / (t1 - t0),
        db_cpu_pct=pg_pct,
        busy_before_pct=busy,
        note="wrk + checkin.lua",
    )


# ---------------------------------------------------------------------------- profiling
def profile(server: Server, args: argparse.Namespace, out_dir: Path) -> Path | None:
    """Run the check-in load again while py-spy samples the server (raw collapsed stacks).

    py-spy's idle detection misses some waits (epoll, the executor's queue), so the summary drops
    samples whose innermost frame is such a wait; waits on the database (fsync in SQLite's
    commit, psycopg waiting for PostgreSQL) are kept, they are part of a turn. (`--gil` was tried:
    on this Python it attributes samples unreliably and hides whole steps.)
    """
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        print("  (py-spy not installed: .venv/bin/pip install py-spy)")
        return None
    raw = out_dir / f"profile-{server.name.replace('/', '_')}.txt"
    duration = int(args.seconds)
    spy_argv = [pyspy, "record", "--pid", str(server.proc.pid), "-d", str(duration + 1)]
    spy_argv += ["--threads", "--format", "raw", "-o", str(raw), "--rate", "200"]
    spy = subprocess.Popen(
        spy_argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    saved_warmup, args.warmup = args.warmup, 0.5
    try:
        res = _run_loadgen(server, args, check=True)
    finally:
        args.warmup = saved_warmup
    print(
        f"  profile run: {res.rps:.0f} msg/s while sampled, {sum(res.errors.values())} errors "
        f"{res.errors or ''}"
    )
    _, err = spy.communicate(timeout=duration + 60)
    if spy.returncode != 0 or not raw.exists():
        print(f"  (py-spy failed: {err.strip()[-500:]})")
        return None
    return raw


IDLE_LEAVES = (
    "EpollSelector.select (",  # the event loop waiting for sockets
    "_worker (concurrent/futures/thread.py",  # an executor thread waiting for work
    "Condition.wait (",
    "Event.wait (",
)
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")
PROJECT_DIRS = ("bot/", "handlers/", "storage/", "config/")


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Inclusive share per project function and self share per function (all code)."""
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        if frames[-1].strip().startswith(IDLE_LEAVES):
            continue
        total += count
        if frames and frames[0].startswith(("thread", "process")):
            by_thread[re.sub(r"_\d+$", "_*", frames[0].split(":")[-1].strip())] += count
        seen = set()
        labels = []
        for fr in frames:
            m = FRAME.match(fr.strip())
            if not m:
                continue
            path = m.group("file")
            rel = _short(path)
            labels.append(f"{m.group('func')} ({rel})")
            key = f"{m.group('func')} ({rel})"
            if rel.startswith(PROJECT_DIRS) and key not in seen:
                seen.add(key)
                inclusive[key] += count
        if labels:
            self_[labels[-1]] += count
    if not total:
        return "(empty profile)"
    lines = [f"{total} samples, all threads, waits for work left out"]
    lines += ["threads: " + ", ".join(f"{k} {100 * n / total:.0f}%" for k, n in by_thread.items())]
    lines += ["", "inclusive, project code:"]
    for key, n in inclusive.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {key}")
    lines += ["", "self (leaf frame), all code:"]
    for key, n in self_.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {key}")
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("/site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# ---------------------------------------------------------------------------- report
def machine_info(backends: list[str]) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    import aiohttp
    import sqlalchemy

    info = [
        f"date        {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"cpus        {os.cpu_count()} x {cpu}",
        f"memory      {mem}",
        f"python      {platform.python_version()}  aiohttp {aiohttp.__version__}  "
        f"SQLAlchemy {sqlalchemy.__version__}",
        f"sqlite      {sqlite3.sqlite_version}",
    ]
    if "postgresql" in backends:
        try:
            info.append(f"postgresql  {pg_version()}")
        except Exception as exc:  # reported, the PG backend will fail on its own
            info.append(f"postgresql  unavailable ({type(exc).__name__})")
    info.append(f"wrk         {'yes' if shutil.which('wrk') else 'not installed'}")
    info.append(
        f"loadavg     {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (before the run)"
    )
    return info


def fmt_kb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def table(results: list[Result]) -> str:
    head = (
        f"{'target':<22}{'client':<9}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'srv CPU':>9}{'cli CPU':>9}{'PG CPU':>8}{'all CPU':>9}"
        f"{'RSS start':>11}{'warm':>8}{'end':>8}{'max':>8}  MiB"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.name:<22}{r.client:<9}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
            f"{sum(r.errors.values()):>8}{fmt_pct(r.server_cpu_pct):>9}"
            f"{fmt_pct(r.client_cpu_pct):>9}"
            f"{fmt_pct(r.db_cpu_pct if r.name.endswith('postgresql') else None):>8}"
            f"{fmt_pct(r.machine_cpu_pct):>9}"
            f"{fmt_kb(r.rss_start_kb):>11}"
            f"{fmt_kb(r.rss_warm_kb):>8}{fmt_kb(r.rss_end_kb):>8}{fmt_kb(r.rss_max_kb):>8}"
        )
    return "\n".join(rows)


def ratios(results: list[Result]) -> str:
    """Each homevisit row against the floors measured with the same client."""
    floors = {(r.name, r.client): r for r in results if r.name.startswith("floor/")}
    lines = []
    for r in results:
        if not r.name.startswith("homevisit/"):
            continue
        for (fname, client), f in floors.items():
            if client == r.client and f.rps and f.rps == f.rps:  # not NaN
                lines.append(
                    f"{r.name:<22} / {fname:<13} ({client:<7}): throughput {r.rps / f.rps:6.1%}"
                    f"   p99 {r.p99_ms / f.p99_ms:5.1f}x"
                )
    return "\n".join(lines)


def targets(results: list[Result], seconds: float) -> str:
    want = {"homevisit/sqlite": 1000, "homevisit/postgresql": 800}
    lines = []
    for r in results:
        if r.name in want:
            ok_rps = r.rps >= want[r.name]
            ok_p99 = r.p99_ms < 50
            lines.append(
                f"{r.name + ' [' + r.client + ']':<32} {r.rps:5.0f} msg/s (>= {want[r.name]}): "
                f"{'MET' if ok_rps else 'NOT MET'};  p99 {r.p99_ms:.1f} ms (< 50): "
                f"{'MET' if ok_p99 else 'NOT MET'};  errors {sum(r.errors.values())}"
            )
            if r.rss_warm_kb and r.rss_end_kb:
                growth = (r.rss_end_kb - r.rss_warm_kb) / 1024
                lines.append(
                    f"{'':<32} RSS after warm-up {fmt_kb(r.rss_warm_kb)} MiB -> end "
                    f"{fmt_kb(r.rss_end_kb)} MiB ({growth:+.1f} MiB over {seconds:.0f} s)"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(
        description="homevisit benchmark vs. the machine's floor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=2, help="uncounted seconds before each")
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--backends", default="sqlite,postgresql", help="sqlite,postgresql")
    p.add_argument("--teachers", type=int, default=200)
    p.add_argument("--students", type=int, default=5, help="students per teacher")
    p.add_argument("--no-floor", dest="floor", action="store_false", help="skip the floor")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="do not use wrk")
    p.add_argument(
        "--no-message-ids",
        dest="message_ids",
        action="store_false",
        help="do not send message_id (by default each message has one, as real channels do)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after each homevisit run, run the load again under py-spy and summarize",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=120,
        help="before each target wait up to this many seconds for other processes to go quiet",
    )
    p.add_argument(
        "--province",
        metavar="SCHEMA",
        help="also run on PostgreSQL inside this province (bench/province.py, e.g. "
        "province_1000000): the same teachers, in one more school of it, next to the small one",
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and PG schemas")
    args = p.parse_args()

    def _terminate(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # run the clean-up below: stop servers, drop schemas

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgresql"):
            p.error(f"unknown backend {b!r}")
    sys.path.insert(0, str(ROOT))

    print("homevisit benchmark")
    for line in machine_info(backends):
        print("  " + line)
    print(
        f"  load        {args.connections} connections, {args.teachers} teachers x "
        f"{args.students} students, {args.seconds:g} s measured after {args.warmup:g} s warm-up, "
        f"message_id {'on' if args.message_ids else 'off'}"
    )
    print(
        "  NOTE: 2-core machine: the load generator and the server share the cores; nothing is\n"
        "        pinned. Each target is loaded by loadgen.py (aiohttp, a Python process) and, if\n"
        "        installed, by wrk (checkin.lua for homevisit: the same check-in steps for far\n"
        "        less client CPU). CPU columns: 100% = one core; 'all CPU' is the whole machine\n"
        "        (200% max) - far above srv+cli(+PG) means something else was running.\n"
    )

    work = Path(tempfile.mkdtemp(prefix="homevisit-bench-"))
    results: list[Result] = []
    profiles: dict[str, str] = {}
    schemas: list[str] = []
    have_wrk = args.wrk and shutil.which("wrk") is not None
    try:
        if args.floor:
            for mode in ("bare", "sqlite"):
                name = f"floor/{mode}"
                port = free_port()
                argv = [PY, str(BENCH / "floor_app.py"), "--mode", mode, "--port", str(port)]
                if mode == "sqlite":
                    argv += ["--db", str(work / "floor.db")]
                print(f"running {name} ...", flush=True)
                server = start_server(name, argv, clean_env(), work, port)
                try:
                    results.append(run_loadgen(server, args, check=False))
                    if have_wrk:
                        results.append(run_wrk(server, args, work))
                finally:
                    server.stop()

        runs = [*backends, *(["province"] if args.province else [])]
        for backend in runs:
            name = f"homevisit/{backend}"
            print(f"running {name} ... (seeding)", flush=True)
            if backend == "sqlite":
                url = f"sqlite:///{work / 'homevisit.db'}"
                seed(url, args.teachers, args.students, "BT")
            elif backend == "province":
                # The bench's teachers join the province as one more school (left there: a
                # later bench/province.py run with another seed or size writes it afresh).
                url = f"{PG_BASE}?options=-csearch_path%3D{args.province}"
                tag = uuid.uuid4().hex[:6]
                args.prefix = f"P{tag}"  # (the load generators' teacher numbers)
                seed(url, args.teachers, args.students, args.prefix, f"压测实验学校{tag}")
            else:
                schema, url = pg_create_schema()
                schemas.append(schema)
                seed(url, args.teachers, args.students, "BT")
            port = free_port()
            env = clean_env(DATABASE_URL=url, API_TOKEN=TOKEN)
            argv = [HOMEVISIT, "serve", "--host", "127.0.0.1", "--port", str(port)]
            server = start_server(name, argv, env, work, port)
            try:
                results.append(run_loadgen(server, args, check=True))
                if have_wrk:
                    results.append(run_wrk_checkin(server, args))
                if args.profile:
                    print(f"profiling {name} with py-spy ...", flush=True)
                    wait_for_quiet(args.wait_idle)
                    raw = profile(server, args, work if args.keep else Path(tempfile.gettempdir()))
                    if raw:
                        profiles[name] = f"raw stacks: {raw}\n" + summarize_profile(raw)
            finally:
                server.stop()
    finally:
        for schema in schemas:
            if not args.keep:
                try:
                    pg_drop_schema(schema)
                except Exception as exc:
                    print(f"(could not drop schema {schema}: {exc})")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    print()
    print(table(results))
    print()
    print("homevisit / floor (same machine, same run):")
    print(ratios(results))
    print()
    print("targets (issue 6):")
    print(targets(results, args.seconds))
    kinds = [r for r in results if r.name.startswith("homevisit/") and r.by_kind]
    if kinds:
        print()
        print("latency by step (p50 / p99 ms; list = 家访, pick = choosing the student):")
        for r in kinds:
            cells = [
                f"{k} {v['p50_ms']:.1f}/{v['p99_ms']:.1f} ({100 * v['n'] / max(r.ok, 1):.0f}%)"
                for k, v in r.by_kind.items()
            ]
            print(f"  {r.name:<22}" + "   ".join(cells))
    noisy = [
        r
        for r in results
        if r.machine_cpu_pct is not None
        and r.machine_cpu_pct
        - (r.server_cpu_pct or 0)
        - (r.client_cpu_pct or 0)
        - (r.db_cpu_pct or 0 if r.name.endswith("postgresql") else 0)
        > 35
    ]
    if noisy:
        print()
        print(
            "WARNING: other processes used CPU during: "
            + ", ".join(f"{r.name} [{r.client}]" for r in noisy)
            + " (see 'all CPU'); rerun on a quiet machine."
        )
    errors = [r for r in results if r.errors]
    if errors:
        print()
        print("errors:")
        for r in errors:
            for kind, n in r.errors.items():
                example = r.error_examples.get(kind, "")
                print(f"  {r.name} [{r.client}] {kind}: {n}  e.g. {example[:200]!r}")
    if args.seconds >= 30:
        print()
        print("server RSS over time (s since load start: MiB):")
        for r in results:
            if r.rss_series:
                step = max(1, len(r.rss_series) // 12)
                pts = [*r.rss_series[::step], r.rss_series[-1]]
                print(f"  {r.name:<22}" + "  ".join(f"{t:.0f}:{kb / 1024:.1f}" for t, kb in pts))
    for name, text in profiles.items():
        print()
        print(f"profile of {name} under the same load (py-spy, 200 Hz):")
        print(text)
    if args.json:
        args.json.write_text(
            json.dumps([r.__dict__ for r in results], ensure_ascii=False, indent=1)
        )
    return 1 if any(r.errors for r in results if r.name.startswith("homevisit/")) else 0


if __name__ == "__main__":
    sys.exit(main())
