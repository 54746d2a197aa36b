"""The coordinators' web console: an edge like a chat channel.

`install(app, ...)` mounts it under /console as a sub-application with its own middleware
(security headers, HTML error pages), Jinja2 templates (autoescaped) and static CSS. It reads and
writes only through `bot.core.console_ports.ConsoleStore`; the composition root passes the
database's implementation in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bot.console import aid_views, distribution_views, review_views, views
from bot.console.auth import (
    CONFIG,
    LIMITER,
    PREFIX,
    AttemptLimiter,
    ConsoleConfig,
    console_middleware,
)
from bot.console.views import WIRING, Wiring
from bot.core.aid import AidStore
from bot.core.console_ports import ConsoleStore
from bot.core.distributions import DistributionStore
from bot.core.ports import Clock
from bot.core.reviews import ReviewStore
from config.forms import Form
from config.settings import Settings
from handlers.cadence import Cadence

HERE = Path(__file__).parent
UserForCode = Callable[[str], Awaitable[str | None]]


def _filters(env: jinja2.Environment) -> None:
    env.filters["local"] = lambda moment, tz, fmt="%Y-%m-%d %H:%M": (
        moment.astimezone(tz).strftime(fmt) if moment else ""
    )


def build(
    settings: Settings,
    store: ConsoleStore,
    form: Form,
    cadence: Cadence,
    clock: Clock,
    channels: Sequence[str],
    wecom_user: UserForCode | None = None,
    aid: AidStore | None = None,
    distributions: DistributionStore | None = None,
    reviews: ReviewStore | None = None,
) -> web.Application:
    console = web.Application(middlewares=[console_middleware])
    console[CONFIG] = ConsoleConfig(store, clock, settings.public_url.startswith("https://"))
    console[LIMITER] = AttemptLimiter(store)
    wecom = settings.wecom
    console[WIRING] = Wiring(
        form,
        cadence,
        settings.tz,
        tuple(channels),
        settings.public_url,
        wecom.corp_id if wecom else None,
        wecom.agent_id if wecom else None,
        wecom_user,
    )
    env = aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    _filters(env)
    r = console.router
    r.add_get("/", views.dashboard)
    r.add_get("/signin", views.signin_help)
    r.add_get("/login", views.login)
    r.add_get("/signin/wecom", views.wecom_start)
    r.add_get("/signin/wecom/callback", views.wecom_callback)
    r.add_post("/logout", views.logout)
    r.add_get("/students", views.student_list)
    r.add_get("/students/{id}", views.student_page)
    r.add_post("/students/{id}/data", views.student_data)
    r.add_post("/students/{id}/erase", views.student_erase)
    r.add_get("/followups", views.followup_list)
    r.add_get("/roster", views.roster_form)
    r.add_post("/roster", views.roster_post)
    r.add_get("/export", views.export)
    r.add_post("/export", views.export)
    r.add_get("/audit", views.audit)
    if aid is not None:
        console[aid_views.AID] = aid
        r.add_get("/screen", aid_views.screen_form)
        r.add_post("/screen", aid_views.screen_post)
        r.add_get("/aid", aid_views.aid_page)
        r.add_post("/aid", aid_views.aid_post)
        r.add_post("/aid/allocate", aid_views.allocate_post)
        r.add_post("/aid/deliver", aid_views.deliver_post)
    if distributions is not None:
        console[distribution_views.DISTRIBUTIONS] = distributions
        r.add_get("/distributions", distribution_views.distribution_list)
        r.add_post("/distributions", distribution_views.distribution_create)
        r.add_get("/distributions/{id}", distribution_views.distribution_page)
        r.add_post("/distributions/{id}/deliver", distribution_views.distribution_deliver)
        r.add_get("/distributions/{id}/ledger.xlsx", distribution_views.distribution_ledger)
    if reviews is not None:
        console[review_views.REVIEWS] = reviews
        r.add_get("/reviews", review_views.review_list)
        r.add_post("/reviews/{id}", review_views.review_decide)
        r.add_get("/reviews/aid-list.csv", review_views.aid_list)
    r.add_static("/static/", HERE / "static", append_version=False)
    return console


def install(app: web.Application, console: web.Application) -> None:
    """Mount the console at /console (and send /console to /console/)."""

    async def to_slash(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(f"{PREFIX}/")

    app.router.add_get(PREFIX, to_slash)
    app.add_subapp(PREFIX, console)
