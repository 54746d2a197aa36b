"""DingTalk Stream mode: the bot dials out over a WebSocket, so a school needs no public address.

The protocol (PROTOCOLS.md 3.2) is small enough to speak directly over aiohttp's WebSocket client:

1. `POST {api_base}/v1.0/gateway/connections/open` with the app key and secret and the robot
   message subscription returns `{endpoint, ticket}` (the ticket is single-use);
2. connect `endpoint?ticket=...` and read JSON frames `{type, headers, data}`;
3. answer every frame with an ack carrying its `headers.messageId`: SYSTEM `ping` echoes its data,
   a CALLBACK robot message gets `{"response": null}` (then it is handled in a task of its own);
   SYSTEM `disconnect` means "open a new connection".

`run_forever` never returns: a refused gateway or a dropped socket is logged and the client
reconnects after an exponential backoff (1 s doubling to 60 s, back to 1 s once a connection was
established, however it ended). A frame that is not usable JSON (or nests absurdly deep, see
`bot.jsonbody`) is logged and ignored; the connection stays up. Frames are logged by type and id
only; their data holds the teachers' words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bot import jsonbody
from bot.channels.dingtalk_api import Http
from bot.logsafe import log_failure
from config.settings import Secret

log = logging.getLogger(__name__)

ROBOT_TOPIC = "/v1.0/im/bot/messages/get"
OPEN_TIMEOUT = aiohttp.ClientTimeout(total=10)
HEARTBEAT = 30.0  # WebSocket ping interval; a peer that stops answering is dropped
MAX_FRAME = 1024 * 1024
DRAIN_SECONDS = 5.0  # on shutdown, let messages being handled finish for this long

RobotHandler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float = 1.0
    cap: float = 60.0

    def after(self, delay: float) -> float:
        return min(delay * 2, self.cap)


class GatewayRefused(Exception):
    """The gateway did not hand out an endpoint and ticket."""


def ack(message_id: Any, data: str, code: int = 200, message: str = "OK") -> dict[str, Any]:
    return {
        "code": code,
        "headers": {"contentType": "application/json", "messageId": message_id},
        "message": message,
        "data": data,
    }


CALLBACK_ACK_DATA = json.dumps({"response": None})
EVENT_ACK_DATA = json.dumps({"status": "SUCCESS", "message": "ignored"})


class StreamClient:
    """Keeps one Stream connection open and hands robot messages (decoded `data`) to `on_robot`."""

    backoff = Backoff()

    def __init__(
        self, http: Http, api_base: str, app_key: str, app_secret: Secret, on_robot: RobotHandler
    ) -> None:
        self.http = http
        self.open_url = f"{api_base}/v1.0/gateway/connections/open"
        self.app_key = app_key
        self.app_secret = app_secret
        self.on_robot = on_robot
        self._handling: set[asyncio.Task[None]] = set()  # strong references until done
        self._connected = False  # the current attempt got as far as an open WebSocket

    async def run_forever(self) -> None:
        delay = self.backoff.first
        while True:
            self._connected = False
            try:
                await self._connect_once()
                log.info("dingtalk stream closed; reconnecting")
            except GatewayRefused as exc:
                log.warning("dingtalk stream gateway refused (%s); retry in %.1f s", exc, delay)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("dingtalk stream dropped (%s); retry in %.1f s", type(exc).__name__,
                            delay)  # fmt: skip
            except Exception as exc:
                log_failure(log, "dingtalk stream failed; retry in %.1f s", delay, exc=exc)
            if self._connected:  # the gateway and the socket worked: start the backoff over
                delay = self.backoff.first
            await asyncio.sleep(delay)
            delay = self.backoff.after(delay)

    async def drain(self) -> None:
        """Give messages being handled a moment to finish, then cancel the rest."""
        if self._handling:
            _, pending = await asyncio.wait(self._handling, timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def open(self) -> URL:
        """Ask the gateway for a connection; the WebSocket URL with its ticket."""
        body = {
            "clientId": self.app_key,
            "clientSecret": self.app_secret.value,
            "subscriptions": [{"type": "CALLBACK", "topic": ROBOT_TOPIC}],
            "ua": "homevisit",
            "localIp": "",
        }
        async with self.http.session().post(self.open_url, json=body, timeout=OPEN_TIMEOUT) as r:
            status, raw = r.status, await r.read()
        try:
            data = jsonbody.loads(raw) if status == 200 else None
        except jsonbody.BadJSON:
            data = None
        endpoint = data.get("endpoint") if isinstance(data, dict) else None
        ticket = data.get("ticket") if isinstance(data, dict) else None
        if not isinstance(endpoint, str) or not isinstance(ticket, str):
            raise GatewayRefused(f"HTTP {status}")
        return URL(endpoint).update_query(ticket=ticket)

    async def _connect_once(self) -> None:
        """One connection, until it ends or the server says "disconnect"."""
        url = await self.open()
        async with self.http.session().ws_connect(
            url,
            heartbeat=HEARTBEAT,
            max_msg_size=MAX_FRAME,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        ) as ws:
            self._connected = True
            log.info("dingtalk stream connected")
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if await self._on_frame(ws, msg.data):
                        break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    log.warning("dingtalk stream error: %s", type(ws.exception()).__name__)
                    break
                else:
                    log.warning("dingtalk stream: ignored a %s frame", msg.type.name)

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, raw: str) -> bool:
        """Ack and route one frame; True when the server asked us to disconnect."""
        try:
            frame = jsonbody.loads(raw)
            kind, headers = frame["type"], frame["headers"]
            message_id, topic = headers.get("messageId"), headers.get("topic")
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("dingtalk stream: unreadable frame ignored")
            return False
        if kind == "SYSTEM":
            if topic == "ping":
                await ws.send_json(ack(message_id, frame.get("data") or "{}"))
            elif topic == "disconnect":
                log.info("dingtalk stream: server asked to reconnect")
                return True
            else:
                log.info("dingtalk stream: system topic %r ignored", topic)
        elif kind == "CALLBACK" and topic == ROBOT_TOPIC:
            # Ack first: robot messages are not redelivered, and the ack must not wait on the
            # database. The message is handled in a task of its own (kept until it is done).
            await ws.send_json(ack(message_id, CALLBACK_ACK_DATA))
            self._handle_later(frame.get("data"), message_id)
        elif kind == "CALLBACK":
            await ws.send_json(ack(message_id, CALLBACK_ACK_DATA, 404, "unknown topic"))
        elif kind == "EVENT":
            await ws.send_json(ack(message_id, EVENT_ACK_DATA))
        else:
            log.info("dingtalk stream: frame type %r ignored", kind)
        return False

    def _handle_later(self, data: Any, message_id: Any) -> None:
        try:
            if not isinstance(data, str):
                raise jsonbody.BadJSON("data is not a JSON string")
            payload = jsonbody.loads(data)
        except jsonbody.BadJSON as exc:
            log.warning("dingtalk stream: robot frame %r ignored: %s", message_id, exc)
            return
        task = asyncio.create_task(self._handle(payload, message_id))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle(self, payload: Any, message_id: Any) -> None:
        try:
            await self.on_robot(payload)
        except Exception as exc:  # one bad message must not disturb the connection
            log_failure(log, "dingtalk stream: handling frame %r failed", message_id, exc=exc)


@contextlib.asynccontextmanager
async def running(client: StreamClient) -> AsyncIterator[asyncio.Task[None]]:
    """Run the client as a background task for the life of the block."""
    task = asyncio.create_task(client.run_forever(), name="dingtalk-stream")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.drain()
