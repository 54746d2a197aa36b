"""The scheduler facade: APScheduler 3 runs the jobs in `HOMEVISIT_TZ`; nothing else touches it.

Each job fires on its crontab (REMINDER_CRON / DIGEST_CRON) and, at the same times, on weekends
too: the job itself runs only on school days, so a make-up working day (调休) on a Saturday gets
its reminders like any weekday. At start-up, a job whose time today has passed without a recorded
run (the server was down) runs once, unless quiet hours would hold its messages until tomorrow.
Job bodies never let an exception escape.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, tzinfo
from time import perf_counter

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.core.ports import Clock
from bot.jobs import DIGEST, REMIND, Jobs
from bot.logsafe import log_failure
from bot.metrics import Metrics
from config.cron import crontab_trigger

log = logging.getLogger(__name__)


def job_trigger(crontab: str, tz: tzinfo) -> BaseTrigger:
    """The crontab, plus the same times on Saturday and Sunday (for make-up school days)."""
    base = crontab_trigger(crontab, tz)
    fields = {f.name: str(f) for f in base.fields}
    weekend = CronTrigger(
        minute=fields["minute"], hour=fields["hour"], day_of_week="sat,sun", timezone=tz
    )
    return OrTrigger([base, weekend])


def first_fire_on(trigger: BaseTrigger, day_start: datetime) -> datetime | None:
    """The first time `trigger` fires on the local day beginning at `day_start`."""
    fire: datetime | None = trigger.get_next_fire_time(None, day_start)
    if fire is None or fire >= day_start + timedelta(days=1):
        return None
    return fire


class JobScheduler:
    def __init__(self, jobs: Jobs, clock: Clock, metrics: Metrics | None = None) -> None:
        self.jobs = jobs
        self.clock = clock
        self.metrics = metrics
        settings = jobs.settings
        self.tz = settings.tz
        self.triggers = {
            REMIND: job_trigger(settings.reminder_cron, settings.tz),
            DIGEST: job_trigger(settings.digest_cron, settings.tz),
        }
        self._scheduler: AsyncIOScheduler | None = None

    async def run_job(self, job: str) -> None:
        """Run one job now; failures are logged, never raised (the scheduler must go on)."""
        started, outcome = perf_counter(), "failed"
        try:
            report = await self.jobs.run(job, self.clock.now())
            outcome = "skipped" if report.skipped else "done"
        except Exception as exc:
            log_failure(log, "scheduled job %s failed", job, exc=exc)
        finally:
            self._measure(job, outcome, started)

    async def housekeep(self) -> None:
        started, outcome = perf_counter(), "failed"
        try:
            await self.jobs.housekeep()
            outcome = "done"
        except Exception as exc:
            log_failure(log, "housekeeping failed", exc=exc)
        finally:
            self._measure("housekeeping", outcome, started)

    def _measure(self, job: str, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.job(job, outcome, started)

    async def catch_up(self) -> list[str]:
        """Run, once, each job whose time today has passed with no run recorded for today."""
        now = self.clock.now()
        local = now.astimezone(self.tz)
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        missed = []
        for job, trigger in self.triggers.items():
            fire = first_fire_on(trigger, day_start)
            if fire is None or fire > now:
                continue
            done = await self.jobs.has_run(job, local.date())
            held = self.jobs.quiet_until(now)
            if not done and held is not None and held.astimezone(self.tz).date() != local.date():
                # Too late today: it would reach teachers tomorrow next to tomorrow's own run.
                log.info(
                    "missed job %s for %s skipped: quiet hours until tomorrow", job, local.date()
                )
                continue
            if not done:
                missed.append(job)
                log.info("running missed job %s for %s", job, local.date())
                await self.run_job(job)
        return missed

    def start(self) -> None:
        """Start firing jobs on the running event loop."""
        scheduler = AsyncIOScheduler(timezone=self.tz)
        for job, trigger in self.triggers.items():
            scheduler.add_job(
                self.run_job,
                trigger,
                args=[job],
                id=job,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=3600,
            )
        scheduler.add_job(
            self.housekeep,
            IntervalTrigger(hours=1, timezone=self.tz),
            id="housekeeping",
            next_run_time=self.clock.now(),  # once at start-up too
            coalesce=True,
            max_instances=1,
        )
        scheduler.start()
        self._scheduler = scheduler

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
