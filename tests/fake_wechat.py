"""A local fake of the WeChat Official Account server API (aiohttp).

``stable_token``, ``message/custom/send`` and ``message/template/send``, answering as documented
(HTTP 200, JSON with ``errcode``/``errmsg``; ``stable_token`` answers a token without errcode).
It records what followers would have seen. Knobs:

- ``followers``: OpenIDs that follow the account; any other ``touser`` gets 43004;
- ``in_window``: followers who wrote within 48 hours; a customer-service message to anyone
  else gets 45015 (the real server tracks this itself);
- ``templates``: template ids the account has; another gets 40037;
- ``failures``: the next customer-service sends fail, in order: an int is an errcode, a string
  ``"http 502"`` an HTTP status; nothing is delivered;
- ``expire_tokens``: every token handed out so far stops working (42001 on the next send).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

APP_ID = "wx2c2769f8efd9abc2"
APP_SECRET = "fake-wechat-secret-0123456789"
TEMPLATE = "tpl-reminder-0001"


@dataclass
class Delivered:
    touser: str
    kind: str  # "custom" or "template"
    content: str  # the text, or the template's keyword1
    body: dict[str, Any]


@dataclass
class FakeWeChat:
    app_id: str = APP_ID
    secret: str = APP_SECRET
    base_url: str = ""
    followers: set[str] = field(default_factory=set)
    in_window: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=lambda: {TEMPLATE})
    failures: list[int | str] = field(default_factory=list)
    token_calls: int = 0
    forced_refreshes: int = 0
    custom_calls: int = 0
    delivered: list[Delivered] = field(default_factory=list)
    _valid_tokens: set[str] = field(default_factory=set)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cgi-bin/stable_token", self.stable_token)
        app.router.add_post("/cgi-bin/message/custom/send", self.custom_send)
        app.router.add_post("/cgi-bin/message/template/send", self.template_send)
        return app

    def texts(self, touser: str | None = None, kind: str = "custom") -> list[str]:
        return [
            d.content
            for d in self.delivered
            if d.kind == kind and (touser is None or d.touser == touser)
        ]

    def expire_tokens(self) -> None:
        self._valid_tokens.clear()

    async def stable_token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        body = await request.json()
        if body.get("grant_type") != "client_credential" or body.get("appid") != self.app_id:
            return _err(40013, "invalid appid")
        if body.get("secret") != self.secret:
            return _err(40125, "invalid appsecret")
        if body.get("force_refresh") or not self._valid_tokens:
            self.forced_refreshes += bool(body.get("force_refresh"))
            self._valid_tokens = {f"stable-{next(self._serial)}"}
        [token] = self._valid_tokens
        return web.json_response({"access_token": token, "expires_in": 7200})

    async def custom_send(self, request: web.Request) -> web.Response:
        self.custom_calls += 1
        if request.query.get("access_token") not in self._valid_tokens:
            return _err(42001, "access_token expired")
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, str):
                return web.Response(status=int(failure.split()[1]), text="bad gateway")
            return _err(failure, "failure on request")
        body = await request.json()
        touser = body.get("touser")
        if touser not in self.followers:
            return _err(43004, "require subscribe")
        if touser not in self.in_window:
            return _err(45015, "response out of time limit or subscription is canceled")
        content = body.get("text", {}).get("content")
        if body.get("msgtype") != "text" or not content:
            return _err(44002, "empty post data")
        if len(content.encode("utf-8")) > 2048:
            return _err(45002, "content size out of limit")
        self.delivered.append(Delivered(touser, "custom", content, body))
        return _err(0, "ok")

    async def template_send(self, request: web.Request) -> web.Response:
        if request.query.get("access_token") not in self._valid_tokens:
            return _err(42001, "access_token expired")
        body = await request.json()
        if body.get("template_id") not in self.templates:
            return _err(40037, "invalid template_id")
        if body.get("touser") not in self.followers:
            return _err(43004, "require subscribe")
        data = body.get("data", {})
        content = data.get("keyword1", {}).get("value", "")
        self.delivered.append(Delivered(body["touser"], "template", content, body))
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": 200228332})


def _err(errcode: int, errmsg: str) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg})


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[FakeWeChat]:
    """A fake WeChat API listening on loopback for the duration of the block."""
    api = FakeWeChat()
    server = TestServer(api.app(), host="127.0.0.1")
    await server.start_server()
    api.base_url = str(server.make_url("")).rstrip("/")
    try:
        yield api
    finally:
        await server.close()
