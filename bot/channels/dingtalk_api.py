"""DingTalk's outbound HTTP APIs: access token, robot 1:1 send, sessionWebhook reply, group robot.

Every URL comes from settings (`DINGTALK_API_BASE`, `DINGTALK_OAPI_BASE`, the digest webhook), so
tests point them all at a local fake. Failures become `SendError`: transient (network, 5xx,
throttling) are retried by the outbox with backoff, permanent (unknown user, robot or parameter)
are recorded once. A success status whose body is not the answer the API documents (not JSON, not
an object, a missing `processQueryKey` or `errcode`) is not taken as delivered: it is transient,
retried, and logged once. Log lines name the API and the error code, never the message text,
a user id or a token.

None of these APIs takes an idempotency key, so a send whose outcome is unknown (a timeout or a
dropped connection after the request went out, an unreadable answer) is retried and may then
arrive twice: at least once, never silently lost. Its reason says "outcome unknown". A send that
never reached DingTalk (connection refused) or that DingTalk refused is not doubled.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from yarl import URL

from bot import jsonbody
from bot.core.errors import SendError
from bot.core.ports import Clock
from config.settings import Secret

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_USERS_PER_CALL = 20  # batchSend's limit on userIds
TOKEN_MARGIN = timedelta(minutes=5)  # refresh this long before DingTalk says the token expires
THROTTLED_RETRY = 60.0  # seconds, when a platform throttles without saying for how long
GROUP_LIMIT = 20  # a custom group robot takes at most 20 messages a minute
GROUP_WINDOW = timedelta(minutes=1)
SEND_TOO_FAST = 130101  # group robot errcode: "send too fast, exceed 20 times per minute"
GROUP_TRANSIENT = {SEND_TOO_FAST, -1}  # -1: "system busy"


def sign(secret: str, timestamp: str | int) -> str:
    """base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")), DingTalk's one signature.

    The robot callback sends it raw in the `sign` header; the group robot webhook wants it
    URL-encoded in the query (`quote_plus`).
    """
    msg = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Http:
    """One aiohttp ClientSession, opened on first use (inside the loop), closed by `close`."""

    def __init__(self, timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True, slots=True)
class ApiReply:
    status: int
    data: Any  # the decoded JSON body, or None when there was none or it was not JSON
    retry_after: float | None  # from a Retry-After header

    @property
    def obj(self) -> dict[str, Any] | None:
        """The body when it is a JSON object, else None."""
        return self.data if isinstance(self.data, dict) else None

    @property
    def code(self) -> str:
        """The new API's error code (`{"code": "...", "message": "..."}`), or ''."""
        value = self.data.get("code") if isinstance(self.data, dict) else None
        return value if isinstance(value, str) else ""

    @property
    def errcode(self) -> int | None:
        """The old API's `errcode` (oapi and webhooks), or None."""
        value = self.data.get("errcode") if isinstance(self.data, dict) else None
        return value if isinstance(value, int) else None


async def post_json(
    http: Http, url: str | URL, body: Any, headers: Mapping[str, str] | None = None
) -> ApiReply:
    """POST JSON; a network failure or timeout is a transient SendError."""
    try:
        async with http.session().post(url, json=body, headers=headers) as r:
            raw = await r.read()
            status, retry_after = r.status, _seconds(r.headers.get("Retry-After"))
    except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
        raise SendError(f"network: {type(exc).__name__}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:  # it may have arrived all the same
        raise SendError(f"network: {type(exc).__name__}, outcome unknown") from exc
    try:
        data = jsonbody.loads(raw) if raw else None
    except jsonbody.BadJSON:
        data = None
    return ApiReply(status, data, retry_after)


def unexpected_answer(api: str, reply: ApiReply) -> SendError:
    """A success status with a body that is not the documented answer: transient, logged.

    Nothing says the message arrived, so it is not recorded as sent; a retry may deliver it a
    second time when it did (at least once, never silently lost).
    """
    shape = "no JSON object" if reply.obj is None else "unexpected fields"
    log.warning("dingtalk %s: HTTP %s with %s in the answer; will retry", api, reply.status, shape)
    return SendError(f"{api}: unexpected answer (HTTP {reply.status}, {shape}), outcome unknown")


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:
        return None


class AccessToken:
    """The app's access token, cached until shortly before it expires; one fetch at a time."""

    def __init__(
        self, http: Http, api_base: str, app_key: str, app_secret: Secret, clock: Clock
    ) -> None:
        self.http = http
        self.url = f"{api_base}/v1.0/oauth2/accessToken"
        self.app_key = app_key
        self.app_secret = app_secret
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
        """DingTalk rejected `token`: the next `get` fetches a new one."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> tuple[str, datetime]:
        body = {"appKey": self.app_key, "appSecret": self.app_secret.value}
        reply = await post_json(self.http, self.url, body)
        data = reply.obj or {}
        token, expire_in = data.get("accessToken"), data.get("expireIn")
        if reply.status == 200 and not (
            isinstance(token, str) and token and _positive_int(expire_in)
        ):
            raise unexpected_answer("access token", reply)
        if reply.status != 200:
            # A wrong key or secret is an operator's mistake that gets fixed: keep the messages
            # queued (transient) rather than dropping them.
            log.warning("dingtalk access token refused: HTTP %s %r", reply.status, reply.code)
            raise SendError(f"access token: HTTP {reply.status} {reply.code}".strip())
        assert isinstance(token, str) and isinstance(expire_in, int)
        margin = min(TOKEN_MARGIN, timedelta(seconds=expire_in / 2))
        return token, self.clock.now() + timedelta(seconds=expire_in) - margin


@dataclass(frozen=True, slots=True)
class BatchResult:
    invalid: tuple[str, ...] = ()  # users DingTalk does not know (or who cannot see the app)
    throttled: tuple[str, ...] = ()  # users DingTalk throttled this time


def _is_throttling(reply: ApiReply) -> bool:
    code = reply.code.lower()
    return reply.status == 429 or any(
        word in code for word in ("throttl", "qpslimit", "flowcontrol", "ratelimit")
    )


def _token_rejected(reply: ApiReply) -> bool:
    return reply.status == 401 or reply.code.lower() in {
        "invalidauthentication",
        "invalidaccesstoken",
    }


class RobotSender:
    """The `Sender` for channel "dingtalk": the app robot's 1:1 `oToMessages/batchSend`."""

    def __init__(self, http: Http, token: AccessToken, api_base: str, robot_code: str) -> None:
        self.http = http
        self.token = token
        self.url = f"{api_base}/v1.0/robot/oToMessages/batchSend"
        self.robot_code = robot_code

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        result = await self.send_text([recipient], text)
        if result.invalid:
            raise SendError("batchSend: unknown user or app not visible to them", permanent=True)
        if result.throttled:
            raise SendError("batchSend: user flow-controlled", retry_after=THROTTLED_RETRY)

    async def send_text(self, user_ids: Sequence[str], text: str) -> BatchResult:
        return await self._batch(user_ids, "sampleText", {"content": text})

    async def send_markdown(self, user_ids: Sequence[str], title: str, text: str) -> BatchResult:
        return await self._batch(user_ids, "sampleMarkdown", {"title": title, "text": text})

    async def _batch(
        self, user_ids: Sequence[str], msg_key: str, param: dict[str, str]
    ) -> BatchResult:
        """Send to every user, at most 20 a call; a failing call raises for the whole batch."""
        invalid: list[str] = []
        throttled: list[str] = []
        for start in range(0, len(user_ids), MAX_USERS_PER_CALL):
            chunk = list(user_ids[start : start + MAX_USERS_PER_CALL])
            result = await self._call(chunk, msg_key, json.dumps(param, ensure_ascii=False))
            invalid += result.invalid
            throttled += result.throttled
        return BatchResult(tuple(invalid), tuple(throttled))

    async def _call(self, user_ids: list[str], msg_key: str, msg_param: str) -> BatchResult:
        body = {
            "robotCode": self.robot_code,
            "userIds": user_ids,
            "msgKey": msg_key,
            "msgParam": msg_param,
        }
        for attempt in (1, 2):
            token = await self.token.get()
            reply = await post_json(
                self.http, self.url, body, {"x-acs-dingtalk-access-token": token}
            )
            if _token_rejected(reply) and attempt == 1:
                self.token.invalidate(token)  # expired early or revoked: fetch a new one, once
                continue
            break
        _raise_for(reply, "batchSend")
        data = reply.obj
        if data is None or not _batch_answer(data):
            raise unexpected_answer("batchSend", reply)
        return BatchResult(
            _ids(data.get("invalidStaffIdList")), _ids(data.get("flowControlledStaffIdList"))
        )


def _batch_answer(data: dict[str, Any]) -> bool:
    """Is this batchSend's documented answer: a `processQueryKey`, and lists where lists go?

    An answer with no `processQueryKey` still counts when it names users DingTalk refused (it
    has no query key to give when it sent nothing).
    """
    lists = [data.get(k) for k in ("invalidStaffIdList", "flowControlledStaffIdList")]
    if any(v is not None and not isinstance(v, list) for v in lists):
        return False
    key = data.get("processQueryKey")
    return (isinstance(key, str) and bool(key)) or any(lists)


def _ids(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


SETUP_ERRORS = frozenset(
    {"Forbidden.AccessDenied.AccessTokenPermissionDenied", "invalidParameter.robotCode"}
)
SETUP_RETRY = 600.0


def _raise_for(reply: ApiReply, api: str) -> None:
    """Map a new-style API answer onto SendError; return quietly on success."""
    if reply.status == 200:
        return
    reason = f"{api}: HTTP {reply.status} {reply.code}".strip()
    if _is_throttling(reply):
        raise SendError(reason, retry_after=reply.retry_after or THROTTLED_RETRY)
    if reply.status >= 500 or _token_rejected(reply):
        raise SendError(reason)
    if reply.code in SETUP_ERRORS:
        # The app lacks a permission or the robot code is wrong: an admin fixes it in the
        # console. Keep the messages queued (and say so in the log) instead of dropping them.
        log.warning(
            "dingtalk %s refused: %r; fix the app set-up, messages stay queued", api, reply.code
        )
        raise SendError(reason, retry_after=SETUP_RETRY)
    raise SendError(reason, permanent=True)  # 400/403/404: a bad user or request


async def reply_by_session(http: Http, webhook: str, text: str) -> None:
    """Answer in the conversation a message came from, through its `sessionWebhook`."""
    body = {"msgtype": "text", "text": {"content": text}}
    reply = await post_json(http, URL(webhook, encoded=True), body)
    if reply.status == 200 and reply.errcode is None:
        raise unexpected_answer("sessionWebhook", reply)
    if reply.status != 200 or reply.errcode != 0:
        raise SendError(f"sessionWebhook: HTTP {reply.status} errcode {reply.errcode}")


@dataclass
class RateWindow:
    """At most `limit` sends in any `window`; a throttled robot is also blocked for a while."""

    limit: int = GROUP_LIMIT
    window: timedelta = GROUP_WINDOW
    _sent: deque[datetime] = field(default_factory=deque)
    _blocked_until: datetime | None = None

    def reserve(self, now: datetime) -> float:
        """0 when a send may go now (and it is counted), else the seconds to wait."""
        if self._blocked_until is not None and now < self._blocked_until:
            return (self._blocked_until - now).total_seconds()
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) >= self.limit:
            return max((self._sent[0] + self.window - now).total_seconds(), 1.0)
        self._sent.append(now)
        return 0.0

    def block(self, until: datetime) -> None:
        self._blocked_until = until


class GroupRobotSender:
    """The `Sender` for channel "dingtalk_group": a custom group robot's signed webhook.

    The recipient is ignored (one digest webhook is configured; the outbox uses "default").
    The 20-a-minute limit is kept here, so the outbox holds the rest back instead of DingTalk
    throttling the robot; a `130101` from DingTalk (another process sent too) backs off a minute.
    """

    def __init__(self, http: Http, webhook: Secret, secret: Secret | None, clock: Clock) -> None:
        self.http = http
        self.webhook = webhook
        self.secret = secret
        self.clock = clock
        self.window = RateWindow()

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        now = self.clock.now()
        wait = self.window.reserve(now)
        if wait:
            raise SendError("group robot: 20 messages a minute", retry_after=wait)
        body = {"msgtype": "text", "text": {"content": text}}
        reply = await post_json(self.http, self.signed_url(now), body)
        errcode = reply.errcode
        if reply.status == 200 and errcode == 0:
            return
        if reply.status == 200 and errcode is None:
            raise unexpected_answer("group robot", reply)
        reason = f"group robot: HTTP {reply.status} errcode {errcode}"
        if errcode == SEND_TOO_FAST:
            self.window.block(now + timedelta(seconds=THROTTLED_RETRY))
            raise SendError(reason, retry_after=THROTTLED_RETRY)
        if reply.status >= 500 or errcode in GROUP_TRANSIENT:
            raise SendError(reason)
        raise SendError(reason, permanent=True)  # bad token, sign, keyword or IP whitelist

    def signed_url(self, now: datetime) -> URL:
        """The webhook with `&timestamp=..&sign=..` when a signing secret is set."""
        url = self.webhook.value
        if self.secret is not None:
            ts = epoch_ms(now)
            joiner = "&" if "?" in url else "?"
            url += f"{joiner}timestamp={ts}&sign={quote_plus(sign(self.secret.value, ts))}"
        return URL(url, encoded=True)
