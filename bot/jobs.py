"""The scheduled jobs: teacher reminders and coordinator digests, written to the outbox.

A run works in chunks of schools (`storage.chunks`), so its memory and each transaction are
one chunk's, whatever the size of the province, and every instance that runs the job takes
chunks until none is left:

1. plan: the first instance writes the run's chunks and, in the same transaction, escalates
   overdue follow-ups and climbs unacknowledged escalations to the bureau (set-based);
2. chunks: per chunk, one transaction loads the chunk's snapshot, composes its teachers'
   reminders or its coordinators' digests and their escalation notices, enqueues them in bulk
   under their idempotency keys, and marks the chunk done while its lease is still ours;
3. the last step, once every chunk is finished: the bureau's notices and summary (from the
   chunks' school lines), and the run's record.

Killed half-way, an instance leaves its chunk's transaction uncommitted; the chunk is taken over
when its lease expires (by another instance, or by this one's catch-up at start-up). A chunk
that raises is retried, then given up with its schools named in the day's bureau digest; the
run is then recorded only once they have been retried (at start-up, or `homevisit remind`).
Run twice, on one instance or several, a run enqueues nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial

from sqlalchemy.engine import Connection

from bot.core.aid import totals
from bot.core.errors import StorageUnavailable
from bot.core.types import FollowUpEvent, OutboxMessage, StaffRole
from bot.deps import Deps, cadence
from bot.logsafe import failure_place, log_failure
from bot.metrics import Metrics
from bot.outbox import OutboxDelivery
from config.aid import load_aid_items
from config.settings import Settings
from handlers.ladder import LIST_LIMIT, plan_escalations
from handlers.reminders import (
    Outgoing,
    Plan,
    SchoolLine,
    View,
    plan_bureau_digests,
    plan_reminders,
    plan_school_digests,
)
from storage import chunks, ladder, outbox
from storage.aid import supply_by_school
from storage.chunks import Chunk, LeaseLost, RunState
from storage.maintenance import Pruned, prune_inbound
from storage.snapshot import (
    bureau_ids,
    has_run,
    last_run,
    load_bureau_snapshot,
    load_snapshot,
    record_run,
    student_span,
)

log = logging.getLogger(__name__)

REMIND, DIGEST = "remind", "digest"
JOBS = (REMIND, DIGEST)
# Channels in order of preference for reaching a person; the group robot is addressed separately.
PERSON_CHANNELS = ("wecom", "dingtalk", "wechat", "feishu")
COORDINATORS, BUREAU = frozenset({StaffRole.COORDINATOR}), frozenset({StaffRole.BUREAU})


def instance_name() -> str:
    """This process among the instances sharing a job run (host and pid: no personal data)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def wall_clock() -> datetime:
    """Leases run on real time, whatever moment a job is run as if at (instances' clocks are
    assumed to agree within a second or two, as NTP keeps them)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class JobReport:
    job: str
    day: date
    skipped: str | None = None
    planned: int = 0
    # newly written by this call (planned: the whole run's messages, by every instance; a run
    # done before, or by other instances, queues nothing here)
    queued: int = 0
    escalated: int = 0
    unreachable: int = 0
    not_before: datetime | None = None
    climbed: int = 0
    chunks: int = 0  # of the whole run (on every instance)
    mine: int = 0  # chunks this instance did
    failed: int = 0  # chunks given up after their attempts

    def summary(self) -> str:
        if self.skipped:
            return f"{self.job} {self.day}: skipped ({self.skipped})"
        wait = f", held until {self.not_before:%H:%M} UTC (quiet hours)" if self.not_before else ""
        failed = f", {self.failed} FAILED (see the log)" if self.failed else ""
        return (
            f"{self.job} {self.day}: {self.planned} messages planned, {self.queued} newly queued"
            f"{wait}; {self.escalated} follow-ups escalated, {self.climbed} climbed to the "
            f"bureau; {self.unreachable} recipients "
            f"without a usable channel; {self.chunks} chunks, {self.mine} here{failed}"
        )


class Jobs:
    def __init__(
        self,
        settings: Settings,
        deps: Deps,
        channels: Sequence[str],
        delivery: OutboxDelivery | None = None,
        metrics: Metrics | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.cadence = cadence(settings, deps.calendar)
        self.person_channels = [c for c in PERSON_CHANNELS if c in channels]
        self.channels = [*self.person_channels, *(c for c in channels if c not in PERSON_CHANNELS)]
        self.delivery = delivery
        self.metrics = metrics
        self.aid_items = load_aid_items(settings.aid_path, deps.form.followup_kinds)
        self.owner = owner or instance_name()
        self.lease = settings.job_lease
        # how often an instance with nothing left to claim looks again (a chunk another
        # instance holds may be finished, or its lease may expire)
        self.poll = min(1.0, settings.job_lease.total_seconds() / 4)

    def quiet_until(self, at: datetime) -> datetime | None:
        """When `at` falls inside QUIET_HOURS, the moment the window ends; else None."""
        return self.settings.quiet_hours.release(at, self.settings.tz)

    async def run(self, job: str, at: datetime) -> JobReport:
        """Run `job` as if at `at`; only on school days. Never sends directly: writes the outbox.

        Returns once the whole run is finished, by this instance or with others: an instance
        with no chunk left to claim waits for the others' (taking over any whose lease expires).
        """
        if job not in JOBS:
            raise ValueError(job)
        today = at.astimezone(self.settings.tz).date()
        if not self.deps.calendar.is_school_day(today):
            return JobReport(job, today, skipped="not a school day")
        db = self.deps.db
        await db.run(lambda conn: self._plan(conn, job, at, today), deadline=None)
        mine = queued_here = 0
        while True:
            chunk = await db.run(partial(self._claim, job=job, today=today))
            if chunk is not None:
                queued = await self._work(chunk, at, today)
                if queued is not None:
                    mine, queued_here = mine + 1, queued_here + queued
                continue
            state = await db.run(partial(chunks.state, job=job, day=today))
            if state.complete:
                break
            await asyncio.sleep(self.poll)
        report = self._report(job, today, state, mine, queued_here, at)
        log.info("%s", report.summary())
        if self.delivery is not None and mine:
            self.delivery.poke()
        return report

    def _report(
        self, job: str, today: date, state: RunState, mine: int, queued: int, at: datetime
    ) -> JobReport:
        ladder_counts = state.figures or {}
        return JobReport(
            job,
            today,
            None,
            state.planned,
            queued,
            int(ladder_counts.get("escalated", 0)),
            state.unreachable,
            self.quiet_until(max(at, self.deps.clock.now())),
            int(ladder_counts.get("climbed", 0)),
            state.chunks,
            mine,
            state.failed,
        )

    async def has_run(self, job: str, day: date) -> bool:
        """Whether `job` completed for the local school day `day`."""
        return await self.deps.db.run(partial(has_run, job=job, day=day))

    async def housekeep(self) -> Pruned:
        """Clear what is kept only for a while (see `storage.maintenance`); any day, any hour."""
        pruned = await self.deps.db.run(lambda conn: prune_inbound(conn, self.deps.clock.now()))
        if pruned.replies_cleared or pruned.ids_deleted:
            log.info(
                "housekeeping: %s stored replies cleared, %s old message ids deleted",
                pruned.replies_cleared,
                pruned.ids_deleted,
            )
        return pruned

    def _climb_before(self, today: date) -> datetime:
        """Escalated before this moment (the start of the local day after the school day
        `HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS` school days back) and unacknowledged: it climbs."""
        day = self.deps.calendar.school_days_before(today, self.settings.escalate_bureau_after_days)
        return datetime.combine(day + timedelta(days=1), time(), tzinfo=self.settings.tz)

    def _plan(self, conn: Connection, job: str, at: datetime, today: date) -> None:
        """The run's chunks and its one-off steps (the ladder), by the first instance to come;
        a later call on a finished run with failed chunks gives those another round."""
        if not chunks.plan(conn, job, today, self.settings.job_chunk_students):
            if again := chunks.retry_failed(conn, job, today):
                log.info("%s %s: %d failed chunks tried again", job, today, again)
            return
        calendar = self.deps.calendar
        due_before = calendar.school_days_before(today, self.settings.escalate_after_days)
        escalated = ladder.escalate(conn, due_before, at)
        climbed = ladder.climb(conn, self._climb_before(today), at)
        ladder.refresh_statistics(conn, escalated + climbed)
        chunks.set_figures(conn, job, today, {"escalated": escalated, "climbed": climbed})

    async def _work(self, chunk: Chunk, at: datetime, today: date) -> int | None:
        """Do one claimed chunk, renewing its lease meanwhile; how many messages it queued, or
        None when this instance did not finish it."""
        db = self.deps.db
        renewing = asyncio.create_task(self._renew(chunk))
        try:
            queued = await db.run(lambda conn: self._chunk(conn, chunk, at, today), deadline=None)
        except LeaseLost:
            log.warning("%s %s chunk %d: taken over by another instance", *_name(chunk))
            self._count(chunk, "lost")
            return None
        except StorageUnavailable:
            raise  # the database is away: the lease runs out, and the chunk is taken over
        except Exception as exc:
            error = failure_place(exc)
            gave_up = await db.run(
                lambda conn: chunks.fail(conn, chunk, self.owner, error, wall_clock())
            )
            log_failure(
                log,
                "%s %s chunk %d failed (attempt %d%s)",
                *_name(chunk),
                chunk.attempts,
                ", given up: its schools are named in the bureau's digest" if gave_up else "",
                exc=exc,
            )
            self._count(chunk, "failed" if gave_up else "retried")
            return None
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        self._count(chunk, "done")
        log.debug("%s %s chunk %d done", *_name(chunk))
        return queued

    async def _renew(self, chunk: Chunk) -> None:
        """Keep the lease while this instance works on the chunk (a third of it at a time)."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                held = await self.deps.db.run(partial(self._renew_lease, chunk=chunk))
            except StorageUnavailable:
                continue
            if not held:
                return

    def _claim(self, conn: Connection, job: str, today: date) -> Chunk | None:
        return chunks.claim(conn, job, today, self.owner, wall_clock(), self.lease)

    def _renew_lease(self, conn: Connection, chunk: Chunk) -> bool:
        return chunks.renew(conn, chunk, self.owner, wall_clock() + self.lease)

    def _count(self, chunk: Chunk, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.job_chunk(chunk.job, outcome)

    def _since(self, conn: Connection, at: datetime, today: date) -> datetime:
        """ "Needs found since the last digest"; before the first digest, those of the past week."""
        return last_run(conn, DIGEST, before=today) or at - timedelta(days=7)

    def _chunk(self, conn: Connection, chunk: Chunk, at: datetime, today: date) -> int:
        """One chunk's messages, written with its `done` mark; how many were new."""
        if chunk.schools is None:
            return self._last_step(conn, chunk, at, today)
        since = self._since(conn, at, today)
        span = student_span(conn, chunk.schools)
        snap = load_snapshot(conn, since, at, chunk.schools, digest=chunk.job == DIGEST, span=span)
        view = View(snap, today, self.settings.tz, self.cadence)
        kinds = self.deps.form.followup_kinds
        plan: Plan
        figures = None
        if chunk.job == REMIND:
            plan = plan_reminders(snap, view, self.person_channels, kinds)
        else:
            plan, lines = plan_school_digests(
                snap,
                view,
                since,
                self.channels,
                self.person_channels,
                kinds,
                self.settings.escalate_after_days,
                supply_by_school(conn, self.aid_items, chunk.schools, span),
            )
            figures = {"schools": [line.dump() for line in lines]}
        notices = plan_escalations(
            snap,
            view,
            ladder.notified(conn, chunk.schools, span),
            self.person_channels,
            kinds,
            self.settings.escalate_after_days,
            self.settings.escalate_bureau_after_days,
            tell=COORDINATORS,
        )
        ladder.record(conn, FollowUpEvent.NOTIFIED, notices.told, at)
        messages = [*notices.messages, *plan.messages]
        return self._finish(conn, chunk, messages, at, len(plan.unreachable), figures)

    def _last_step(self, conn: Connection, chunk: Chunk, at: datetime, today: date) -> int:
        """The bureau's notices of climbed escalations and, for the digest, its summary; then
        the run's record (unless a chunk failed: it is tried again at the next start)."""
        since = self._since(conn, at, today)
        untold = ladder.untold_climbed(conn, bureau_ids(conn), LIST_LIMIT)
        shown = {f for _, first in untold.values() for f in first}
        snap = load_bureau_snapshot(conn, since, shown)
        view = View(snap, today, self.settings.tz, self.cadence)
        notices = plan_escalations(
            snap,
            view,
            {(f, p) for p, (_, first) in untold.items() for f in shown - set(first)},
            self.person_channels,
            self.deps.form.followup_kinds,
            self.settings.escalate_after_days,
            self.settings.escalate_bureau_after_days,
            tell=BUREAU,
            totals={p: count for p, (count, _) in untold.items()},
        )
        ladder.record(conn, FollowUpEvent.NOTIFIED, notices.told, at)
        for person in {p for _, p in notices.told}:  # told of all of them, twenty by name
            ladder.tell_climbed(conn, person, at)
        messages = list(notices.messages)
        unreachable = 0
        if chunk.job == DIGEST:
            lines = [
                SchoolLine.load(row)
                for stored in chunks.figures(conn, chunk.job, today)
                for row in stored["schools"]
            ]
            supply = supply_by_school(conn, self.aid_items)
            plan = plan_bureau_digests(
                snap.staff.values(),
                lines,
                view,
                self.channels,
                totals(line for held in supply.values() for line in held),
                chunks.failed(conn, today),
            )
            messages += plan.messages
            unreachable = len(plan.unreachable)
        if not chunks.state(conn, chunk.job, today).failed:
            record_run(conn, chunk.job, today, at)
        return self._finish(conn, chunk, messages, at, unreachable)

    def _finish(
        self,
        conn: Connection,
        chunk: Chunk,
        messages: Sequence[Outgoing],
        at: datetime,
        unreachable: int,
        figures: object = None,
    ) -> int:
        """Enqueue the chunk's messages and mark it done (while the lease is ours); how many
        messages were new."""
        queued = self._enqueue(conn, messages, at)
        chunks.finish(
            conn,
            chunk,
            self.owner,
            wall_clock(),
            planned=len(messages),
            queued=queued,
            unreachable=unreachable,
            figures=figures,
        )
        return queued

    def _enqueue(self, conn: Connection, messages: Sequence[Outgoing], at: datetime) -> int:
        """Store the messages in the outbox in bulk; how many were new. They go out from now on
        (a job run "as if" at an earlier time sends now), never inside quiet hours, and are
        queued now, whatever `at` says: the outbox gives up a day after a row was queued."""
        now = self.deps.clock.now()
        send_from = max(at, now)
        not_before = self.quiet_until(send_from) or send_from
        rows = [
            OutboxMessage(m.key, m.channel, m.recipient, m.kind, m.body, m.listing, m.fallbacks)
            for m in messages
        ]
        return outbox.enqueue_many(conn, rows, not_before=not_before, now=now)


def _name(chunk: Chunk) -> tuple[str, date, int]:
    return chunk.job, chunk.day, chunk.number
