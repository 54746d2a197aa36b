"""The composition root: the only place that knows every concrete piece.

`bot.deps.build_deps(settings)` makes the shared resources; `create_app(settings, deps)` builds the
aiohttp application on them. Tests call the same two functions and swap only the edges (clock,
database URL, outbound base URLs). Nothing happens at import time.
"""

from __future__ import annotations

from aiohttp import web

from bot.channels import api
from bot.core.engine import Engine
from bot.deps import Deps
from bot.dispatcher import Dispatcher
from bot.web import DEPS, DISPATCHER, SETTINGS, error_middleware, healthz
from config.settings import Settings
from handlers.checkin import CheckIn

MAX_BODY = 64 * 1024


def build_dispatcher(settings: Settings, deps: Deps) -> Dispatcher:
    conversation = CheckIn(deps.form, settings.tz, settings.visit_cycle_days)
    engine = Engine(conversation, deps.clock, settings.session_ttl)
    return Dispatcher(deps.db, engine)


def create_app(settings: Settings, deps: Deps) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[DISPATCHER] = build_dispatcher(settings, deps)
    app.router.add_get("/healthz", healthz)
    if settings.api_token is not None:
        app.router.add_post("/api/messages", api.handle)
    return app
