"""Three `homevisit serve` instances behind PgBouncer run a province's morning reminder together;
one of them is killed half-way. Prints the time, each instance's share and memory, and checks
that every teacher has exactly one reminder.

    .venv/bin/python bench/province_serve.py [--students 1000000] [--teachers 50000] \
        [--instances 3] [--kill-at 0.5] [--schema province_1000000]

The province comes from bench/province.py (generated once, reused, reset). PgBouncer (Debian's
package; `python tests/ensure_tools.py`) runs in transaction mode in a temporary folder. Each
instance gets REMINDER_CRON set to the next whole minute, so their schedulers fire the job at the
same moment, as a deployment's would; quiet hours cover the run, so the reminders stay in the
outbox (this measures the job, not a chat platform). When `--kill-at` of the chunks are done, one
instance is SIGKILLed; the others take its chunk over when its lease expires.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import province  # noqa: E402

from tests.pgbouncer import PgBouncer  # noqa: E402
from tests.procs import BotServer, bot_env  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")


def digest_cron(fire: datetime) -> str:
    """A digest time later today, well after the reminder (a past one would run at start-up)."""
    later = fire + timedelta(hours=6)
    if later.date() != fire.date():
        later = fire.replace(hour=23, minute=59)
    return f"{later.minute} {later.hour} * * *"


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main_async(args: argparse.Namespace) -> int:
    size = province.Size(args.students, args.teachers)
    schema = args.schema or f"province_{args.students}"
    started = time.perf_counter()
    made = province.ensure(args.pg, schema, size)
    print(
        f"{schema}: {size.students:,} students {'generated' if made else 'reused'} "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="province-serve-"))
    bouncer = PgBouncer(args.pg, workdir)
    bouncer.start()
    now = datetime.now(TZ)
    fire = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (fire - now).total_seconds() < 25:  # time for three instances to start
        fire += timedelta(minutes=1)
    quiet = f"{(now - timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=2)):%H:%M}"
    env = bot_env(
        DATABASE_URL=bouncer.url(f"options=-csearch_path%3D{schema}"),
        HOMEVISIT_PG_POOLER="pgbouncer",
        REMINDER_CRON=f"{fire.minute} {fire.hour} * * *",
        DIGEST_CRON=digest_cron(fire),
        QUIET_HOURS=quiet,
        WECOM_CORP_ID="wwprovince",
        WECOM_AGENT_ID="1000002",
        WECOM_SECRET="s" * 43,
        WECOM_TOKEN="provinceToken",
        WECOM_AES_KEY="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        WECOM_API_BASE="http://127.0.0.1:9",  # (nothing is sent: quiet hours hold every row)
        HOMEVISIT_METRICS_TOKEN="province-metrics-token",
    )
    servers = [BotServer(f"serve-{i}", env, workdir) for i in range(args.instances)]
    direct = psycopg.connect(args.pg, autocommit=True)
    direct.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    day = fire.date()
    try:
        async with aiohttp.ClientSession() as http:
            for server in servers:
                server.start()
            for server in servers:
                await server.wait_ready(http, timeout=60)
            print(
                f"{args.instances} instances up behind PgBouncer; the reminder fires at "
                f"{fire:%H:%M:%S} (in {(fire - datetime.now(TZ)).total_seconds():.0f} s)",
                flush=True,
            )
            await asyncio.sleep(max(0.0, (fire - datetime.now(TZ)).total_seconds()))
            t0 = time.perf_counter()
            killed: BotServer | None = None
            while True:
                rows = direct.execute(
                    "SELECT chunk, status FROM job_chunks WHERE job = 'remind' AND run_date = %s",
                    (day,),
                ).fetchall()
                parts = [s for c, s in rows if c != 0]
                done = sum(s == "done" for s in parts)
                if killed is None and parts and done >= args.kill_at * len(parts):
                    killed = servers[-1]
                    rss = peak_rss_mib(killed.proc.pid) if killed.proc else 0.0
                    killed.kill()
                    print(
                        f"  {time.perf_counter() - t0:5.1f} s: {done}/{len(parts)} chunks done, "
                        f"SIGKILL {killed.name} (peak RSS so far {rss:.0f} MiB)",
                        flush=True,
                    )
                if any(c == 0 and s == "done" for c, s in rows):
                    break
                if time.perf_counter() - t0 > args.timeout:
                    print(f"  not finished after {args.timeout} s: {sorted(rows)}")
                    return 1
                await asyncio.sleep(0.2)
            wall = time.perf_counter() - t0
            shares = direct.execute(
                "SELECT split_part(owner, ':', 2), count(*), max(attempts) FROM job_chunks"
                " WHERE job = 'remind' AND run_date = %s GROUP BY 1 ORDER BY 1",
                (day,),
            ).fetchall()
            counts = direct.execute(
                "SELECT count(*), count(DISTINCT recipient),"
                " (SELECT count(DISTINCT a.staff_id) FROM assignments a)"
                " FROM outbox WHERE kind = 'reminder' AND idempotency_key LIKE %s",
                (f"reminder:%:{day}",),
            ).fetchone()
            assert counts is not None
            n, distinct, teachers = counts
            print(
                f"  reminder done in {wall:.1f} s from the scheduled moment "
                f"(kill and one lease expiry included)"
            )
            pids = {str(s.proc.pid): s for s in servers if s.proc}
            for pid, count, attempts in shares:
                owner = pids.get(pid)
                name = owner.name if owner else f"pid {pid}"
                alive = owner is not None and owner.alive
                memory = f", peak RSS {peak_rss_mib(int(pid)):.0f} MiB" if alive else " (killed)"
                print(f"  {name}: {count} chunks (max attempts {attempts}){memory}")
            once = n == distinct == teachers
            print(
                f"  reminders: {n:,} rows for {distinct:,} recipients; teachers with students: "
                f"{teachers:,}; {'every teacher exactly once' if once else 'MISMATCH'}"
            )
            return 0 if once else 1
    finally:
        for server in servers:
            if server.alive:
                server.stop()
        bouncer.stop()
        direct.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--teachers", type=int, default=50_000)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--kill-at", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--pg", default=province.DEFAULT_PG)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
