"""A chunked job run (#18) across real `python -m bot remind` processes on one PostgreSQL.

The province of tests/test_job_chunks.py (five schools, two teachers each, one chunk per school)
in a fresh schema, reached directly and through a PgBouncer in transaction mode. One process is
SIGKILLed while it holds a chunk (the test makes that chunk's outbox insert wait on a row lock
of its own, then kills the process as it waits): a second process finishes the run, taking the
dead one's chunk over when its three-second lease runs out, and every teacher has one reminder.
Two processes started at the same moment share one run. The fake WeCom server takes the sends.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, select

from storage.schema import job_chunks, job_runs, outbox
from tests import fake_wecom
from tests.conftest import PG_URL, make_db_url, open_db
from tests.fake_wecom import AGENT_ID, CORP_ID, SECRET, FakeWeCom
from tests.procs import ROOT, bot_env, run_bot
from tests.test_instances import REMIND_AT, REMIND_DAY, WECOM_AES_KEY, WECOM_TOKEN
from tests.test_job_chunks import SCHOOLS, load_province

TEACHERS = {f"T{s}{t}" for s in range(1, SCHOOLS + 1) for t in (1, 2)}


@pytest.fixture(params=["postgresql", "pgbouncer"])
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from make_db_url(request.param, tmp_path)


@pytest.fixture
def db(pg_url: str) -> Iterator[Engine]:
    database = open_db(pg_url)
    database.upgrade()
    with database.begin() as conn:
        load_province(conn)
    database.close()
    direct = f"{PG_URL}?options=-csearch_path%3D{schema_of(pg_url)}"  # (the test reads directly)
    engine = create_engine(direct.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with fake_wecom.running() as api:
        api.members = {f"t{no[1:]}" for no in TEACHERS} | {f"c{s}" for s in range(1, SCHOOLS + 1)}
        yield api


@pytest.fixture
def env(pg_url: str, fake: FakeWeCom, db: Engine) -> dict[str, str]:
    pooled = {} if pg_url.startswith(PG_URL) else {"HOMEVISIT_PG_POOLER": "pgbouncer"}
    assert pooled or "pgbouncer" not in pg_url
    return bot_env(
        DATABASE_URL=pg_url,
        HOMEVISIT_JOB_CHUNK_STUDENTS="4",  # one chunk per school
        HOMEVISIT_JOB_LEASE_SECONDS="3",
        QUIET_HOURS="00:00-00:01",  # (sends go out from the real now, whenever the test runs)
        WECOM_CORP_ID=CORP_ID,
        WECOM_AGENT_ID=str(AGENT_ID),
        WECOM_SECRET=SECRET,
        WECOM_TOKEN=WECOM_TOKEN,
        WECOM_AES_KEY=WECOM_AES_KEY,
        WECOM_API_BASE=fake.base_url,
        **pooled,
    )


def reminders(db: Engine) -> list[Any]:
    with db.connect() as conn:
        return list(
            conn.execute(select(outbox.c.idempotency_key).where(outbox.c.kind == "reminder"))
        )


def chunk_states(db: Engine) -> dict[int, tuple[str, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(select(job_chunks.c.chunk, job_chunks.c.status, job_chunks.c.owner))
        return {r.chunk: (r.status, r.owner) for r in rows}


def schema_of(url: str) -> str:
    return url.split("search_path%3D")[1]


async def test_an_instance_killed_mid_run_is_finished_by_another_every_message_once(
    env: dict[str, str], db: Engine, tmp_path: Path
) -> None:
    schema = schema_of(env["DATABASE_URL"])
    # Hold chunk 3 (school 3) up: our uncommitted reminder row for its first teacher makes the
    # process's INSERT ... ON CONFLICT wait for this transaction.
    blocker = psycopg.connect(PG_URL)
    blocker.execute(f'SET search_path TO "{schema}"')
    blocker.execute(
        "INSERT INTO outbox (idempotency_key, channel, recipient, kind, body, status, attempts,"
        " next_attempt_at, created_at) VALUES (%s, 'wecom', 'x', 'reminder', '', 'failed', 0,"
        " now(), now())",
        (f"reminder:T31:{REMIND_DAY}",),
    )
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "remind", "--at", REMIND_AT,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        waited = time.monotonic() + 30
        with psycopg.connect(PG_URL, autocommit=True) as watcher:
            while not watcher.execute(
                "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.query LIKE 'INSERT INTO outbox%%'"
            ).fetchone():
                assert time.monotonic() < waited, "the first instance never reached chunk 3"
                assert first.returncode is None, await first.communicate()
                await asyncio.sleep(0.05)
        first.kill()  # SIGKILL while its chunk 3 transaction waits
        await first.wait()
    finally:
        blocker.rollback()
        blocker.close()
    states = chunk_states(db)
    assert states[3][0] == "running" and states[0][0] == "pending"
    assert {n for n, (status, _) in states.items() if status == "done"} == {1, 2}
    early = {f"reminder:T{s}{t}:{REMIND_DAY}" for s in (1, 2) for t in (1, 2)}
    assert {key for (key,) in reminders(db)} == early

    started = time.monotonic()
    second = await run_bot(env, tmp_path, "remind", "--at", REMIND_AT)
    assert second.returncode == 0, second.stderr
    assert "10 messages planned, 6 newly queued" in second.stdout, second.stdout
    assert "5 chunks, 4 here" in second.stdout  # 3 (taken over), 4, 5 and the last step
    assert time.monotonic() - started < 20
    keys = [key for (key,) in reminders(db)]
    assert sorted(keys) == sorted(f"reminder:{no}:{REMIND_DAY}" for no in TEACHERS)
    after = chunk_states(db)
    assert {status for status, _ in after.values()} == {"done"}
    assert after[3][1] != states[3][1]  # finished by the second instance
    with db.connect() as conn:
        assert [tuple(r) for r in conn.execute(select(job_runs.c.job, job_runs.c.run_date))] == [
            ("remind", REMIND_DAY)
        ]


async def test_two_instances_started_together_share_the_chunks(
    env: dict[str, str], db: Engine, tmp_path: Path, fake: FakeWeCom
) -> None:
    runs = await asyncio.gather(
        *(run_bot(env, tmp_path, "remind", "--at", REMIND_AT) for _ in range(2))
    )
    shares = []
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "remind 2026-03-02: 10 messages planned" in run.stdout, run.stdout
        shares.append(int(run.stdout.split(" chunks, ")[1].split(" here")[0]))
    assert sum(shares) == SCHOOLS + 1
    keys = [key for (key,) in reminders(db)]
    assert sorted(keys) == sorted(f"reminder:{no}:{REMIND_DAY}" for no in TEACHERS)
    # (each process delivers what is due when its run ends: every teacher once, in all)
    deadline = time.monotonic() + 15
    while len(fake.sent) < len(TEACHERS) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert sorted(m.touser for m in fake.sent) == sorted(f"t{no[1:]}" for no in TEACHERS), [
        r.stdout for r in runs
    ]
