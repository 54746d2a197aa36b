"""A local fake of the WeCom server API (aiohttp): ``gettoken`` and ``message/send``.

It speaks the documented protocol (HTTP 200 with ``errcode``/``errmsg`` JSON) and records what
it was sent, so tests can assert what a teacher would have seen. Knobs:

- ``expire_next_send``: the next send answers errcode 42001 (token expired) once, and the token
  it was given stops working;
- ``failures``: the next sends fail, in order: an int is an errcode (-1, 45009 ...), a string
  ``"http 502"`` an HTTP status, bytes a raw body answered with HTTP 200 (garbage, or JSON that
  is not the documented answer); the message is not delivered;
- ``token_answers``: raw bodies the next ``gettoken`` calls get with HTTP 200;
- ``members``: userids that exist; any other ``touser`` gets 81013;
- ``oauth_codes``: OAuth2 codes ``auth/getuserinfo`` accepts (once each), code -> UserID; any
  other code gets errcode 40029 (invalid code);
- ``hold_next_send``: seconds the next send waits *after* it delivered the message, before it
  answers (a client with a shorter timeout gives up on a delivered message).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

CORP_ID = "wwfakecorp0001"
SECRET = "fake-app-secret-0123456789"
AGENT_ID = 1000002


@dataclass
class SentMessage:
    touser: str
    msgtype: str
    content: str
    body: dict[str, Any]


@dataclass
class FakeWeCom:
    corp_id: str = CORP_ID
    secret: str = SECRET
    agent_id: int = AGENT_ID
    expires_in: int = 7200
    base_url: str = ""  # set by `start`
    members: set[str] = field(default_factory=lambda: {"zhanglaoshi"})
    gettoken_calls: int = 0
    send_calls: int = 0
    sent: list[SentMessage] = field(default_factory=list)
    expire_next_send: bool = False
    failures: list[int | str | bytes] = field(default_factory=list)
    token_answers: list[bytes] = field(default_factory=list)
    hold_next_send: float = 0.0
    oauth_codes: dict[str, str] = field(default_factory=dict)
    getuserinfo_calls: int = 0
    _valid_tokens: set[str] = field(default_factory=set)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cgi-bin/gettoken", self.gettoken)
        app.router.add_post("/cgi-bin/message/send", self.message_send)
        app.router.add_get("/cgi-bin/auth/getuserinfo", self.getuserinfo)
        return app

    async def getuserinfo(self, request: web.Request) -> web.Response:
        self.getuserinfo_calls += 1
        if request.query.get("access_token", "") not in self._valid_tokens:
            return _err(40014, "invalid access_token")
        user_id = self.oauth_codes.pop(request.query.get("code", ""), None)
        if user_id is None:
            return _err(40029, "invalid code")
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "userid": user_id, "user_ticket": "ticket"}
        )

    def texts(self, touser: str | None = None) -> list[str]:
        return [m.content for m in self.sent if touser is None or m.touser == touser]

    async def gettoken(self, request: web.Request) -> web.Response:
        self.gettoken_calls += 1
        if self.token_answers:
            return web.Response(body=self.token_answers.pop(0), content_type="application/json")
        if request.query.get("corpid") != self.corp_id:
            return _err(40013, "invalid corpid")
        if request.query.get("corpsecret") != self.secret:
            return _err(40001, "invalid credential")
        token = f"token-{next(self._serial)}"
        self._valid_tokens.add(token)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}
        )

    async def message_send(self, request: web.Request) -> web.Response:
        self.send_calls += 1
        token = request.query.get("access_token", "")
        if token not in self._valid_tokens:
            return _err(40014, "invalid access_token")
        if self.expire_next_send:
            self.expire_next_send = False
            self._valid_tokens.discard(token)
            return _err(42001, "access_token expired")
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, bytes):
                return web.Response(body=failure, content_type="application/json")
            if isinstance(failure, str):
                return web.Response(status=int(failure.split()[1]), text="bad gateway")
            return _err(failure, "failure on request")
        body = await request.json()
        problem = self._check(body)
        if problem is not None:
            return problem
        if body["touser"] not in self.members:
            return _err(81013, "user & party & tag all invalid")
        msgtype = body["msgtype"]
        self.sent.append(SentMessage(body["touser"], msgtype, body[msgtype]["content"], body))
        hold, self.hold_next_send = self.hold_next_send, 0.0
        await asyncio.sleep(hold)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": f"m{self.send_calls}"}
        )

    def _check(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict) or body.get("agentid") != self.agent_id:
            return _err(40056, "invalid agentid")
        msgtype = body.get("msgtype")
        if msgtype not in ("text", "markdown"):
            return _err(40008, "invalid message type")
        content = body.get(msgtype, {}).get("content")
        if not content:
            return _err(44004, "empty content")
        limit = 2048 if msgtype == "text" else 4096
        if len(content.encode("utf-8")) > limit:
            return _err(45002, "content size out of limit")
        return None


def _err(errcode: int, errmsg: str) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg})


async def start(fake: FakeWeCom) -> TestServer:
    """Start ``fake`` on a loopback port; the caller closes the server."""
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base_url = str(server.make_url("")).rstrip("/")
    return server


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[FakeWeCom]:
    """A fake WeCom API listening on loopback for the duration of the block."""
    api = FakeWeCom()
    server = await start(api)
    try:
        yield api
    finally:
        await server.close()
