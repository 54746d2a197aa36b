"""Issue 18 item 4: `GET /metrics` on a real aiohttp server (loopback), built by the real factory.

Off (404) without HOMEVISIT_METRICS_TOKEN; with it, bearer-protected. What it counts: messages by
channel and outcome, turn latency, outbox rows by status and channel, delivery failures by error,
job durations; never a user id or a name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import BaseTestServer, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.app import JOBS, create_app
from bot.core.errors import ConfigError
from bot.core.types import OutboxMessage
from bot.deps import Deps
from bot.metrics import METRICS
from bot.scheduler import JobScheduler
from bot.web import DELIVERY
from config.settings import Secret, Settings, load_settings
from storage import outbox
from storage.db import Database
from tests.conftest import FakeClock

METRICS_TOKEN = "m" * 32
API = {"Authorization": f"Bearer {'t' * 32}"}
SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
def metered(settings: Settings) -> Settings:
    return replace(settings, metrics_token=Secret(METRICS_TOKEN))


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(http: ClientSession, server: BaseTestServer) -> str:
    async with http.get(server.make_url("/metrics"), headers=SCRAPE) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await r.text()


async def test_metrics_are_off_without_a_token(
    settings: Settings, deps: Deps, http: ClientSession
) -> None:
    async with (
        TestServer(create_app(settings, deps), host="127.0.0.1") as server,
        http.get(server.make_url("/metrics"), headers=SCRAPE) as r,
    ):
        assert r.status == 404


async def test_metrics_need_the_bearer_token(
    metered: Settings, deps: Deps, http: ClientSession
) -> None:
    async with TestServer(create_app(metered, deps), host="127.0.0.1") as server:
        for headers in (
            {},
            {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}x"},
            {"Authorization": METRICS_TOKEN},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
        ):
            async with http.get(server.make_url("/metrics"), headers=headers) as r:
                assert r.status == 401
                assert "homevisit_" not in await r.text()
        assert "homevisit_messages_total" in await scrape(http, server)


async def test_messages_and_turn_latency_by_channel_and_outcome_without_users(
    metered: Settings, deps: Deps, http: ClientSession
) -> None:
    async with TestServer(create_app(metered, deps), host="127.0.0.1") as server:
        url = server.make_url("/api/messages")
        for body in (
            {"user": "T001", "text": "家访"},
            {"user": "T001", "text": "周小禾", "message_id": "m-1"},
            {"user": "T001", "text": "周小禾", "message_id": "m-1"},  # a platform's retry
        ):
            async with http.post(url, json=body, headers=API) as r:
                assert r.status == 200
        text = await scrape(http, server)
    got = samples(text)
    assert got[("homevisit_messages_total", (("channel", "api"), ("outcome", "answered")))] == 2
    assert got[("homevisit_messages_total", (("channel", "api"), ("outcome", "duplicate")))] == 1
    assert got[("homevisit_turn_seconds_count", (("channel", "api"),))] == 3
    assert got[("homevisit_turn_seconds_bucket", (("channel", "api"), ("le", "+Inf")))] == 3
    assert got[("homevisit_database_up", ())] == 1
    for private in ("T001", "周小禾", "m-1"):
        assert private not in text


async def test_outbox_depth_delivery_failures_and_job_durations(
    metered: Settings, deps: Deps, clock: FakeClock, http: ClientSession
) -> None:
    now = clock.now()
    due = [
        OutboxMessage(f"r-{n}", "wecom", f"wecom-user-{n}", "reminder", "提醒") for n in range(3)
    ]
    later = [OutboxMessage("d-1", "dingtalk", "ding-user-1", "digest", "日报")]
    with deps.db.begin() as conn:
        outbox.enqueue_many(conn, due, not_before=now - timedelta(minutes=5), now=now)
        outbox.enqueue_many(conn, later, not_before=now + timedelta(hours=1), now=now)
    app = create_app(metered, deps, serving=False)
    async with TestServer(app, host="127.0.0.1") as server:
        got = samples(await scrape(http, server))
        gauge = "homevisit_outbox_messages"
        pending = (gauge, (("channel", "wecom"), ("status", "pending")))
        pending_ding = (gauge, (("channel", "dingtalk"), ("status", "pending")))
        assert got[pending] == 3
        assert got[pending_ding] == 1
        assert got[("homevisit_outbox_oldest_due_seconds", ())] == pytest.approx(300, abs=1)

        # Neither channel is configured here: each due row fails for good, once.
        assert await app[DELIVERY].run_once() == 3
        await JobScheduler(app[JOBS], clock, app[METRICS]).run_job("remind")
        text = await scrape(http, server)
    got = samples(text)
    failed = (gauge, (("channel", "wecom"), ("status", "failed")))
    assert got[failed] == 3
    assert pending not in got
    assert got[pending_ding] == 1
    assert got[("homevisit_outbox_oldest_due_seconds", ())] == 0
    error = "channel 'wecom' is not configured"
    key = (("channel", "wecom"), ("error", error), ("final", "yes"))
    assert got[("homevisit_delivery_failures_total", key)] == 3
    assert got[("homevisit_job_seconds_count", (("job", "remind"), ("outcome", "done")))] == 1
    # the run's chunks (one school: one chunk and the last step), here and for all instances
    done = (("job", "remind"), ("outcome", "done"))
    assert got[("homevisit_job_chunks_total", done)] == 2
    assert got[("homevisit_job_run_chunks", (("job", "remind"), ("status", "done")))] == 1
    assert "wecom-user" not in text and "ding-user" not in text


async def test_a_scrape_while_the_database_is_down_still_answers(
    metered: Settings, deps: Deps, http: ClientSession
) -> None:
    dead = Database("postgresql://root@127.0.0.1:1/test")  # nothing listens on port 1
    try:
        app = create_app(metered, replace(deps, db=dead))
        async with TestServer(app, host="127.0.0.1") as server:
            got = samples(await scrape(http, server))
        assert got[("homevisit_database_up", ())] == 0
    finally:
        dead.close()


def test_metrics_token_and_log_format_settings() -> None:
    settings = load_settings({"HOMEVISIT_METRICS_TOKEN": METRICS_TOKEN}, env_file=None)
    assert settings.metrics_token == Secret(METRICS_TOKEN)
    assert METRICS_TOKEN not in repr(settings)
    assert load_settings({}, env_file=None).metrics_token is None
    with pytest.raises(ConfigError) as bad:
        load_settings(
            {"HOMEVISIT_METRICS_TOKEN": "short", "HOMEVISIT_LOG_FORMAT": "xml"}, env_file=None
        )
    assert bad.value.problems == [
        "HOMEVISIT_LOG_FORMAT: must be one of text, json, got 'xml'",
        "HOMEVISIT_METRICS_TOKEN: must be at least 16 characters",
    ]
