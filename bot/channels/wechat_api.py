"""WeChat Official Account (公众号) server API: the stable access token, customer-service and
template messages. `WeChatClient` is the channel's `Sender` (PROTOCOLS.md section 2.4).

Everything goes through ``WECHAT_API_BASE``:

- ``POST /cgi-bin/stable_token`` -> ``access_token``, cached until `TOKEN_MARGIN` before its
  ``expires_in``; one fetch at a time. Unlike ``/cgi-bin/token`` it does not invalidate the
  token another instance holds. A send answered 40001/40014/42001 (token invalid or expired)
  fetches with ``force_refresh`` and retries that send once at once.
- ``POST /cgi-bin/message/custom/send`` (customer-service message): only inside the 48-hour
  window after the follower last wrote to the account. WeChat itself tracks the window, so the
  client simply tries; errcode 45015 (out of the window) or 45047 (the window's quota used up)
  on a proactive message turns it into a template message.
- ``POST /cgi-bin/message/template/send`` with ``WECHAT_TEMPLATE_REMINDER``: a short notice
  (fields ``first``, ``keyword1``, ``keyword2``, ``remark``) that asks the teacher to write back,
  which opens the window again. With no template configured the failure is permanent, so the
  outbox can hand the message to the next channel.

Failures map onto `SendError` as in `bot.channels.wecom_api`: the reason carries the errcode,
never the text, the OpenID or errmsg; unknown errcodes, HTTP errors and odd answers are
transient; set-up errors (AppID, secret, IP whitelist, template id) are transient with a long
``retry_after`` and a warning; an unknown or unsubscribed follower is permanent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any

import aiohttp

from bot import jsonbody
from bot.channels.wecom_api import split_text
from bot.core.errors import SendError
from bot.core.ports import Clock
from config.settings import WeChatSettings

log = logging.getLogger(__name__)

TEXT_LIMIT = 2048  # bytes of UTF-8 in one customer-service text
TOKEN_MARGIN = timedelta(minutes=5)
REQUEST_TIMEOUT = 10.0
TEMPLATE_FIELD = 20  # characters a template keyword shows

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
OUT_OF_WINDOW = frozenset({45015, 45047})  # outside the 48 hours / the window's quota used
PERMANENT_ERRORS = frozenset(
    {
        40003,  # invalid OpenID (not a follower of this account)
        43004,  # the user does not follow the account (any more)
        44002,  # empty content
        45002,  # content too long
        43101,  # the user refused the message
    }
)
SETUP_ERRORS = frozenset(
    {
        40013,  # invalid AppID
        40125,  # invalid AppSecret
        40164,  # this server's IP is not in the account's whitelist
        48001,  # API not authorised for this account
        40037,  # invalid template_id
    }
)
SETUP_RETRY_AFTER = 600.0
RETRY_AFTER = {45009: 60.0, -1: 5.0}

TEMPLATE_TITLE = "家访助手提醒"
TEMPLATE_REMARK = "请在公众号里回复任意文字（如“家访”）查看详情并开始登记。"


class WeChatClient:
    """Sends texts to followers of one Official Account; open with `start`, `close` on exit."""

    def __init__(
        self,
        settings: WeChatSettings,
        clock: Clock,
        tz: tzinfo,
        *,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.tz = tz
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, datetime] | None = None
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
        """Customer-service messages; a proactive one outside the window becomes a template
        message, or a permanent failure when there is no template."""
        chunks = split_text(text, TEXT_LIMIT)
        for index, chunk in enumerate(chunks):
            payload = {"touser": recipient, "msgtype": "text", "text": {"content": chunk}}
            errcode = await self._call_api("message/custom/send", payload)
            if errcode == 0:
                continue
            if errcode in OUT_OF_WINDOW and proactive and index == 0:
                await self._template(recipient, text)
                return
            raise _send_error(errcode, "message/custom/send", self.settings.template_reminder)

    async def _template(self, recipient: str, text: str) -> None:
        template = self.settings.template_reminder
        if template is None:
            log.info("wechat follower outside the 48-hour window and no template: not sent")
            raise SendError("wechat errcode 45015, no template", permanent=True)
        first_line = next((line for line in text.splitlines() if line.strip()), text).strip()
        payload = {
            "touser": recipient,
            "template_id": template,
            "data": {
                "first": {"value": TEMPLATE_TITLE},
                "keyword1": {"value": first_line[:TEMPLATE_FIELD]},
                "keyword2": {"value": self.clock.now().astimezone(self.tz).strftime("%Y-%m-%d")},
                "remark": {"value": TEMPLATE_REMARK},
            },
        }
        errcode = await self._call_api("message/template/send", payload)
        if errcode != 0:
            raise _send_error(errcode, "message/template/send", template)

    async def _call_api(self, api: str, payload: Mapping[str, Any]) -> int:
        """POST to ``api`` with the token (renewed once if WeChat rejects it); the errcode."""
        url = f"{self.settings.api_base}/cgi-bin/{api}"
        token = await self.access_token()
        errcode = _errcode(await self._call(url, {"access_token": token}, payload))
        if errcode in TOKEN_ERRORS:
            log.info("wechat access token rejected (errcode %s); fetching a new one", errcode)
            token = await self.access_token(force_refresh=True, stale=token)
            errcode = _errcode(await self._call(url, {"access_token": token}, payload))
        return errcode

    # -- the access token

    async def access_token(self, *, force_refresh: bool = False, stale: str | None = None) -> str:
        """The cached stable token; fetched when missing, about to expire, or `stale`."""
        async with self._token_lock:
            now = self.clock.now()
            cached = self._token
            # a forced refresh of a token another send has already renewed uses the new one
            if (
                cached is not None
                and now < cached[1]
                and not (force_refresh and cached[0] == stale)
            ):
                return cached[0]
            body = {
                "grant_type": "client_credential",
                "appid": self.settings.app_id,
                "secret": self.settings.app_secret.value,
                "force_refresh": force_refresh,
            }
            answer = await self._call(f"{self.settings.api_base}/cgi-bin/stable_token", {}, body)
            errcode, token = _errcode(answer), answer.get("access_token")
            if errcode != 0:
                raise _send_error(errcode, "stable_token", self.settings.template_reminder)
            if not isinstance(token, str) or not token:
                raise _unexpected("stable_token", "no access_token")
            expires_in = answer.get("expires_in")
            lifetime = timedelta(seconds=expires_in if isinstance(expires_in, int) else 7200)
            self._token = (token, now + max(lifetime - TOKEN_MARGIN, lifetime / 2))
            return token

    # -- HTTP

    async def _call(
        self, url: str, query: Mapping[str, str], body: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """One POST; the JSON object answered, or a transient SendError."""
        if self._session is None:
            raise SendError("wechat client is not started")
        api = url.rsplit("/cgi-bin/", 1)[-1]
        try:
            async with self._session.post(url, params=query, json=body) as response:
                if response.status != 200:
                    log.warning("wechat %s answered HTTP %s", api, response.status)
                    raise SendError(f"wechat {api} HTTP {response.status}")
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise SendError(f"wechat {api} connection error ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            raise SendError(f"wechat {api} timeout, outcome unknown") from exc
        except aiohttp.ClientError as exc:
            reason = f"wechat {api} connection error ({type(exc).__name__}), outcome unknown"
            raise SendError(reason) from exc
        try:
            answer = jsonbody.loads(raw)
        except jsonbody.BadJSON as exc:
            raise _unexpected(api, "not JSON") from exc
        if not isinstance(answer, dict):
            raise _unexpected(api, "not a JSON object")
        code = answer.get("errcode", 0)  # stable_token answers success without an errcode
        if not isinstance(code, int) or isinstance(code, bool):
            raise _unexpected(api, "errcode is not a number")
        return answer


def _unexpected(api: str, what: str) -> SendError:
    log.warning("wechat %s answered HTTP 200 with an unexpected body (%s); will retry", api, what)
    return SendError(f"wechat {api} unexpected answer ({what}), outcome unknown")


def _errcode(answer: Mapping[str, Any]) -> int:
    code = answer.get("errcode", 0)
    return code if isinstance(code, int) else -1


def _send_error(errcode: int, api: str, template: str | None) -> SendError:
    reason = f"wechat {api} errcode {errcode}"
    if errcode in PERMANENT_ERRORS or (errcode in OUT_OF_WINDOW and api != "stable_token"):
        log.info("wechat %s errcode %s: not retried", api, errcode)
        return SendError(reason, permanent=True)
    if errcode in SETUP_ERRORS:
        log.warning(
            "wechat %s errcode %s: check the Official Account set-up (AppID, AppSecret, IP "
            "whitelist%s); messages stay queued",
            api,
            errcode,
            ", WECHAT_TEMPLATE_REMINDER" if template else "",
        )
        return SendError(reason, retry_after=SETUP_RETRY_AFTER)
    return SendError(reason, retry_after=RETRY_AFTER.get(errcode))
