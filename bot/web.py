"""The web layer's shared pieces: typed app keys, JSON responses, the error middleware.

Channels import this module, so it knows only ports and settings: the keys of the composition
root's own pieces (the `Deps`, the jobs) live in `bot.app`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.core.ports import Conversations
from bot.logsafe import log_failure
from bot.outbox import OutboxDelivery
from config.settings import Settings

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DISPATCHER = web.AppKey[Conversations]("dispatcher")
DELIVERY = web.AppKey("delivery", OutboxDelivery)
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
