"""The scheduler facade: APScheduler 3 runs the jobs in `HOMEVISIT_TZ`; nothing else touches it.

Each job fires on its crontab (REMINDER_CRON / DIGEST_CRON) and, at the same times, on weekends
too: the job itself runs only on school days, so a make-up working day (调休) on a Saturday gets
its reminders like any weekday. At start-up, a job whose time today has passed without a recorded
run (the server was down) runs once, unless quiet hours would hold its messages until tomorrow.
Job bodies never let an exception escape.

With HOMEVISIT_BACKUP_DIR set (SQLite only), a backup is taken every night at BACKUP_AT local
time, and at start-up when the newest one is more than a day old (a server that is off at night).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, tzinfo
from functools import partial
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
from config.forms import WITHHELD
from storage.backup import backups_in, daily_backup, sqlite_path
from storage.maintenance import RETENTION_BATCH, Retained, apply_retention

log = logging.getLogger(__name__)
BACKUP_AT = (2, 30)  # local time of the nightly backup
EXPIRED = "（已过保存期限删除）"
RETENTION_AT = (3, 15)  # and of the retention job (HOMEVISIT_RETENTION_DAYS), also at start-up


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

    async def backup(self) -> None:
        """One backup into HOMEVISIT_BACKUP_DIR, keeping the newest HOMEVISIT_BACKUP_KEEP."""
        settings = self.jobs.settings
        if settings.backup_dir is None:
            return
        try:
            report = await asyncio.to_thread(
                daily_backup,
                sqlite_path(settings.database_url),
                settings.backup_dir,
                settings.backup_keep,
                self.clock.now().astimezone(self.tz),
            )
            log.info("backup written (%d bytes)", report.size)
        except Exception as exc:
            log_failure(log, "backup failed", exc=exc)

    async def retention(self) -> Retained:
        """Erase what HOMEVISIT_RETENTION_DAYS says is kept no longer, batch by batch."""
        total = Retained()
        try:
            settings, deps = self.jobs.settings, self.jobs.deps
            form = deps.form

            def redact(kind: str, detail: str) -> str:
                shown = form.public_detail(kind, detail)
                return EXPIRED if shown == WITHHELD else shown

            while True:
                done = await deps.db.run(
                    partial(
                        apply_retention,
                        now=self.clock.now(),
                        days=settings.retention_days,
                        sensitive_keys=form.sensitive_keys,
                        redact_detail=redact,
                    )
                )
                total = Retained(
                    total.visits + done.visits,
                    total.students + done.students,
                    total.messages + done.messages,
                )
                if done.visits < RETENTION_BATCH:
                    break
            if total.anything:
                log.info(
                    "retention: %d visits, %d students, %d message bodies erased",
                    total.visits,
                    total.students,
                    total.messages,
                )
        except Exception as exc:
            log_failure(log, "retention failed", exc=exc)
        return total

    def backup_due(self) -> bool:
        """True when backups are on and the newest is missing or more than a day old."""
        folder = self.jobs.settings.backup_dir
        if folder is None:
            return False
        newest = backups_in(folder)[-1:] if folder.is_dir() else []
        if not newest:
            return True
        age = self.clock.now().timestamp() - newest[0].stat().st_mtime
        return age > 24 * 3600

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
        scheduler.add_job(
            self.retention,
            CronTrigger(hour=RETENTION_AT[0], minute=RETENTION_AT[1], timezone=self.tz),
            id="retention",
            next_run_time=self.clock.now(),  # once at start-up too
            coalesce=True,
            max_instances=1,
            misfire_grace_time=3600,
        )
        if self.jobs.settings.backup_dir is not None:
            # (APScheduler reads an explicit next_run_time=None as "paused": only pass a time)
            first = {"next_run_time": self.clock.now()} if self.backup_due() else {}
            scheduler.add_job(
                self.backup,
                CronTrigger(hour=BACKUP_AT[0], minute=BACKUP_AT[1], timezone=self.tz),
                id="backup",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=3600,
                **first,
            )
        scheduler.start()
        self._scheduler = scheduler

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
