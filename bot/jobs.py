"""The scheduled jobs: teacher reminders and coordinator digests, written to the outbox.

A run is one transaction: escalate overdue follow-ups, load the snapshot, compose, enqueue every
message under its idempotency key, record the run. Killed half-way, it leaves nothing behind and is
run again at start-up; run twice (or on two instances) it enqueues nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial

from sqlalchemy.engine import Connection

from bot.core.types import FollowUpEvent, OutboxMessage
from bot.deps import Deps, cadence
from bot.outbox import OutboxDelivery
from config.aid import load_aid_items
from config.settings import Settings
from handlers.ladder import plan_escalations
from handlers.reminders import Plan, View, plan_digests, plan_reminders
from storage import ladder, outbox
from storage.aid import supply_by_school
from storage.maintenance import Pruned, prune_inbound
from storage.snapshot import has_run, last_run, load_snapshot, record_run

log = logging.getLogger(__name__)

REMIND, DIGEST = "remind", "digest"
JOBS = (REMIND, DIGEST)
# Channels in order of preference for reaching a person; the group robot is addressed separately.
PERSON_CHANNELS = ("wecom", "dingtalk", "wechat", "feishu")


@dataclass(frozen=True, slots=True)
class JobReport:
    job: str
    day: date
    skipped: str | None = None
    planned: int = 0
    queued: int = 0  # newly written; planned - queued were already there from an earlier run
    escalated: int = 0
    unreachable: int = 0
    not_before: datetime | None = None
    climbed: int = 0

    def summary(self) -> str:
        if self.skipped:
            return f"{self.job} {self.day}: skipped ({self.skipped})"
        wait = f", held until {self.not_before:%H:%M} UTC (quiet hours)" if self.not_before else ""
        return (
            f"{self.job} {self.day}: {self.planned} messages planned, {self.queued} newly queued"
            f"{wait}; {self.escalated} follow-ups escalated, {self.climbed} climbed to the "
            f"bureau; {self.unreachable} recipients "
            "without a usable channel"
        )


class Jobs:
    def __init__(
        self,
        settings: Settings,
        deps: Deps,
        channels: Sequence[str],
        delivery: OutboxDelivery | None = None,
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.cadence = cadence(settings, deps.calendar)
        self.person_channels = [c for c in PERSON_CHANNELS if c in channels]
        self.channels = [*self.person_channels, *(c for c in channels if c not in PERSON_CHANNELS)]
        self.delivery = delivery
        self.aid_items = load_aid_items(settings.aid_path, deps.form.followup_kinds)

    def quiet_until(self, at: datetime) -> datetime | None:
        """When `at` falls inside QUIET_HOURS, the moment the window ends; else None."""
        return self.settings.quiet_hours.release(at, self.settings.tz)

    async def run(self, job: str, at: datetime) -> JobReport:
        """Run `job` as if at `at`; only on school days. Never sends directly: writes the outbox."""
        if job not in JOBS:
            raise ValueError(job)
        today = at.astimezone(self.settings.tz).date()
        if not self.deps.calendar.is_school_day(today):
            return JobReport(job, today, skipped="not a school day")
        report = await self.deps.db.run(
            lambda conn: self._run(conn, job, at, today),
            deadline=None,  # a city takes seconds
        )
        log.info("%s", report.summary())
        if self.delivery is not None and report.queued:
            self.delivery.poke()
        return report

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

    def _run(self, conn: Connection, job: str, at: datetime, today: date) -> JobReport:
        calendar = self.deps.calendar
        due_before = calendar.school_days_before(today, self.settings.escalate_after_days)
        escalated = ladder.escalate(conn, due_before, at)
        climbed = ladder.climb(conn, self._climb_before(today), at)
        # "Needs found since the last digest"; before the first digest, those of the past week.
        since = last_run(conn, DIGEST, before=today) or at - timedelta(days=7)
        snap = load_snapshot(conn, since, at)
        view = View(snap, today, self.settings.tz, self.cadence)
        kinds = self.deps.form.followup_kinds
        plan: Plan
        if job == REMIND:
            plan = plan_reminders(snap, view, self.person_channels, kinds)
        else:
            plan = plan_digests(
                snap,
                view,
                since,
                self.channels,
                self.person_channels,
                kinds,
                self.settings.escalate_after_days,
                supply_by_school(conn, self.aid_items),
            )
        notices = plan_escalations(
            snap,
            view,
            ladder.notified(conn),
            self.person_channels,
            kinds,
            self.settings.escalate_after_days,
            self.settings.escalate_bureau_after_days,
        )
        ladder.record(conn, FollowUpEvent.NOTIFIED, notices.told, at)
        # Messages go out from now on (a job run "as if" at an earlier time sends now), never
        # inside quiet hours.
        send_from = max(at, self.deps.clock.now())
        not_before = self.quiet_until(send_from)
        messages = [
            OutboxMessage(m.key, m.channel, m.recipient, m.kind, m.body, m.listing, m.fallbacks)
            for m in [*notices.messages, *plan.messages]
        ]
        # Queued now, whatever `at` says: the outbox gives up a day after a row was queued.
        queued = outbox.enqueue_many(
            conn, messages, not_before=not_before or send_from, now=self.deps.clock.now()
        )
        record_run(conn, job, today, at)
        return JobReport(
            job,
            today,
            None,
            len(plan.messages) + len(notices.messages),
            queued,
            escalated,
            len(plan.unreachable),
            not_before,
            climbed,
        )
