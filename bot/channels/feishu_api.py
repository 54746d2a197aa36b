"""Feishu's outbound API: the tenant_access_token and `im/v1/messages` (PROTOCOLS.md 4.3).

Every URL starts at `FEISHU_API_BASE`, so tests point it at a local fake. `FeishuSender` is the
`Sender` of channel "feishu" and also a `KeyedSender`: the outbox hands it each row's key, and the
message goes out with ``uuid`` = a digest of that key, so Feishu itself drops a resend of one row
(after a timeout whose outcome was unknown, or a crash between "sent" and "recorded as sent")
instead of showing it twice. Feishu documents the uuid as effective for about an hour.

Failures become `SendError` (the reason holds the HTTP status and Feishu's code, never the text
or an open_id): a token Feishu rejects is fetched anew and the send retried once; throttling,
5xx, network trouble and answers that are not the documented shape are transient; permissions
missing from the app are a set-up problem (transient, retried every ten minutes, logged); a user
the bot cannot reach (230013: outside the app's availability) and bad requests are permanent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.channels.dingtalk_api import ApiReply, Http, post_json
from bot.core.errors import SendError
from bot.core.ports import Clock
from config.settings import Secret

log = logging.getLogger(__name__)

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
SEND_PATH = "/open-apis/im/v1/messages"
TOKEN_MARGIN = timedelta(minutes=10)  # lark-oapi's margin too
THROTTLED_RETRY = 60.0
SETUP_RETRY = 600.0
TEXT_LIMIT = 30_000  # characters per message; Feishu takes 150 KB of text request body

TOKEN_ERRORS = frozenset({99991661, 99991663, 99991664, 99991665, 99991668})
THROTTLE_ERRORS = frozenset({99991400, 230020})
SETUP_ERRORS = frozenset({99991672, 99991679, 230006, 10003, 10014})
BOT_NOT_AVAILABLE = 230013  # the user is outside the app's availability range


def message_uuid(key: str) -> str:
    """Feishu's idempotency `uuid` (at most 50 characters) for an outbox key."""
    return hashlib.sha256(b"homevisit feishu\0" + key.encode("utf-8")).hexdigest()[:40]


def _code(reply: ApiReply) -> int | None:
    value = reply.obj.get("code") if reply.obj is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class TenantToken:
    """The app's tenant_access_token, cached until `TOKEN_MARGIN` before it expires."""

    def __init__(self, http: Http, api_base: str, app_id: str, secret: Secret, clock: Clock):
        self.http = http
        self.url = api_base + TOKEN_PATH
        self.app_id = app_id
        self.secret = secret
        self.clock = clock
        self._token: str | None = None
        self._good_until = datetime.min.replace(tzinfo=UTC)
        self._lock = asyncio.Lock()  # one fetch at a time; others wait and reuse it

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or self.clock.now() >= self._good_until:
                self._token, self._good_until = await self._fetch()
            return self._token

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _fetch(self) -> tuple[str, datetime]:
        body = {"app_id": self.app_id, "app_secret": self.secret.value}
        reply = await post_json(self.http, self.url, body)
        data = reply.obj or {}
        token, expire = data.get("tenant_access_token"), data.get("expire")
        code = _code(reply)
        if reply.status == 200 and code == 0:
            if isinstance(token, str) and token and isinstance(expire, int) and expire > 0:
                margin = min(TOKEN_MARGIN, timedelta(seconds=expire / 2))
                return token, self.clock.now() + timedelta(seconds=expire) - margin
            log.warning("feishu tenant token: HTTP 200 with an unexpected answer; will retry")
            raise SendError("tenant token: unexpected answer")
        # A wrong app id or secret is fixed by an operator: keep messages queued meanwhile.
        log.warning("feishu tenant token refused: HTTP %s code %s", reply.status, code)
        raise SendError(f"tenant token: HTTP {reply.status} code {code}", retry_after=SETUP_RETRY)


class FeishuSender:
    """The `Sender` (and `KeyedSender`) of channel "feishu": a text to one open_id."""

    def __init__(self, http: Http, token: TenantToken, api_base: str) -> None:
        self.http = http
        self.token = token
        self.url = api_base + SEND_PATH + "?receive_id_type=open_id"

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        """Without an outbox key, so without a uuid: a resend may then show twice."""
        await self._send(None, recipient, text)

    async def send_keyed(
        self, key: str, recipient: str, text: str, *, proactive: bool = True
    ) -> None:
        await self._send(key, recipient, text)

    async def _send(self, key: str | None, recipient: str, text: str) -> None:
        body = {
            "receive_id": recipient,
            "msg_type": "text",
            "content": json.dumps({"text": text[:TEXT_LIMIT]}, ensure_ascii=False),
        }
        if key is not None:
            body["uuid"] = message_uuid(key)
        for attempt in (1, 2):
            token = await self.token.get()
            reply = await post_json(self.http, self.url, body, {"Authorization": f"Bearer {token}"})
            if _code(reply) in TOKEN_ERRORS and attempt == 1:
                self.token.invalidate(token)  # expired early or revoked: a new one, once
                continue
            break
        _raise_for(reply)


def _sent(reply: ApiReply) -> bool:
    data: Any = reply.obj.get("data") if reply.obj is not None else None
    return isinstance(data, dict) and isinstance(data.get("message_id"), str)


def _raise_for(reply: ApiReply) -> None:
    code = _code(reply)
    if reply.status == 200 and code == 0:
        if _sent(reply):
            return
        log.warning("feishu im/v1/messages: HTTP 200 without a message_id; will retry")
        raise SendError("im/v1/messages: unexpected answer, outcome unknown")
    reason = f"im/v1/messages: HTTP {reply.status} code {code}"
    if reply.status == 429 or code in THROTTLE_ERRORS:
        raise SendError(reason, retry_after=reply.retry_after or THROTTLED_RETRY)
    if reply.status >= 500 or code is None or code in TOKEN_ERRORS:
        raise SendError(reason)
    if code in SETUP_ERRORS:
        log.warning("feishu im/v1/messages refused: code %s; fix the app set-up, messages stay "
                    "queued", code)  # fmt: skip
        raise SendError(reason, retry_after=SETUP_RETRY)
    raise SendError(reason, permanent=True)  # 230013 bot not available, bad id, bad request
