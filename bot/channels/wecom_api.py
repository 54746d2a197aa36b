"""WeCom (企业微信) server API: the access token, ``message/send`` and the per-member limits.

`WeComClient` is the channel's `Sender`: the outbox hands it one text for one member and it either
delivers it or raises `SendError`. Everything goes through ``WECOM_API_BASE``
(developer.work.weixin.qq.com/document/path/91039 gettoken, /90236 message/send):

- ``GET /cgi-bin/gettoken?corpid=&corpsecret=`` -> ``access_token``, cached until `TOKEN_MARGIN`
  before its ``expires_in``; one fetch at a time. Errcode 40014/42001/42009 on a send drops the
  cached token, fetches a new one and retries that send once at once.
- ``POST /cgi-bin/message/send?access_token=`` with ``enable_duplicate_check`` for proactive
  messages (reminders, digests: one per member and day): WeCom drops an identical message within
  `DUPLICATE_CHECK_SECONDS`, so a resend after a crash between "sent" and "recorded as sent" is
  not shown twice. Replies go without it: the same reply twice can be legitimate.
- Text is limited to 2,048 bytes and markdown to 4,096: longer texts are split at line breaks
  into several messages, in order.
- WeCom silently drops messages past 30 a minute and 1,000 an hour per member for one app; the
  client counts its own sends (sliding windows, in memory, on the app clock) and raises
  ``SendError(retry_after=...)`` before crossing either limit, so the outbox sends later instead.

How failures map onto `SendError` (the reason holds the errcode, never the text or errmsg):

- transient, retried by the outbox with backoff: errcode -1 (busy), 45009 (API frequency, with
  ``retry_after``), 45033 (concurrency), HTTP errors, timeouts, connection errors, errcodes we do
  not know, and an answer that is not the documented one (not JSON, not an object, no integer
  ``errcode``, a gettoken without a token): nothing says the message arrived, so it is retried
  (at least once) and the log says so once. ``message/send`` takes no idempotency key: a send whose
  outcome is unknown (timeout, dropped connection, unreadable answer; the reason says "outcome
  unknown") may reach the member twice, except where the duplicate check above applies;
- transient with a long ``retry_after`` and a warning in the log: set-up problems an operator can
  fix without losing queued messages (wrong secret or CorpID, agent id, the server's IP missing
  from 企业可信IP, API not permitted);
- permanent, recorded as failed at once: no valid recipient (81013/82001), no privilege (60011:
  the member is outside the app's 可见范围), invalid or unknown userid, empty or oversized content.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from bot import jsonbody
from bot.core.errors import SendError
from bot.core.ports import Clock
from config.settings import WeComSettings

log = logging.getLogger(__name__)

TEXT_LIMIT = 2048  # bytes of UTF-8, per text message
MARKDOWN_LIMIT = 4096
TOKEN_MARGIN = timedelta(minutes=5)
DUPLICATE_CHECK_SECONDS = 1800
REQUEST_TIMEOUT = 10.0  # seconds for one whole HTTP exchange

TOKEN_ERRORS = frozenset({40014, 42001, 42009})
PERMANENT_ERRORS = frozenset(
    {
        40003,  # invalid UserID
        40008,  # invalid message type
        44004,  # empty content
        45002,  # content too long
        60011,  # no privilege: the member is outside the app's visible range
        60111,  # UserID not found
        81013,  # no valid recipient at all
        82001,  # every recipient is empty or invalid
    }
)
SETUP_ERRORS = frozenset(
    {
        40001,  # invalid secret
        40013,  # invalid CorpID
        40056,  # invalid agentid
        48002,  # API not permitted for this app
        60020,  # this server's IP is not in 企业可信IP
        301002,  # no permission for this agent
    }
)
SETUP_RETRY_AFTER = 600.0
RETRY_AFTER = {45009: 60.0, 45033: 1.0}

# (window, most sends inside it) per member for one app
MEMBER_LIMITS = ((timedelta(minutes=1), 30), (timedelta(hours=1), 1000))


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` UTF-8 bytes, at line breaks if possible.

    A text that fits is returned whole. Blank lines at a split point are dropped; a single line
    longer than ``limit`` is cut between characters.
    """
    if len(text.encode("utf-8")) <= limit:
        return [text]
    chunks: list[str] = []
    current: list[str] = []
    size = -1  # bytes of "\n".join(current)
    for line in _short_lines(text, limit):
        grown = size + 1 + len(line.encode("utf-8"))
        if current and grown > limit:
            chunks.append("\n".join(current))
            current, grown = [], len(line.encode("utf-8"))
        current.append(line)
        size = grown
    chunks.append("\n".join(current))
    return [c.strip("\n") for c in chunks if c.strip()]


def _short_lines(text: str, limit: int) -> list[str]:
    lines: list[str] = []
    for line in text.split("\n"):
        while len(line.encode("utf-8")) > limit:
            cut, used = 0, 0
            for ch in line:
                width = len(ch.encode("utf-8"))
                if used + width > limit:
                    break
                used += width
                cut += 1
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return lines


class MemberRateLimit:
    """Sliding-window counters of sends per member (in memory: one process, one app)."""

    def __init__(self, limits: tuple[tuple[timedelta, int], ...] = MEMBER_LIMITS) -> None:
        self.limits = limits
        self._horizon = max(window for window, _ in limits)
        self._sent: dict[str, deque[datetime]] = {}

    def wait(self, member: str, now: datetime, count: int = 1) -> float:
        """Seconds until ``count`` more sends to ``member`` fit in every window (0.0: now)."""
        times = self._prune(member, now)
        wait = timedelta(0)
        for window, most in self.limits:
            recent = [t for t in times if t > now - window]
            excess = len(recent) + min(count, most) - most
            if excess > 0:  # the excess-th oldest send must leave the window first
                wait = max(wait, recent[excess - 1] + window - now)
        return wait.total_seconds()

    def record(self, member: str, now: datetime) -> None:
        self._sent.setdefault(member, deque()).append(now)

    def _prune(self, member: str, now: datetime) -> deque[datetime]:
        times = self._sent.get(member, deque())
        while times and times[0] <= now - self._horizon:
            times.popleft()
        if not times:
            self._sent.pop(member, None)
        return times


class WeComClient:
    """Sends text and markdown to members as one WeCom app; the channel's `Sender`.

    Open it with `start` (inside the running loop) and `close` it on shutdown; the aiohttp app
    does both in a cleanup context.
    """

    def __init__(
        self, settings: WeComSettings, clock: Clock, *, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.timeout = timeout
        self.limits = MemberRateLimit()
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, datetime] | None = None  # (token, when to stop using it)
        self._token_lock = asyncio.Lock()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), raise_for_status=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the Sender

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        """Deliver ``text`` to the member ``recipient`` (split if longer than 2,048 bytes).

        Only proactive messages ask WeCom's duplicate check: a reply may legitimately repeat
        itself (the same student list asked for twice) and must not be swallowed.
        """
        await self._send(recipient, "text", split_text(text, TEXT_LIMIT), dedupe=proactive)

    async def send_markdown(self, recipient: str, content: str) -> None:
        """Deliver markdown (rendered in the WeCom client; up to 4,096 bytes a message)."""
        await self._send(recipient, "markdown", split_text(content, MARKDOWN_LIMIT))

    async def _send(
        self, recipient: str, msgtype: str, chunks: list[str], *, dedupe: bool = True
    ) -> None:
        wait = self.limits.wait(recipient, self.clock.now(), len(chunks))
        if wait > 0:
            raise SendError("wecom member rate limit", retry_after=wait)
        for chunk in chunks:
            await self._send_one(
                {
                    "touser": recipient,
                    "msgtype": msgtype,
                    "agentid": self.settings.agent_id,
                    msgtype: {"content": chunk},
                    "safe": 0,
                    "enable_duplicate_check": 1 if dedupe else 0,
                    "duplicate_check_interval": DUPLICATE_CHECK_SECONDS,
                }
            )
            self.limits.record(recipient, self.clock.now())

    async def _send_one(self, payload: dict[str, Any]) -> None:
        token = await self.access_token()
        answer = await self._post_send(token, payload)
        if _errcode(answer) in TOKEN_ERRORS:
            log.info(
                "wecom access token rejected (errcode %s); fetching a new one", _errcode(answer)
            )
            self._drop_token(token)
            answer = await self._post_send(await self.access_token(), payload)
        errcode = _errcode(answer)
        if errcode == 0 and payload["touser"] in str(answer.get("invaliduser", "")).split("|"):
            errcode = 81013  # accepted, but not for this member
        if errcode != 0:
            raise _send_error(errcode, "message/send")

    async def _post_send(self, token: str, payload: dict[str, Any]) -> Mapping[str, Any]:
        url = f"{self.settings.api_base}/cgi-bin/message/send"
        return await self._call("POST", url, {"access_token": token}, payload)

    # -- web authorisation (the console's sign-in inside WeCom)

    async def user_for_code(self, code: str) -> str | None:
        """The member UserID an OAuth2 `code` stands for (`auth/getuserinfo`); None when WeCom
        rejects the code or it belongs to no member of the corp (an outsider gets an OpenId)."""
        url = f"{self.settings.api_base}/cgi-bin/auth/getuserinfo"
        token = await self.access_token()
        answer = await self._call("GET", url, {"access_token": token, "code": code}, None)
        if _errcode(answer) in TOKEN_ERRORS:
            self._drop_token(token)
            query = {"access_token": await self.access_token(), "code": code}
            answer = await self._call("GET", url, query, None)
        if _errcode(answer) != 0:
            log.info("wecom auth/getuserinfo errcode %s", _errcode(answer))
            return None
        user_id = answer.get("userid") or answer.get("UserId")
        return user_id if isinstance(user_id, str) and user_id else None

    # -- the access token

    async def access_token(self) -> str:
        """The cached token, fetched first if there is none or it is about to expire."""
        async with self._token_lock:  # concurrent sends share one fetch
            now = self.clock.now()
            if self._token is not None and now < self._token[1]:
                return self._token[0]
            url = f"{self.settings.api_base}/cgi-bin/gettoken"
            query = {"corpid": self.settings.corp_id, "corpsecret": self.settings.secret.value}
            answer = await self._call("GET", url, query, None)
            errcode, token = _errcode(answer), answer.get("access_token")
            if errcode != 0:
                raise _send_error(errcode, "gettoken")
            if not isinstance(token, str) or not token:
                raise _unexpected("gettoken", "no access_token")
            expires_in = answer.get("expires_in")
            lifetime = timedelta(seconds=expires_in if isinstance(expires_in, int) else 7200)
            self._token = (token, now + max(lifetime - TOKEN_MARGIN, lifetime / 2))
            return token

    def _drop_token(self, token: str) -> None:
        if self._token is not None and self._token[0] == token:
            self._token = None

    # -- HTTP

    async def _call(
        self, method: str, url: str, query: Mapping[str, str], body: Mapping[str, Any] | None
    ) -> Mapping[str, Any]:
        """One API call; the JSON answer, or a transient SendError for anything off the wire."""
        if self._session is None:
            raise SendError("wecom client is not started")
        api = url.rsplit("/cgi-bin/", 1)[-1]
        try:
            async with self._session.request(method, url, params=query, json=body) as response:
                if response.status != 200:
                    log.warning("wecom %s answered HTTP %s", api, response.status)
                    raise SendError(f"wecom {api} HTTP {response.status}")
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
            raise SendError(f"wecom {api} connection error ({type(exc).__name__})") from exc
        except TimeoutError as exc:  # the request may have arrived all the same
            raise SendError(f"wecom {api} timeout, outcome unknown") from exc
        except aiohttp.ClientError as exc:
            reason = f"wecom {api} connection error ({type(exc).__name__}), outcome unknown"
            raise SendError(reason) from exc
        try:
            answer = jsonbody.loads(raw)
        except jsonbody.BadJSON as exc:
            raise _unexpected(api, "not JSON") from exc
        if not isinstance(answer, dict):
            raise _unexpected(api, "not a JSON object")
        code = answer.get("errcode")
        if not isinstance(code, int) or isinstance(code, bool):
            raise _unexpected(api, "no errcode")
        return answer


def _unexpected(api: str, what: str) -> SendError:
    """HTTP 200 with an answer that is not the documented one: transient, logged once."""
    log.warning("wecom %s answered HTTP 200 with an unexpected body (%s); will retry", api, what)
    return SendError(f"wecom {api} unexpected answer ({what}), outcome unknown")


def _errcode(answer: Mapping[str, Any]) -> int:
    code = answer.get("errcode", 0)
    return code if isinstance(code, int) else -1


def _send_error(errcode: int, api: str) -> SendError:
    reason = f"wecom {api} errcode {errcode}"
    if errcode in PERMANENT_ERRORS:
        # No recipient in the log: a WeCom UserID is often the teacher's name in pinyin.
        log.info("wecom %s errcode %s: not retried", api, errcode)
        return SendError(reason, permanent=True)
    if errcode in SETUP_ERRORS:
        log.warning(
            "wecom %s errcode %s: check the WeCom app set-up (secret, CorpID, agent id, "
            "企业可信IP); messages stay queued",
            api,
            errcode,
        )
        return SendError(reason, retry_after=SETUP_RETRY_AFTER)
    return SendError(reason, retry_after=RETRY_AFTER.get(errcode))
