"""The generic JSON channel: `POST /api/messages` with `Authorization: Bearer $API_TOKEN`.

Body `{"user": STAFF_NO, "text": "...", "message_id": "optional, for safe retries"}`,
answer `{"replies": ["...", ...]}`.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from aiohttp import web

from bot import jsonbody
from bot.core.types import InboundMessage
from bot.web import DISPATCHER, SETTINGS, json_response

CHANNEL = "api"
MAX_ID = 128
# Ids reach log lines (the dispatcher's) and PostgreSQL, which refuses NUL: no control characters.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


async def handle(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].api_token
    assert token is not None  # the route exists only when the token is set
    if not _authorized(request.headers.get("Authorization", ""), token.value):
        return json_response(
            {"error": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        body: Any = jsonbody.loads(await request.read())
    except jsonbody.BadJSON as exc:
        return json_response({"error": f"body is {exc}"}, status=400)
    problem = _validate(body)
    if problem:
        return json_response({"error": problem}, status=400)
    message = InboundMessage(
        CHANNEL, body["user"].strip(), body["text"], message_id=body.get("message_id")
    )
    replies = await request.app[DISPATCHER].handle(message)
    return json_response({"replies": replies})


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    # compare_digest over bytes: constant time, and safe for non-ASCII input
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    user, text, mid = body.get("user"), body.get("text"), body.get("message_id")
    staff = user.strip() if isinstance(user, str) else ""  # surrounding space is trimmed
    if not staff or len(staff) > MAX_ID or _CONTROL.search(staff):
        return '"user" must be a staff number (text)'
    if not isinstance(text, str):
        return '"text" must be text'
    if mid is not None and (
        not isinstance(mid, str) or not mid or len(mid) > MAX_ID or _CONTROL.search(mid)
    ):
        return '"message_id" must be text of at most 128 characters, no control characters'
    return None
