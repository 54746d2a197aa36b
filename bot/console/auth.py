"""Who is signed in: session cookies, CSRF, sign-in rate limits, security headers, error pages.

The session cookie holds a random id; the database keeps only its hash (`ConsoleStore`), with the
role and school at sign-in, so a deactivated or re-roled staff member is signed out at their next
request. Every POST carries the session's CSRF token (form field or header). Console responses
are never cached and may not be framed, and their CSP allows no script at all.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from bot.core.console_ports import ConsoleStore, NewSession, Principal, SessionPolicy
from bot.core.errors import StorageUnavailable
from bot.core.ports import Clock
from bot.core.signin import new_secret, secret_hash
from bot.logsafe import log_failure

log = logging.getLogger(__name__)

COOKIE = "hv_console"
STATE_COOKIE = "hv_oauth_state"
PREFIX = "/console"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
PRINCIPAL = web.RequestKey("console_principal", Principal)  # the signed-in user

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    store: ConsoleStore
    clock: Clock
    secure_cookies: bool
    policy: SessionPolicy = field(default_factory=SessionPolicy)


CONFIG = web.AppKey("console_config", ConsoleConfig)


@dataclass(frozen=True, slots=True)
class AttemptLimiter:
    """At most `limit` sign-in attempts per client address within `window`, counted in the
    database so that every instance behind a load balancer shares the count (a proxy in front
    must pass the client address through). Addresses are kept only as hashes."""

    store: ConsoleStore
    limit: int = 10
    window: timedelta = timedelta(minutes=5)

    async def allow(self, address: str, now: datetime) -> bool:
        return await self.store.signin_attempt(secret_hash(address), now, self.limit, self.window)


LIMITER = web.AppKey("console_limiter", AttemptLimiter)


def page(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    context = {"me": request.get(PRINCIPAL), "request": request, **context}
    return aiohttp_jinja2.render_template(template, request, context, status=status)


def secured(response: web.StreamResponse, path: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if path.startswith(f"{PREFIX}/static/"):
        response.headers["Cache-Control"] = "public, max-age=3600"


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every console response; errors as HTML pages, never a trace."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects
            secured(exc, request.path)
            raise
        response = page(request, "error.html", {"status": exc.status}, status=exc.status)
    except StorageUnavailable:
        response = page(request, "error.html", {"status": 503}, status=503)
    except Exception as exc:
        log_failure(log, "unhandled console error on %s %s", request.method, request.path, exc=exc)
        response = page(request, "error.html", {"status": 500}, status=500)
    secured(response, request.path)
    return response


def set_session_cookie(response: web.StreamResponse, config: ConsoleConfig, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        path=PREFIX,
        max_age=config.policy.absolute_seconds,
        httponly=True,
        samesite="Lax",
        secure=config.secure_cookies,
    )


def new_session(method: str) -> tuple[str, NewSession]:
    """A session id for the cookie, and what the database keeps of it."""
    raw = new_secret()
    return raw, NewSession(secret_hash(raw), new_secret(), method)


async def current(request: web.Request) -> Principal | None:
    raw = request.cookies.get(COOKIE, "")
    if not raw or len(raw) > 100:
        return None
    config = request.config_dict[CONFIG]
    return await config.store.load_session(secret_hash(raw), config.clock.now(), config.policy)


def signed_in(handler: Handler) -> Handler:
    """Only with a session: otherwise a redirect to the sign-in help page, showing nothing."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        principal = await current(request)
        if principal is None:
            raise web.HTTPSeeOther(f"{PREFIX}/signin")
        request[PRINCIPAL] = principal
        return await handler(request)

    return wrapped


def check_csrf(request: web.Request, submitted: str | None) -> None:
    """403 unless the form field (or the X-CSRF-Token header) is the session's token."""
    principal: Principal = request[PRINCIPAL]
    given = submitted or request.headers.get("X-CSRF-Token", "")
    if not given or not hmac.compare_digest(given.encode(), principal.csrf_token.encode()):
        raise web.HTTPForbidden(reason="csrf")
