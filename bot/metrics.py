"""What an operator watches, in the Prometheus text format: `GET /metrics`.

Off (404) unless HOMEVISIT_METRICS_TOKEN is set; then the request needs `Authorization: Bearer
<token>` (compared in constant time), 401 without it. Each app keeps a registry of its own (not
prometheus-client's process-wide one), so nothing is counted at import time and every app or
test starts from zero. Labels are channels, outcomes, jobs, statuses and error reasons: never a
person, a user id or a message.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bot.core.errors import StorageUnavailable

# (status, channel, rows) of the outbox, and the age in seconds of its oldest due row
OutboxDepth = tuple[Iterable[tuple[str, str, int]], float | None]
# (job, status, chunks) of today's job runs
JobProgress = Iterable[tuple[str, str, int]]
TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# The classic text format every Prometheus understands (what generate_latest writes for these
# names; newer prometheus-client versions label it 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REASON = 80  # error reasons are short platform codes; a longer one is cut


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.messages = Counter(
            "homevisit_messages",
            "Chat messages handled, by channel and outcome",
            ["channel", "outcome"],
            registry=registry,
        )
        self.turn_seconds = Histogram(
            "homevisit_turn_seconds",
            "Time from a message's arrival to its replies (lock wait included)",
            ["channel"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.outbox = Gauge(
            "homevisit_outbox_messages",
            "Outbox rows waiting (pending) or given up (failed), by channel",
            ["status", "channel"],
            registry=registry,
        )
        self.outbox_oldest_due = Gauge(
            "homevisit_outbox_oldest_due_seconds",
            "How long the oldest due pending outbox row has been due (0: none)",
            registry=registry,
        )
        self.delivery_failures = Counter(
            "homevisit_delivery_failures",
            "Failed delivery attempts by channel and error (final: the row is given up for good)",
            ["channel", "error", "final"],
            registry=registry,
        )
        self.database_up = Gauge(
            "homevisit_database_up",
            "1 when the database answered the last scrape's outbox query, else 0",
            registry=registry,
        )
        self.job_chunks = Counter(
            "homevisit_job_chunks",
            "Chunks of job runs this instance finished, by job and outcome",
            ["job", "outcome"],
            registry=registry,
        )
        self.job_progress = Gauge(
            "homevisit_job_run_chunks",
            "Chunks of today's job runs (all instances) by status, read at each scrape",
            ["job", "status"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "homevisit_job_seconds",
            "Duration of scheduled jobs, by job and outcome",
            ["job", "outcome"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )

    def job_chunk(self, job: str, outcome: str) -> None:
        """A chunk of a job run finished here: done, retried, failed (for good) or lost (taken
        over by another instance after this one's lease expired)."""
        self.job_chunks.labels(job, outcome).inc()

    def turn(self, channel: str, outcome: str, started: float) -> None:
        """A message handled; `started` is its `perf_counter()` on arrival."""
        self.messages.labels(channel, outcome).inc()
        self.turn_seconds.labels(channel).observe(perf_counter() - started)

    def delivery_failed(self, channel: str, reason: str, *, final: bool) -> None:
        error = reason[:MAX_REASON]
        self.delivery_failures.labels(channel, error, "yes" if final else "no").inc()

    def job(self, job: str, outcome: str, started: float) -> None:
        self.job_seconds.labels(job, outcome).observe(perf_counter() - started)

    def set_outbox(self, depth: OutboxDepth) -> None:
        rows, oldest = depth
        self.outbox.clear()  # a channel with nothing left waiting shows no stale number
        for status, channel, count in rows:
            self.outbox.labels(status, channel).set(count)
        self.outbox_oldest_due.set(oldest or 0.0)

    def set_jobs(self, progress: JobProgress) -> None:
        self.job_progress.clear()
        for job, status, count in progress:
            self.job_progress.labels(job, status).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def install(
    app: web.Application,
    token: str,
    read_outbox: Callable[[], Awaitable[OutboxDepth]],
    read_jobs: Callable[[], Awaitable[JobProgress]] | None = None,
) -> None:
    """Serve `GET /metrics` behind the bearer `token`; the outbox (and today's job runs) are
    read at each scrape."""
    expected = f"Bearer {token}".encode()

    async def scrape(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
        metrics = app[METRICS]
        try:
            metrics.set_outbox(await read_outbox())
            if read_jobs is not None:
                metrics.set_jobs(await read_jobs())
        except StorageUnavailable:  # the rest is still worth a scrape; the outbox keeps its last
            metrics.database_up.set(0)
        else:
            metrics.database_up.set(1)
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", scrape)
