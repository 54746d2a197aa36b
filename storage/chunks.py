"""A scheduled job's run, split into chunks of schools that instances claim with leases.

The first instance to start a run writes its chunks (`plan`): consecutive school ids holding
about `students_per_chunk` active students each (a school is never split, so a chunk holds at
most one school more than that), and chunk 0, the run's last step (the bureau's summary, the
run's record), which becomes claimable once every other chunk is done or has failed.

Every instance then claims chunks one at a time (`claim`): a pending chunk, or a running one
whose lease expired because its instance died; on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so
claims by several instances never wait for one another; on SQLite (one writer) the transaction
itself serialises them. A chunk's messages, its figures and its `done` mark are written in one
transaction, and the mark only while this instance still holds the lease (`finish`), so a chunk
taken over from a stalled instance is written by one of them: the other's transaction rolls
back (and the outbox keys would stop a second copy anyway). A chunk that raises is retried up
to `MAX_ATTEMPTS` times, then marked failed with the exception's type and place: the rest of the
run goes on, and the day's digest names the schools it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from bot.core.types import JobGap
from storage.schema import job_chunks, schools, students

FINAL = 0  # the number of a run's last step
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
MAX_ATTEMPTS = 3
PLAN_WAIT = "120s"  # how long an instance waits for another one's planning of the same run
PLAN_STATEMENTS = "600s"  # statement timeout while planning (the usual one is 15 s)
FAILED_NAMES_LIMIT = 10  # schools named per failed chunk in a digest


class LeaseLost(Exception):
    """The chunk's lease passed to another instance before this one could finish it."""


@dataclass(frozen=True, slots=True)
class Chunk:
    job: str
    day: date
    number: int
    first_school: int | None
    last_school: int | None
    attempts: int

    @property
    def schools(self) -> tuple[int, int] | None:
        """The inclusive range of school ids (None for the run's last step)."""
        if self.first_school is None or self.last_school is None:
            return None
        return self.first_school, self.last_school


@dataclass(frozen=True, slots=True)
class RunState:
    """A run's chunks (the last step not counted) and what they queued, read from the table."""

    chunks: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    planned: int = 0
    queued: int = 0
    unreachable: int = 0
    complete: bool = False  # the last step is done (or failed for good: nothing is left)
    figures: Any = None  # the last step's figures (the ladder's counts)


def _pk(chunk: Chunk) -> Any:
    return and_(
        job_chunks.c.job == chunk.job,
        job_chunks.c.run_date == chunk.day,
        job_chunks.c.chunk == chunk.number,
    )


def _insert(conn: Connection) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(job_chunks)


def split(
    counts: Sequence[tuple[int, int]], students_per_chunk: int
) -> list[tuple[int, int, int, int]]:
    """(first school, last school, schools, students) per chunk, from (school, students) pairs
    in school order: consecutive schools until a chunk holds `students_per_chunk` students."""
    out: list[tuple[int, int, int, int]] = []
    first, last, n_schools, n_students = None, 0, 0, 0
    for school, n in counts:
        if first is None:
            first = school
        last, n_schools, n_students = school, n_schools + 1, n_students + n
        if n_students >= students_per_chunk:
            out.append((first, last, n_schools, n_students))
            first, n_schools, n_students = None, 0, 0
    if first is not None:
        out.append((first, last, n_schools, n_students))
    return out


def plan(
    conn: Connection, job: str, day: date, students_per_chunk: int, figures: Any = None
) -> bool:
    """Write the run's chunks unless they are there; True when this call wrote them (the
    caller then does the run's one-off steps in the same transaction). `figures` go on the last
    step's row. A second instance planning at the same moment waits for the first to commit
    (the primary key), then finds the run there: on PostgreSQL up to `PLAN_WAIT`, beyond the
    usual lock timeout (a province's ladder steps take seconds, and their statements may run
    up to `PLAN_STATEMENTS`)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.set_config("lock_timeout", PLAN_WAIT, True)))
        # the planner's one-off ladder steps update a province's follow-ups in one statement
        conn.execute(select(func.set_config("statement_timeout", PLAN_STATEMENTS, True)))
    first = conn.execute(
        _insert(conn)
        .values(
            job=job,
            run_date=day,
            chunk=FINAL,
            status=PENDING,
            schools=0,
            students=0,
            attempts=0,
            planned=0,
            queued=0,
            unreachable=0,
            figures=figures,
        )
        .on_conflict_do_nothing()
        .returning(job_chunks.c.chunk)  # (an INSERT's rowcount is not reliable on psycopg)
    ).first()
    if first is None:
        return False
    counts = conn.execute(
        select(students.c.school_id, func.count())
        .where(students.c.active.is_(True))
        .group_by(students.c.school_id)
        .order_by(students.c.school_id)
    ).all()
    rows = [
        {
            "job": job,
            "run_date": day,
            "chunk": number,
            "first_school": first_school,
            "last_school": last_school,
            "schools": n_schools,
            "students": n_students,
            "status": PENDING,
            "attempts": 0,
            "planned": 0,
            "queued": 0,
            "unreachable": 0,
        }
        for number, (first_school, last_school, n_schools, n_students) in enumerate(
            split([(int(s), int(n)) for s, n in counts], students_per_chunk), 1
        )
    ]
    if rows:
        conn.execute(insert(job_chunks), rows)
    return True


def set_figures(conn: Connection, job: str, day: date, figures: Any) -> None:
    """Store the run's one-off figures on its last step (the planner's escalation counts)."""
    conn.execute(
        update(job_chunks)
        .where(_of_run(job, day), job_chunks.c.chunk == FINAL)
        .values(figures=figures)
    )


def retry_failed(conn: Connection, job: str, day: date) -> int:
    """Give a finished run's failed chunks another round of attempts, and its last step
    another run; how many chunks (a run asked for again, at start-up or by an operator). A run
    still going keeps its failures: its instances are still at work."""
    of_run = _of_run(job, day)
    last = conn.execute(select(job_chunks.c.status).where(of_run, job_chunks.c.chunk == FINAL))
    if last.scalar() not in (DONE, FAILED):
        return 0
    failed = conn.execute(
        select(func.count()).where(of_run, job_chunks.c.status == FAILED)
    ).scalar_one()
    if failed:
        conn.execute(
            update(job_chunks)
            .where(of_run, or_(job_chunks.c.status == FAILED, job_chunks.c.chunk == FINAL))
            .values(status=PENDING, attempts=0, owner=None, lease_until=None)
        )
    return int(failed)


def _of_run(job: str, day: date) -> Any:
    return and_(job_chunks.c.job == job, job_chunks.c.run_date == day)


def _claimable(now: datetime) -> Any:
    return or_(
        job_chunks.c.status == PENDING,
        and_(job_chunks.c.status == RUNNING, job_chunks.c.lease_until < now),
    )


def claim(
    conn: Connection, job: str, day: date, owner: str, now: datetime, lease: timedelta
) -> Chunk | None:
    """The next chunk of the run for `owner` to work on, leased until `now + lease`; None when
    none is free (all taken or finished; the last step only after all the others)."""
    columns = (
        job_chunks.c.chunk,
        job_chunks.c.first_school,
        job_chunks.c.last_school,
        job_chunks.c.attempts,
        job_chunks.c.status,
        job_chunks.c.owner,
    )
    of_run = _of_run(job, day)
    row = conn.execute(
        select(*columns)
        .where(of_run, job_chunks.c.chunk != FINAL, _claimable(now))
        .order_by(job_chunks.c.chunk)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        unfinished = conn.execute(
            select(func.count()).where(
                of_run,
                job_chunks.c.chunk != FINAL,
                job_chunks.c.status.in_((PENDING, RUNNING)),
            )
        ).scalar_one()
        if unfinished:
            return None
        row = conn.execute(
            select(*columns)
            .where(of_run, job_chunks.c.chunk == FINAL, _claimable(now))
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            return None
    chunk = Chunk(job, day, row.chunk, row.first_school, row.last_school, row.attempts + 1)
    taken = conn.execute(
        update(job_chunks)
        .where(
            _pk(chunk),
            job_chunks.c.status == row.status,
            job_chunks.c.owner.is_(None) if row.owner is None else job_chunks.c.owner == row.owner,
        )
        .values(status=RUNNING, owner=owner, lease_until=now + lease, attempts=chunk.attempts)
    ).rowcount
    return chunk if taken == 1 else None


def renew(conn: Connection, chunk: Chunk, owner: str, until: datetime) -> bool:
    """Extend `owner`'s lease on a chunk it is still working on; False if it lost it."""
    return (
        conn.execute(
            update(job_chunks)
            .where(_pk(chunk), job_chunks.c.owner == owner, job_chunks.c.status == RUNNING)
            .values(lease_until=until)
        ).rowcount
        == 1
    )


def finish(
    conn: Connection,
    chunk: Chunk,
    owner: str,
    now: datetime,
    *,
    planned: int,
    queued: int,
    unreachable: int,
    figures: Any = None,
) -> None:
    """Mark the chunk done, in the transaction that wrote its messages; raises `LeaseLost`
    (roll it all back) when another instance has taken it over meanwhile."""
    values: dict[str, Any] = {
        "status": DONE,
        "lease_until": None,
        "planned": planned,
        "queued": queued,
        "unreachable": unreachable,
        "finished_at": now,
        "error": None,
    }
    if figures is not None:
        values["figures"] = figures
    done = conn.execute(
        update(job_chunks)
        .where(_pk(chunk), job_chunks.c.owner == owner, job_chunks.c.status == RUNNING)
        .values(**values)
    ).rowcount
    if done != 1:
        raise LeaseLost(f"{chunk.job} {chunk.day} chunk {chunk.number}")


def fail(conn: Connection, chunk: Chunk, owner: str, error: str, now: datetime) -> bool:
    """Record a failed attempt: the chunk goes back to pending, or after `MAX_ATTEMPTS` is
    failed for good; True in that case."""
    final = chunk.attempts >= MAX_ATTEMPTS
    conn.execute(
        update(job_chunks)
        .where(_pk(chunk), job_chunks.c.owner == owner, job_chunks.c.status == RUNNING)
        .values(
            status=FAILED if final else PENDING,
            owner=None,
            lease_until=None,
            error=error[:200],
            finished_at=now if final else None,
        )
    )
    return final


def state(conn: Connection, job: str, day: date) -> RunState:
    rows = conn.execute(
        select(
            job_chunks.c.chunk,
            job_chunks.c.status,
            job_chunks.c.planned,
            job_chunks.c.queued,
            job_chunks.c.unreachable,
            job_chunks.c.figures,
        ).where(_of_run(job, day))
    ).all()
    parts = [r for r in rows if r.chunk != FINAL]
    last = next((r for r in rows if r.chunk == FINAL), None)
    return RunState(
        chunks=len(parts),
        done=sum(r.status == DONE for r in parts),
        failed=sum(r.status == FAILED for r in rows),  # (the last step's failure counts too)
        running=sum(r.status == RUNNING for r in parts),
        planned=sum(r.planned for r in rows),
        queued=sum(r.queued for r in rows),
        unreachable=sum(r.unreachable for r in rows),
        complete=last is not None and last.status in (DONE, FAILED),
        figures=last.figures if last is not None else None,
    )


def figures(conn: Connection, job: str, day: date) -> list[Any]:
    """The figures the run's finished chunks stored, in chunk order (the bureau's summary)."""
    return [
        f
        for (f,) in conn.execute(
            select(job_chunks.c.figures)
            .where(_of_run(job, day), job_chunks.c.chunk != FINAL, job_chunks.c.status == DONE)
            .order_by(job_chunks.c.chunk)
        )
        if f is not None
    ]


def failed(conn: Connection, day: date) -> list[JobGap]:
    """The chunks of the day's runs that failed for good, with the schools they left out."""
    out = []
    for r in conn.execute(
        select(
            job_chunks.c.job,
            job_chunks.c.first_school,
            job_chunks.c.last_school,
            job_chunks.c.schools,
            job_chunks.c.error,
        )
        .where(job_chunks.c.run_date == day, job_chunks.c.status == FAILED)
        .order_by(job_chunks.c.job, job_chunks.c.chunk)
    ):
        names = conn.execute(
            select(schools.c.name)
            .where(schools.c.id.between(r.first_school, r.last_school))
            .order_by(schools.c.id)
            .limit(FAILED_NAMES_LIMIT)
        ).scalars()
        out.append(JobGap(r.job, r.schools, tuple(names), r.error or ""))
    return out


def progress(conn: Connection, day: date) -> list[tuple[str, str, int]]:
    """(job, status, chunks) for the day's runs (metrics)."""
    rows = conn.execute(
        select(job_chunks.c.job, job_chunks.c.status, func.count())
        .where(job_chunks.c.run_date == day, job_chunks.c.chunk != FINAL)
        .group_by(job_chunks.c.job, job_chunks.c.status)
    )
    return [(str(j), str(s), int(n)) for j, s, n in rows]
