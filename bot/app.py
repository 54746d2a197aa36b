"""The composition root: the only place that knows every concrete piece.

`bot.deps.build_deps(settings)` makes the shared resources; `create_app(settings, deps)` builds the
aiohttp application on them. Tests call the same two functions and swap only the edges (clock,
database URL, outbound base URLs). Nothing happens at import time.

Each chat platform is a module in `bot.channels` with an `install(app, settings, deps)` that adds
its routes and background tasks and returns its `Sender` for proactive messages (or None).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from bot import console, metrics
from bot.channels import api, dingtalk, feishu, wechat, wecom
from bot.channels.wecom import WECOM_API
from bot.core.channels import DINGTALK, FEISHU, WECHAT, WECOM
from bot.core.engine import Engine
from bot.core.ports import Clock, Sender, Turns
from bot.deps import Deps, cadence
from bot.dispatcher import Dispatcher
from bot.jobs import PERSON_CHANNELS, Jobs
from bot.metrics import METRICS, JobProgress, Metrics, OutboxDepth
from bot.outbox import OutboxDelivery
from bot.scheduler import JobScheduler
from bot.web import DELIVERY, DISPATCHER, SERVING, SETTINGS, error_middleware, json_response
from config.aid import load_aid_items
from config.calendar import SchoolCalendar
from config.forms import Form
from config.settings import Settings
from handlers.checkin import Alerts, CheckIn
from handlers.reminders import reach_order
from storage import chunks, outbox
from storage.aid import SqlAid
from storage.console import SqlConsole
from storage.distributions import SqlDistributions
from storage.export import Sensitive
from storage.reviews import SqlReviews
from storage.store import SqlTurns

MAX_BODY = 64 * 1024
DEPS = web.AppKey("deps", Deps)
JOBS = web.AppKey("jobs", Jobs)


def build_dispatcher(settings: Settings, deps: Deps, metrics: Metrics | None = None) -> Dispatcher:
    return conversation_over(
        SqlTurns(deps.db), settings, deps.form, deps.clock, deps.calendar, metrics
    )


def conversation_over(
    turns: Turns,
    settings: Settings,
    form: Form,
    clock: Clock,
    calendar: SchoolCalendar,
    metrics: Metrics | None = None,
) -> Dispatcher:
    """The check-in conversation on any store (tests run it on the memory store too)."""
    configured = {
        WECOM: settings.wecom is not None,
        DINGTALK: settings.dingtalk is not None,
        FEISHU: settings.feishu is not None,
        WECHAT: settings.wechat is not None,
    }
    alerts = Alerts(
        channels=tuple(c for c in PERSON_CHANNELS if configured.get(c)),
        quiet=lambda moment: settings.quiet_hours.release(moment, settings.tz),
        unreached_after=settings.unreached_alert_after,
    )
    conversation = CheckIn(
        form,
        settings.tz,
        cadence(settings, calendar),
        alerts,
        settings.public_url,
        load_aid_items(settings.aid_path, form.followup_kinds),
    )
    engine = Engine(conversation, clock, settings.session_ttl)
    return Dispatcher(turns, engine, metrics)


async def healthz(request: web.Request) -> web.Response:
    if await request.app[DEPS].db.ping():
        return json_response({"status": "ok"})
    return json_response({"status": "unavailable"}, status=503)


def install_console(
    app: web.Application, settings: Settings, deps: Deps, channels: list[str]
) -> None:
    """The coordinators' web console on the database, signing in through WeCom when it is on."""
    store = SqlConsole(
        deps.db,
        [(q.key, q.label) for q in deps.form.questions],
        deps.form.followup_kinds,
        settings.tz,
        Sensitive(deps.form.sensitive_keys, deps.form.public_detail),
    )
    wecom_user = app[WECOM_API].user_for_code if WECOM_API in app else None
    reachable = [c for c in channels if c != dingtalk.GROUP_CHANNEL]
    sub = console.build(
        settings,
        store,
        deps.form,
        cadence(settings, deps.calendar),
        deps.clock,
        reachable,
        wecom_user,
        SqlAid(
            deps.db,
            load_aid_items(settings.aid_path, deps.form.followup_kinds),
            reachable,
            lambda moment: settings.quiet_hours.release(moment, settings.tz),
        ),
        SqlDistributions(deps.db, settings.tz),
        SqlReviews(
            deps.db,
            settings.tz,
            lambda person: reach_order(person, reachable),
            lambda moment: settings.quiet_hours.release(moment, settings.tz),
        ),
    )
    console.install(app, sub)


def install_channels(app: web.Application, settings: Settings, deps: Deps) -> dict[str, Sender]:
    """Add every configured platform channel; return their senders by channel name."""
    senders: dict[str, Sender] = {}
    if settings.api_token is not None:
        app.router.add_post("/api/messages", api.handle)
    if settings.wecom is not None:
        senders["wecom"] = wecom.install(app, settings, deps)
    if settings.dingtalk is not None:
        senders[dingtalk.CHANNEL] = dingtalk.install(app, settings, deps)
    if settings.feishu is not None:
        senders[feishu.CHANNEL] = feishu.install(app, settings, deps)
    if settings.wechat is not None:
        senders[WECHAT] = wechat.install(app, settings, deps)
    if settings.dingtalk_digest_webhook is not None:
        senders[dingtalk.GROUP_CHANNEL] = dingtalk.install_digest(app, settings, deps)
    return senders


async def _deliver_outbox(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[DELIVERY].run_forever(), name="outbox-delivery")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def install_metrics(app: web.Application, settings: Settings, deps: Deps) -> None:
    """`GET /metrics` when HOMEVISIT_METRICS_TOKEN is set (the route does not exist otherwise)."""
    if settings.metrics_token is None:
        return

    async def read_outbox() -> OutboxDepth:
        now = deps.clock.now()
        return await deps.db.run(lambda conn: outbox.depth(conn, now), deadline=5)

    async def read_jobs() -> JobProgress:
        day = deps.clock.now().astimezone(settings.tz).date()
        return await deps.db.run(lambda conn: chunks.progress(conn, day), deadline=5)

    metrics.install(app, settings.metrics_token.value, read_outbox, read_jobs)


async def _run_scheduler(app: web.Application) -> AsyncIterator[None]:
    scheduler = JobScheduler(app[JOBS], app[DEPS].clock, app[METRICS])
    scheduler.start()
    catch_up = asyncio.create_task(scheduler.catch_up(), name="missed-jobs")
    yield
    scheduler.shutdown()
    catch_up.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await catch_up


def create_app(
    settings: Settings, deps: Deps, *, scheduler: bool = False, serving: bool = True
) -> web.Application:
    """The aiohttp application.

    `scheduler=True` (homevisit serve) also fires the timed jobs. `serving=False` (a one-shot CLI
    job) starts no background work: no outbox loop, no DingTalk Stream connection; the caller
    delivers with `app[DELIVERY].run_once()` and nothing is cancelled half-way.
    """
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
    app[SERVING] = serving
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[METRICS] = Metrics()
    app[DISPATCHER] = build_dispatcher(settings, deps, app[METRICS])
    app.router.add_get("/healthz", healthz)
    install_metrics(app, settings, deps)
    senders = install_channels(app, settings, deps)
    install_console(app, settings, deps, list(senders))
    app[DELIVERY] = OutboxDelivery(
        deps.outbox,
        senders,
        deps.clock,
        quiet=lambda moment: settings.quiet_hours.release(moment, settings.tz),
        metrics=app[METRICS],
        fallback_after=settings.fallback_after,
    )
    app[JOBS] = Jobs(settings, deps, list(senders), app[DELIVERY], app[METRICS])
    if serving:
        app.cleanup_ctx.append(_deliver_outbox)
    if scheduler:
        app.cleanup_ctx.append(_run_scheduler)
    return app
