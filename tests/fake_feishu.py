"""A local fake Feishu (飞书): the platform endpoints the channel uses, on one loopback server.

- `POST /open-apis/auth/v3/tenant_access_token/internal` issues tokens `t-1`, `t-2`, ...
  (`revoked` ones are refused by the send API with code 99991663, as an expired token is).
- `POST /open-apis/im/v1/messages?receive_id_type=open_id`: checks the bearer token and the body
  (`receive_id`, `msg_type` text, a JSON-string `content` with `text`), and keeps Feishu's
  idempotency rule: a second message with a `uuid` already seen is answered with the first one's
  message_id and not delivered again (`duplicates` counts them). `send_errors` scripts failures
  (HTTP status, answer) for the next calls; `hold_next_send` delays an answer after delivery.
- `POST /callback/ws/endpoint` hands out the WebSocket URL with `device_id` and `service_id`
  (or refuses `refuse_open` times), and `GET /ws` is the long connection. Frames are encoded and
  decoded with lark-oapi's generated `pbbp2.Frame`, not with our codec: `push_event` sends an
  event (split into `parts` frames if asked) and returns the bot's ack; pings are answered with a
  pong carrying a ClientConfig; `drop` cuts the socket in the middle of a frame.
- `webhook_request(payload)`: the body and headers Feishu would POST to the callback URL
  (encrypted with the Encrypt Key, signed), for webhook tests.

Nothing here reaches the internet. Protocol rules the bot breaks are collected in `problems`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from bot.channels import feishu_crypto
from tests.lark_kit import lark_frame_class

WAIT = 10.0
SERVICE_ID = 7291


@dataclass
class Delivery:
    """One message the fake took for a user."""

    receive_id: str
    text: str
    uuid: str | None
    token: str
    query: dict[str, str] = field(default_factory=dict)


class FakeFeishu:
    def __init__(
        self,
        *,
        app_id: str,
        app_secret: str,
        encrypt_key: str,
        verification_token: str,
        now: Callable[[], float],
        ping_interval: int = 120,
    ) -> None:
        self.app_id, self.app_secret = app_id, app_secret
        self.encrypt_key, self.verification_token = encrypt_key, verification_token
        self.now = now
        self.ping_interval = ping_interval
        self.server: TestServer | None = None
        self.problems: list[str] = []
        self.Frame = lark_frame_class()
        # OpenAPI
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.messages: list[Delivery] = []
        self.duplicates = 0
        self._uuids: dict[str, str] = {}
        self.send_errors: list[tuple[int, dict[str, Any]]] = []
        self.hold_next_send = 0.0
        self._arrived = asyncio.Condition()
        # long connection
        self.refuse_open = 0
        self.opens = 0
        self.refused = 0
        self.connections = 0
        self.ws: web.WebSocketResponse | None = None
        self._transport: Any = None
        self.pings: list[Any] = []
        self.answer_pings = True  # False: a gateway gone silent (no pongs, no frames)
        self.acks: list[Any] = []
        self._ack_waiters: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- lifecycle
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", self._token)
        app.router.add_post("/open-apis/im/v1/messages", self._send)
        app.router.add_post("/callback/ws/endpoint", self._endpoint)
        app.router.add_get("/ws", self._connect)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def start(self) -> FakeFeishu:
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

    async def _close_sockets(self, _app: web.Application) -> None:
        if self.ws is not None:
            await self.ws.close()

    def _check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.problems.append(what)
        return ok

    # ---------------------------------------------------------------- webhook requests
    def webhook_request(
        self, payload: Any, *, timestamp: int | None = None, key: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers Feishu POSTs for `payload` (encrypted, signed)."""
        key = key or self.encrypt_key
        plain = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        body = json.dumps({"encrypt": feishu_crypto.encrypt(key, plain)}).encode()
        ts = str(int(self.now()) if timestamp is None else timestamp)
        nonce = secrets.token_hex(8)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": feishu_crypto.signature(ts, nonce, key, body),
        }
        return body, headers

    # ---------------------------------------------------------------- OpenAPI
    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (body.get("app_id"), body.get("app_secret")) != (self.app_id, self.app_secret):
            return web.json_response({"code": 10014, "msg": "app secret invalid"}, status=400)
        token = f"t-{len(self.issued) + 1}"
        self.issued.append(token)
        return web.json_response(
            {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200}
        )

    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or token not in self.issued or token in self.revoked:
            return web.json_response(
                {"code": 99991663, "msg": "Invalid access token for authorization"}, status=400
            )
        body = await request.json()
        content = json.loads(body.get("content", "null")) if isinstance(body, dict) else None
        ok = (
            self._check(request.query.get("receive_id_type") == "open_id", "receive_id_type")
            and self._check(isinstance(body.get("receive_id"), str), "receive_id")
            and self._check(body.get("msg_type") == "text", "msg_type")
            and self._check(isinstance(content, dict) and "text" in content, "content")
            and self._check(len(body.get("uuid") or "") <= 50, "uuid over 50 characters")
        )
        if not ok:
            return web.json_response({"code": 230001, "msg": "invalid param"}, status=400)
        if self.send_errors:
            status, error = self.send_errors.pop(0)
            return web.json_response(error, status=status)
        assert isinstance(content, dict)
        uuid = body.get("uuid")
        if uuid is not None and uuid in self._uuids:
            self.duplicates += 1
            return self._sent(self._uuids[uuid])
        message_id = f"om_{next(self._ids)}"
        if uuid is not None:
            self._uuids[uuid] = message_id
        delivery = Delivery(body["receive_id"], content["text"], uuid, token, dict(request.query))
        async with self._arrived:
            self.messages.append(delivery)
            self._arrived.notify_all()
        hold, self.hold_next_send = self.hold_next_send, 0.0
        await asyncio.sleep(hold)
        return self._sent(message_id)

    @staticmethod
    def _sent(message_id: str) -> web.Response:
        return web.json_response(
            {"code": 0, "msg": "success", "data": {"message_id": message_id, "msg_type": "text"}}
        )

    async def wait_for(self, count: int) -> list[Delivery]:
        """Until `count` messages were delivered; returns them."""
        async with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.messages) >= count)
            await asyncio.wait_for(arrived, WAIT)
        return self.messages[:count]

    def texts(self) -> list[str]:
        return [m.text for m in self.messages]

    # ---------------------------------------------------------------- long connection
    async def _endpoint(self, request: web.Request) -> web.Response:
        self.opens += 1
        body = await request.json()
        self._check(request.headers.get("locale") == "zh", "endpoint request without locale")
        if self.refuse_open > 0:
            self.refuse_open -= 1
            self.refused += 1
            return web.json_response({"code": 1, "msg": "system busy"})
        if (body.get("AppID"), body.get("AppSecret")) != (self.app_id, self.app_secret):
            return web.json_response({"code": 514, "msg": "auth failed"})
        url = self.base.replace("http://", "ws://") + (
            f"/ws?device_id=dev{self.opens}&service_id={SERVICE_ID}"
        )
        config = {"PingInterval": self.ping_interval, "ReconnectCount": -1,
                  "ReconnectInterval": 120, "ReconnectNonce": 30}  # fmt: skip
        data = {"URL": url, "ClientConfig": config}
        return web.json_response({"code": 0, "msg": "ok", "data": data})

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("service_id") != str(SERVICE_ID):
            raise web.HTTPForbidden(text="bad service")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws, self._transport = ws, request.transport
        self.connections += 1
        try:
            async for msg in ws:
                if self._check(msg.type is WSMsgType.BINARY, f"a {msg.type.name} message"):
                    await self._got(ws, msg.data)
        finally:
            if self.ws is ws:
                self.ws = None
        return ws

    def header(self, frame: Any, key: str) -> str | None:
        return next((h.value for h in frame.headers if h.key == key), None)

    async def _got(self, ws: web.WebSocketResponse, data: bytes) -> None:
        frame = self.Frame()
        frame.ParseFromString(data)
        kind = self.header(frame, "type")
        if frame.method == 0 and kind == "ping":
            self._check(frame.service == SERVICE_ID, "ping without the service id")
            self.pings.append(frame)
            if not self.answer_pings:
                return
            pong = self.Frame()
            pong.CopyFrom(frame)
            del pong.headers[:]
            header = pong.headers.add()
            header.key, header.value = "type", "pong"
            pong.payload = json.dumps({"PingInterval": self.ping_interval}).encode()
            await ws.send_bytes(pong.SerializeToString())
        elif frame.method == 1:
            self.acks.append(frame)
            waiter = self._ack_waiters.pop(self.header(frame, "message_id") or "", None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
        else:
            self.problems.append(f"unexpected frame method {frame.method} type {kind}")

    async def wait_connected(self, connections: int = 1) -> None:
        async def ready() -> None:
            while self.ws is None or self.connections < connections:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ready(), WAIT)

    def data_frames(self, payload: bytes, message_id: str, parts: int) -> list[bytes]:
        size = -(-len(payload) // parts)
        frames = []
        for seq in range(parts):
            frame = self.Frame()
            frame.SeqID, frame.LogID, frame.service, frame.method = seq + 1, 99, SERVICE_ID, 1
            for key, value in (("type", "event"), ("message_id", message_id), ("sum", str(parts)),
                               ("seq", str(seq)), ("trace_id", "trace-1")):  # fmt: skip
                header = frame.headers.add()
                header.key, header.value = key, value
            frame.payload = payload[seq * size : (seq + 1) * size]
            frames.append(frame.SerializeToString())
        return frames

    async def push_event(
        self, payload: Any, *, parts: int = 1, order: list[int] | None = None
    ) -> Any:
        """Send an event over the live connection (in `parts` frames, in `order`); the ack."""
        await self.wait_connected()
        assert self.ws is not None
        message_id = f"ws-{next(self._ids)}"
        raw = json.dumps(payload, ensure_ascii=False).encode()
        frames = self.data_frames(raw, message_id, parts)
        waiter = asyncio.get_running_loop().create_future()
        self._ack_waiters[message_id] = waiter
        for n in order or range(parts):
            await self.ws.send_bytes(frames[n])
        ack = await asyncio.wait_for(waiter, WAIT)
        answer = json.loads(ack.payload)
        self._check(answer.get("code") == 200, f"ack code {answer.get('code')}")
        self._check(self.header(ack, "biz_rt") is not None, "ack without biz_rt")
        return ack

    async def send_raw(self, data: bytes) -> None:
        await self.wait_connected()
        assert self.ws is not None
        await self.ws.send_bytes(data)

    async def drop(self) -> None:
        """Cut the connection in the middle of a frame: a binary frame header, then nothing."""
        await self.wait_connected()
        self._transport.write(b"\x82\x7e\x01\x00" + b"\x08\x01")
        self._transport.abort()
