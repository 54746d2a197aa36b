"""The web layer's shared pieces: typed app keys, JSON responses, error middleware, health."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.deps import Deps
from bot.dispatcher import Dispatcher
from bot.jobs import Jobs
from bot.logsafe import log_failure
from bot.outbox import OutboxDelivery
from config.settings import Settings

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
DELIVERY = web.AppKey("delivery", OutboxDelivery)
JOBS = web.AppKey("jobs", Jobs)
SERVING = web.AppKey("serving", bool)  # False in one-shot CLI jobs: no background tasks

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with Chinese kept readable (no \\u escapes)."""
    return web.json_response(
        data, status=status, headers=headers, dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors become JSON with their status; anything unexpected is logged once, 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": exc.reason}, status=exc.status)
    except Exception as exc:
        log_failure(log, "unhandled error on %s %s", request.method, request.path, exc=exc)
        return json_response({"error": "internal error"}, status=500)


async def healthz(request: web.Request) -> web.Response:
    if await request.app[DEPS].db.ping():
        return json_response({"status": "ok"})
    return json_response({"status": "unavailable"}, status=503)
