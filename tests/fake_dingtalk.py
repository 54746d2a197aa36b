"""A local fake DingTalk: every endpoint the channel talks to, on one loopback aiohttp server.

- `POST /v1.0/gateway/connections/open` hands out single-use tickets (or refuses `refuse_open`
  times), and `GET /connect?ticket=` is the Stream WebSocket: the test pushes frames with `push`
  / `push_robot`, acks are checked (same messageId, code 200) and recorded; `drop` cuts the socket
  in the middle of a frame.
- `POST /v1.0/oauth2/accessToken` and `POST /v1.0/robot/oToMessages/batchSend` (the token header
  must be one it issued and has not revoked; `batch_errors` scripts failures).
- `POST /robot/sendBySession` is the sessionWebhook (`session_errors` scripts failures).
- `POST /robot/send` is a custom group robot: it checks the signed URL and answers `130101` once
  20 messages arrived within a minute of `now()`.
- `odd_answers["token" | "batchSend" | "session" | "group"]`: raw bodies the next calls of that
  endpoint get with HTTP 200 instead of the real answer (garbage, a JSON of the wrong shape), as a
  proxy or a broken gateway might send. The message is not recorded as delivered.
- `hold_next_batch`: seconds the next batchSend waits *after* it delivered the message, before it
  answers: a client with a shorter timeout gives up on a message the teacher already has.

It is both `DINGTALK_API_BASE` and `DINGTALK_OAPI_BASE`. Nothing here reaches the internet.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from bot.channels.dingtalk_api import sign

WAIT = 10.0


@dataclass
class Delivery:
    """One message the fake received for a user or group."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class FakeDingTalk:
    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        robot_code: str,
        group_token: str = "grouptoken",
        group_secret: str | None = "SECgroup",
        now: Callable[[], float] | None = None,
    ) -> None:
        self.app_key, self.app_secret, self.robot_code = app_key, app_secret, robot_code
        self.group_token, self.group_secret = group_token, group_secret
        self.now = now or asyncio.get_running_loop().time
        self.server: TestServer | None = None
        self.problems: list[str] = []
        # Stream
        self.refuse_open = 0
        self.opens = 0
        self.refused = 0
        self.tickets: set[str] = set()
        self.connections = 0
        self.ws: web.WebSocketResponse | None = None
        self._transport: Any = None
        self._connected = asyncio.Event()
        self.acks: list[dict[str, Any]] = []
        self._ack_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        # OpenAPI
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.batch_sends: list[Delivery] = []
        self.batch_errors: list[tuple[int, dict[str, Any]]] = []
        self.batch_results: list[dict[str, Any]] = []
        self.session_replies: list[Delivery] = []
        self.session_errors: list[tuple[int, dict[str, Any]]] = []
        self.group_messages: list[Delivery] = []
        self.group_rejects: list[int] = []
        self._group_times: deque[float] = deque()
        self.odd_answers: dict[str, list[bytes]] = {}
        self.hold_next_batch = 0.0
        self._arrived = asyncio.Condition()

    # ---------------------------------------------------------------- lifecycle
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1.0/gateway/connections/open", self._open)
        app.router.add_get("/connect", self._connect)
        app.router.add_post("/v1.0/oauth2/accessToken", self._token)
        app.router.add_post("/v1.0/robot/oToMessages/batchSend", self._batch_send)
        app.router.add_post("/robot/sendBySession", self._session_webhook)
        app.router.add_post("/robot/send", self._group_robot)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def start(self) -> FakeDingTalk:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def session_webhook(self, session: str = "s1") -> str:
        return f"{self.base}/robot/sendBySession?session={session}"

    def group_webhook(self) -> str:
        return f"{self.base}/robot/send?access_token={self.group_token}"

    async def _close_sockets(self, _app: web.Application) -> None:
        if self.ws is not None:
            await self.ws.close()

    # ---------------------------------------------------------------- Stream
    async def _open(self, request: web.Request) -> web.Response:
        self.opens += 1
        body = await request.json()
        if self.refuse_open > 0:
            self.refuse_open -= 1
            self.refused += 1
            return web.json_response({"code": "ServiceUnavailable"}, status=503)
        if (body.get("clientId"), body.get("clientSecret")) != (self.app_key, self.app_secret):
            return web.json_response({"code": "InvalidClient"}, status=401)
        robot = {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}
        if not self._check(robot in body.get("subscriptions", []), "no robot subscription"):
            return web.json_response({"code": "InvalidSubscription"}, status=400)
        ticket = str(uuid.uuid4())
        self.tickets.add(ticket)
        endpoint = self.base.replace("http://", "ws://") + "/connect"
        return web.json_response({"endpoint": endpoint, "ticket": ticket})

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self.tickets:
            raise web.HTTPForbidden(text="bad ticket")
        self.tickets.discard(ticket)  # single use
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws, self._transport = ws, request.transport
        self.connections += 1
        self._connected.set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    ack = json.loads(msg.data)
                    if self._check(_is_ack(ack), f"not an ack: {msg.data[:80]}"):
                        self._got_ack(ack)
        finally:
            if self.ws is ws:
                self.ws = None
                self._connected.clear()
        return ws

    def _check(self, ok: bool, what: str) -> bool:
        """A protocol rule the bot must keep; a broken one is recorded for the test to see."""
        if not ok:
            self.problems.append(what)
        return ok

    def _got_ack(self, ack: dict[str, Any]) -> None:
        self.acks.append(ack)
        waiter = self._ack_waiters.pop(ack["headers"]["messageId"], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ack)

    async def wait_connected(self, connections: int = 1) -> None:
        """Until the bot holds a connection and has made at least `connections` in all."""

        async def ready() -> None:
            while self.ws is None or self.connections < connections:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ready(), WAIT)

    async def send(self, raw: str) -> None:
        """Send any text on the live connection, expecting no ack."""
        await self.wait_connected()
        assert self.ws is not None
        await self.ws.send_str(raw)

    async def push(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame on the live connection; the bot's ack."""
        await self.wait_connected()
        assert self.ws is not None
        waiter = asyncio.get_running_loop().create_future()
        self._ack_waiters[frame["headers"]["messageId"]] = waiter
        await self.ws.send_str(json.dumps(frame, ensure_ascii=False))
        return await asyncio.wait_for(waiter, WAIT)

    async def push_robot(self, payload: dict[str, Any]) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "specVersion": "1.0",
            "type": "CALLBACK",
            "headers": {
                "topic": "/v1.0/im/bot/messages/get",
                "messageId": f"stream-{next(self._ids)}",
                "contentType": "application/json",
                "time": "1772413200000",
            },
            "data": json.dumps(payload, ensure_ascii=False),
        }
        ack = await self.push(frame)
        assert ack["code"] == 200 and ack["headers"]["messageId"] == frame["headers"]["messageId"]
        assert json.loads(ack["data"]) == {"response": None}
        return ack

    async def drop(self) -> None:
        """Cut the connection in the middle of a frame: a text frame header, then nothing."""
        await self.wait_connected()
        self._transport.write(b"\x81\x7e\x01\x00" + b'{"specVersion":')
        self._transport.abort()

    # ---------------------------------------------------------------- OpenAPI
    def _odd(self, endpoint: str) -> web.Response | None:
        """The next scripted odd answer of `endpoint` (HTTP 200, any body), if there is one."""
        queue = self.odd_answers.get(endpoint)
        if not queue:
            return None
        return web.Response(body=queue.pop(0), content_type="application/json")

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (odd := self._odd("token")) is not None:
            return odd
        if (body.get("appKey"), body.get("appSecret")) != (self.app_key, self.app_secret):
            return web.json_response({"code": "invalidClientIdOrSecret"}, status=400)
        token = f"token-{len(self.issued) + 1}"
        self.issued.append(token)
        return web.json_response({"accessToken": token, "expireIn": 7200})

    async def _batch_send(self, request: web.Request) -> web.Response:
        token = request.headers.get("x-acs-dingtalk-access-token", "")
        if token not in self.issued or token in self.revoked:
            return web.json_response({"code": "InvalidAuthentication"}, status=401)
        body = await request.json()
        ok = (
            self._check(body.get("robotCode") == self.robot_code, "robotCode")
            and self._check(1 <= len(body.get("userIds", [])) <= 20, "1 to 20 userIds")
            and self._check(body.get("msgKey") in ("sampleText", "sampleMarkdown"), "msgKey")
            and self._check(isinstance(json.loads(body.get("msgParam", "x")), dict), "msgParam")
        )
        if not ok:
            return web.json_response({"code": "invalidParameter"}, status=400)
        if self.batch_errors:
            status, error = self.batch_errors.pop(0)
            return web.json_response(error, status=status)
        if (odd := self._odd("batchSend")) is not None:
            return odd
        await self._record(self.batch_sends, Delivery(request.path, body, {"token": token}))
        hold, self.hold_next_batch = self.hold_next_batch, 0.0
        await asyncio.sleep(hold)
        result = self.batch_results.pop(0) if self.batch_results else {}
        return web.json_response({"processQueryKey": "pqk", **result})

    async def _session_webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.session_errors:
            status, error = self.session_errors.pop(0)
            return web.json_response(error, status=status)
        if (odd := self._odd("session")) is not None:
            return odd
        text = body.get("text") if body.get("msgtype") == "text" else None
        if not self._check(isinstance(text, dict) and isinstance(text.get("content"), str), "text"):
            return web.json_response({"errcode": 40035, "errmsg": "bad message"})
        await self._record(self.session_replies, Delivery(request.path_qs, body))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _group_robot(self, request: web.Request) -> web.Response:
        query = parse_qs(request.rel_url.raw_query_string)  # raw: an unencoded "+" breaks it
        if query.get("access_token") != [self.group_token]:
            return self._group_error(300001, "token is not exist")
        if self.group_secret is not None:
            [ts], [given] = query.get("timestamp", [""]), query.get("sign", [""])
            if given != sign(self.group_secret, ts):
                return self._group_error(310000, "sign not match")
        now = self.now()
        while self._group_times and self._group_times[0] <= now - 60:
            self._group_times.popleft()
        if len(self._group_times) >= 20:
            return self._group_error(130101, "send too fast, exceed 20 times per minute")
        if (odd := self._odd("group")) is not None:
            return odd
        self._group_times.append(now)
        await self._record(self.group_messages, Delivery(request.path, await request.json()))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    def _group_error(self, errcode: int, errmsg: str) -> web.Response:
        self.group_rejects.append(errcode)
        return web.json_response({"errcode": errcode, "errmsg": errmsg})

    # ---------------------------------------------------------------- waiting for deliveries
    async def _record(self, where: list[Delivery], item: Delivery) -> None:
        async with self._arrived:
            where.append(item)
            self._arrived.notify_all()

    async def wait_for(self, where: list[Delivery], count: int) -> list[Delivery]:
        """Until `where` holds `count` deliveries; returns them."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(where) >= count), WAIT)
        return where[:count]

    def texts(self, where: list[Delivery]) -> list[str]:
        out = []
        for d in where:
            if "msgParam" in d.body:
                out.append(json.loads(d.body["msgParam"]).get("content", ""))
            else:
                out.append(d.body["text"]["content"])
        return out


def _is_ack(frame: Any) -> bool:
    """`{"code": int, "headers": {"messageId", "contentType"}, "message": str, "data": str}`."""
    return (
        isinstance(frame, dict)
        and isinstance(frame.get("code"), int)
        and isinstance(frame.get("headers"), dict)
        and "messageId" in frame["headers"]
        and frame["headers"].get("contentType") == "application/json"
        and isinstance(frame.get("message"), str)
        and isinstance(frame.get("data"), str)
    )
