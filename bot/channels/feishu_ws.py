"""Feishu long-connection mode: the bot dials out, so a school needs no public address.

The protocol (PROTOCOLS.md 4.4, as lark-oapi's `ws.Client` speaks it):

1. `POST {api_base}/callback/ws/endpoint` with the app id and secret returns the WebSocket URL
   (its query names the `service_id`) and a `ClientConfig` (`PingInterval`, seconds);
2. every WebSocket message is one binary protobuf `pbbp2.Frame`; `method` 0 is CONTROL (header
   `type` ping/pong), 1 is DATA (`type` event);
3. the client pings (a CONTROL frame with `service` = service_id) every PingInterval; a pong may
   carry a new ClientConfig;
4. a DATA frame is acknowledged by sending it back with payload `{"code": 200}` and a header
   `biz_rt` (milliseconds spent); a payload split over several frames (headers `sum`, `seq`,
   `message_id`) is put together first and only the last part is acknowledged. Parts that stay
   incomplete for `PARTS_TTL` are dropped (Feishu re-pushes the event, as for any lost ack).

Each event is handled in a task of its own, so the connection keeps reading and pinging while a
turn runs; its ack goes out when the handler returns (the channel returns within its reply
budget, inside Feishu's 3 seconds). `run_forever` never returns: a refused endpoint request, a
failed handshake or a dropped or silent socket is logged and the client reconnects after an
exponential backoff (1 s doubling to 60 s, from 1 s again once a connection was established).
Nothing blocks the event loop, so the HTTP server keeps serving throughout.

Why not the official `lark-oapi` SDK (README "Feishu"): its `ws.Client.start()` runs its own
event loop to completion (`run_until_complete` on a loop taken at import time), fetches the
endpoint with blocking `requests`, calls handlers synchronously and logs whole payloads at debug
level. It cannot share aiohttp's loop without a thread, and a thread would need its own
database and outbox plumbing. The frame format is nine fields, so `Frame` below is a small
hand-written protobuf codec instead of the `protobuf` package plus generated code; tests check
it both ways against lark-oapi's generated `pbbp2_pb2`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from bot import jsonbody
from bot.channels.dingtalk_api import Http
from bot.channels.dingtalk_stream import Backoff
from bot.logsafe import log_failure
from config.settings import Secret

log = logging.getLogger(__name__)

ENDPOINT_PATH = "/callback/ws/endpoint"
OPEN_TIMEOUT = aiohttp.ClientTimeout(total=10)
CONTROL, DATA = 0, 1
DEFAULT_PING = 120.0  # seconds, until the endpoint or a pong says otherwise
SILENCE_PINGS = 3  # nothing received for this many ping intervals: the socket is dead
MAX_FRAME = 1024 * 1024
MAX_PARTS = 64  # of one split payload
MAX_PENDING = 32  # split payloads being put together at once
PARTS_TTL = 5.0  # seconds (lark-oapi keeps parts 5 s too)
DRAIN_SECONDS = 5.0

EventHandler = Callable[[bytes], Awaitable[None]]


# ---------------------------------------------------------------- the pbbp2.Frame codec


class FrameError(ValueError):
    """Bytes that are not a well-formed Frame."""


@dataclass
class Frame:
    """pbbp2.Frame: SeqID(1) LogID(2) service(3) method(4) headers(5) payload_encoding(6)
    payload_type(7) payload(8) LogIDNew(9); a header is {key(1), value(2)}."""

    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload_encoding: str = ""
    payload_type: str = ""
    payload: bytes = b""
    log_id_new: str = ""

    def header(self, key: str) -> str | None:
        return next((v for k, v in self.headers if k == key), None)

    def encode(self) -> bytes:
        out = bytearray()
        for number, value in ((1, self.seq_id), (2, self.log_id)):
            _key(out, number, 0)
            _varint(out, value & 0xFFFFFFFFFFFFFFFF)
        for number, value in ((3, self.service), (4, self.method)):
            _key(out, number, 0)
            _varint(out, value & 0xFFFFFFFFFFFFFFFF)  # a negative int32 takes ten bytes
        for name, text in self.headers:
            inner = bytearray()
            _bytes(inner, 1, name.encode("utf-8"))
            _bytes(inner, 2, text.encode("utf-8"))
            _bytes(out, 5, bytes(inner))
        for number, label in ((6, self.payload_encoding), (7, self.payload_type)):
            if label:
                _bytes(out, number, label.encode("utf-8"))
        if self.payload:
            _bytes(out, 8, self.payload)
        if self.log_id_new:
            _bytes(out, 9, self.log_id_new.encode("utf-8"))
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        frame = cls()
        for number, value in _fields(data):
            if number == 1:
                frame.seq_id = _as_int(value)
            elif number == 2:
                frame.log_id = _as_int(value)
            elif number == 3:
                frame.service = _int32(_as_int(value))
            elif number == 4:
                frame.method = _int32(_as_int(value))
            elif number == 5:
                frame.headers.append(_header(_as_bytes(value)))
            elif number == 6:
                frame.payload_encoding = _text(value)
            elif number == 7:
                frame.payload_type = _text(value)
            elif number == 8:
                frame.payload = _as_bytes(value)
            elif number == 9:
                frame.log_id_new = _text(value)
        return frame


def _key(out: bytearray, number: int, wire: int) -> None:
    _varint(out, number << 3 | wire)


def _varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _bytes(out: bytearray, number: int, value: bytes) -> None:
    _key(out, number, 2)
    _varint(out, len(value))
    out += value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FrameError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint or bytes) in order; fixed-width fields are skipped."""
    found: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise FrameError("field number 0")
        if wire == 0:
            value, pos = _read_varint(data, pos)
            found.append((number, value))
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise FrameError("truncated field")
            found.append((number, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise FrameError("truncated field")
        else:
            raise FrameError(f"unsupported wire type {wire}")
    return found


def _as_int(value: int | bytes) -> int:
    if not isinstance(value, int):
        raise FrameError("a number field holds bytes")
    return value & 0xFFFFFFFFFFFFFFFF


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise FrameError("a bytes field holds a number")
    return value


def _text(value: int | bytes) -> str:
    try:
        return _as_bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("a string field is not UTF-8") from exc


def _header(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, item in _fields(data):
        if number == 1:
            key = _text(item)
        elif number == 2:
            value = _text(item)
    return key, value


# ---------------------------------------------------------------- the client


class EndpointRefused(Exception):
    """The endpoint request did not hand out a WebSocket URL."""


@dataclass
class _Parts:
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)


class WsClient:
    """Keeps one long connection open and hands each event's JSON payload to `on_event`."""

    backoff = Backoff()

    def __init__(
        self, http: Http, api_base: str, app_id: str, app_secret: Secret, on_event: EventHandler
    ) -> None:
        self.http = http
        self.endpoint_url = api_base + ENDPOINT_PATH
        self.app_id = app_id
        self.app_secret = app_secret
        self.on_event = on_event
        self.ping_interval = DEFAULT_PING
        self._service = 0
        self._parts: dict[str, _Parts] = {}
        self._handling: set[asyncio.Task[None]] = set()  # strong references until done
        self._send_lock = asyncio.Lock()
        self._connected = False

    async def run_forever(self) -> None:
        delay = self.backoff.first
        while True:
            self._connected = False
            try:
                await self._connect_once()
                log.info("feishu long connection closed; reconnecting")
            except EndpointRefused as exc:
                log.warning("feishu endpoint refused (%s); retry in %.1f s", exc, delay)
            except aiohttp.WSServerHandshakeError as exc:
                log.warning("feishu handshake refused (HTTP %s %r); retry in %.1f s", exc.status,
                            exc.headers.get("handshake-msg") if exc.headers else None,
                            delay)  # fmt: skip
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("feishu long connection dropped (%s); retry in %.1f s",
                            type(exc).__name__, delay)  # fmt: skip
            except Exception as exc:
                log_failure(log, "feishu long connection failed; retry in %.1f s", delay, exc=exc)
            if self._connected:
                delay = self.backoff.first
            await asyncio.sleep(delay)
            delay = self.backoff.after(delay)

    async def open(self) -> URL:
        """Ask for an endpoint; the WebSocket URL. Sets the service id and the ping interval."""
        body = {"AppID": self.app_id, "AppSecret": self.app_secret.value}
        async with self.http.session().post(
            self.endpoint_url, json=body, headers={"locale": "zh"}, timeout=OPEN_TIMEOUT
        ) as r:
            status, raw = r.status, await r.read()
        try:
            answer = jsonbody.loads(raw) if status == 200 else None
        except jsonbody.BadJSON:
            answer = None
        data = answer.get("data") if isinstance(answer, dict) else None
        url = data.get("URL") if isinstance(data, dict) else None
        code = answer.get("code") if isinstance(answer, dict) else None
        if code != 0 or not isinstance(url, str):
            raise EndpointRefused(f"HTTP {status} code {code}")
        service = URL(url).query.get("service_id", "")
        if not service.isdigit():
            raise EndpointRefused("no service_id in the URL")
        self._service = int(service)
        assert isinstance(data, dict)
        self._configure(data.get("ClientConfig"))
        return URL(url)

    def _configure(self, config: object) -> None:
        ping = config.get("PingInterval") if isinstance(config, dict) else None
        if isinstance(ping, int | float) and not isinstance(ping, bool) and 1 <= ping <= 3600:
            self.ping_interval = float(ping)

    async def _connect_once(self) -> None:
        url = await self.open()
        async with self.http.session().ws_connect(
            url,
            max_msg_size=MAX_FRAME,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        ) as ws:
            self._connected = True
            log.info("feishu long connection open")
            pinger = asyncio.create_task(self._ping_loop(ws))
            try:
                await self._read(ws)
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive(timeout=self.ping_interval * SILENCE_PINGS)
            if msg.type is aiohttp.WSMsgType.BINARY:
                await self._on_frame(ws, msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.CLOSING):  # fmt: skip
                return
            elif msg.type is aiohttp.WSMsgType.ERROR:
                log.warning("feishu long connection error: %s", type(ws.exception()).__name__)
                return
            else:
                log.warning("feishu long connection: ignored a %s message", msg.type.name)

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            ping = Frame(service=self._service, method=CONTROL, headers=[("type", "ping")])
            await self._send(ws, ping)
            await asyncio.sleep(self.ping_interval)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, frame: Frame) -> None:
        async with self._send_lock:
            await ws.send_bytes(frame.encode())

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
        try:
            frame = Frame.decode(data)
        except FrameError as exc:
            log.warning("feishu long connection: unreadable frame ignored (%s)", exc)
            return
        kind = frame.header("type")
        if frame.method == CONTROL:
            if kind == "pong" and frame.payload:
                with contextlib.suppress(jsonbody.BadJSON):
                    self._configure(jsonbody.loads(frame.payload))
            return
        if frame.method != DATA:
            log.info("feishu long connection: frame method %s ignored", frame.method)
            return
        payload = self._assemble(frame)
        if payload is None:
            return
        if kind != "event":  # cards and the like: this app has none; nothing to retry
            log.info("feishu long connection: %r frame acknowledged, not used", kind)
            await self._ack(ws, frame, 200, 0.0)
            return
        task = asyncio.create_task(self._handle(ws, frame, payload))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    def _assemble(self, frame: Frame) -> bytes | None:
        """The whole payload once every part is in; None while parts are missing."""
        total, seq = frame.header("sum"), frame.header("seq")
        message_id = frame.header("message_id")
        if not total or total == "1" or message_id is None:
            return frame.payload
        if not total.isdigit() or not (seq or "").isdigit() or not 1 < int(total) <= MAX_PARTS:
            log.warning("feishu long connection: part %r/%r of %r dropped", seq, total,
                        message_id)  # fmt: skip
            return None
        now = time.monotonic()
        for stale in [k for k, p in self._parts.items() if now - p.started > PARTS_TTL]:
            del self._parts[stale]
        if message_id not in self._parts and len(self._parts) >= MAX_PENDING:
            log.warning("feishu long connection: too many split payloads; %r dropped", message_id)
            return None
        parts = self._parts.setdefault(message_id, _Parts(now))
        if int(seq or 0) < int(total):
            parts.parts[int(seq or 0)] = frame.payload
        if len(parts.parts) < int(total):
            return None
        del self._parts[message_id]
        return b"".join(parts.parts[n] for n in range(int(total)))

    async def _handle(
        self, ws: aiohttp.ClientWebSocketResponse, frame: Frame, payload: bytes
    ) -> None:
        started = time.monotonic()
        code = 200
        try:
            await self.on_event(payload)
        except Exception as exc:
            code = 500
            log_failure(log, "feishu event %r failed", frame.header("message_id"), exc=exc)
        try:
            await self._ack(ws, frame, code, time.monotonic() - started)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            # The socket went away meanwhile: Feishu re-pushes, and the turn is de-duplicated.
            log.info("feishu ack not sent (%s)", type(exc).__name__)

    async def _ack(
        self, ws: aiohttp.ClientWebSocketResponse, frame: Frame, code: int, seconds: float
    ) -> None:
        ack = Frame(
            seq_id=frame.seq_id,
            log_id=frame.log_id,
            service=frame.service,
            method=frame.method,
            headers=[*frame.headers, ("biz_rt", str(int(seconds * 1000)))],
            payload_encoding=frame.payload_encoding,
            payload_type=frame.payload_type,
            payload=json.dumps({"code": code}).encode(),
            log_id_new=frame.log_id_new,
        )
        await self._send(ws, ack)

    async def drain(self) -> None:
        """Give events being handled a moment to finish, then cancel the rest."""
        if self._handling:
            _, pending = await asyncio.wait(set(self._handling), timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(client: WsClient) -> AsyncIterator[asyncio.Task[None]]:
    """Run the client as a background task for the life of the block."""
    task = asyncio.create_task(client.run_forever(), name="feishu-ws")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.drain()
