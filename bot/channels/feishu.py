"""The Feishu (飞书) channel: a self-built app's bot, by webhook or by long connection.

Webhook mode (`FEISHU_MODE=webhook`, default) takes `POST /feishu/callback` (PROTOCOLS.md 4.1).
The Encrypt Key is required, so every body is `{"encrypt": ...}`:

- URL verification (the console's "save" button) comes encrypted but unsigned: its Verification
  Token is checked in constant time and the challenge echoed;
- every event is signed: `X-Lark-Signature` = sha256 over timestamp, nonce, Encrypt Key and the
  raw body, compared in constant time, with a timestamp at most `MAX_SKEW` from our clock; then
  decrypted, and its `header.token` must be the Verification Token.

Answers to bad requests, none of which writes anything: 401 for missing signature headers (or a
timestamp that is not a number), 403 for a wrong signature, a stale timestamp, a ciphertext that
does not decrypt under our key or a wrong Verification Token, 400 for a body that is not JSON or
lacks a field a message needs, 413 over 64 KiB. An event that is not a message we use (a user
opened the chat, a message was read, the bot joined a group) gets 200 and reaches no one.

Long-connection mode (`FEISHU_MODE=ws`, `bot.channels.feishu_ws`) hands the same event JSON to
`FeishuChannel.on_frame` and needs neither token nor key (the connection is authenticated).

Either way the turn starts at once and the request (or the frame's ack) waits at most
`REPLY_BUDGET` for it, well inside Feishu's 3 seconds; a slow turn finishes after the answer. The
teacher is the sender's `open_id`; `header.event_id` de-duplicates, in the dispatcher's
inbound table, so across restarts and Feishu's 7-hour redelivery window. The HTTP answer is never
a chat reply: each reply becomes an outbox row `feishu:reply:{event_id}:{n}` and goes out through
`im/v1/messages` with the row's key as its `uuid` (see `bot.channels.feishu_api`). A redelivered
event finds its rows there already and sends nothing again.

Group messages (the bot @-mentioned in a group) are answered 1:1 to the sender, never in the
group: the answers name students and their families' difficulties. Nothing here logs text,
names or open_ids: event ids (in `repr`), event types and codes only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeGuard

import aiohttp
from aiohttp import web

from bot import jsonbody
from bot.channels import feishu_crypto as crypto
from bot.channels.dingtalk_api import Http
from bot.channels.feishu_api import FeishuSender, TenantToken
from bot.channels.feishu_ws import WsClient, running
from bot.core.channels import FEISHU
from bot.core.ports import ChannelDeps, Clock, Conversations, Outbox, Sender
from bot.core.types import InboundMessage, MessageKind, OutboxMessage
from bot.locks import KeyedLocks
from bot.logsafe import log_failure
from bot.web import DELIVERY, DISPATCHER, SERVING, json_response
from config.settings import FeishuSettings, Settings

log = logging.getLogger(__name__)

CHANNEL = FEISHU
PATH = "/feishu/callback"
MESSAGE_EVENT = "im.message.receive_v1"
MAX_SKEW = timedelta(hours=1)
REPLY_BUDGET = 2.0  # seconds a request waits for its turn; Feishu gives up after 3
SHUTDOWN_GRACE = 5.0
MAX_ID = 128
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class BadEvent(ValueError):
    """An event we cannot read; the reason is safe to show the caller (no content, no ids)."""


@dataclass(frozen=True, slots=True)
class FeishuMessage:
    """What this channel needs from an `im.message.receive_v1` event."""

    event_id: str
    open_id: str
    kind: MessageKind
    text: str
    in_group: bool

    def inbound(self) -> InboundMessage:
        return InboundMessage(CHANNEL, self.open_id, self.text, self.kind, self.event_id)


def _usable_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and not _CONTROL.search(value)


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadEvent(f'"{name}" must be an object')
    return value


def event_type(payload: dict[str, Any]) -> str | None:
    """The v2 `header.event_type`, or the v1 `event.type`."""
    header, event = payload.get("header"), payload.get("event")
    found = header.get("event_type") if isinstance(header, dict) else None
    if found is None and isinstance(event, dict):
        found = event.get("type")
    return found if isinstance(found, str) else None


def parse_event(payload: Any) -> FeishuMessage | None:
    """A message from a user, None for any other event; BadEvent names what is missing."""
    payload = _object(payload, "body")
    if payload.get("schema") != "2.0":
        if payload.get("type") == "event_callback":
            return None  # a v1 event: this app subscribes to v2 messages only
        raise BadEvent('"schema" must be "2.0"')
    header = _object(payload.get("header"), "header")
    event_id = header.get("event_id")
    if not _usable_id(event_id):
        raise BadEvent('"header.event_id" must be text of at most 128 characters')
    if header.get("event_type") != MESSAGE_EVENT:
        return None
    event = _object(payload.get("event"), "event")
    sender = _object(event.get("sender"), "event.sender")
    if sender.get("sender_type") != "user":
        return None  # another app or a bot: nobody to answer
    open_id = _object(sender.get("sender_id"), "event.sender.sender_id").get("open_id")
    if not _usable_id(open_id):
        raise BadEvent('"event.sender.sender_id.open_id" must be text')
    message = _object(event.get("message"), "event.message")
    message_type, chat_type = message.get("message_type"), message.get("chat_type")
    if not isinstance(message_type, str) or not isinstance(chat_type, str):
        raise BadEvent('"event.message" needs "message_type" and "chat_type"')
    kind, text = MessageKind.UNSUPPORTED, ""  # image, file, audio, post, sticker ...
    if message_type == "text":
        kind, text = MessageKind.TEXT, _text(message)
    return FeishuMessage(event_id, open_id, kind, text, in_group=chat_type != "p2p")


def _text(message: dict[str, Any]) -> str:
    """The text inside the JSON-string `content`, without the @-mention placeholders."""
    content = message.get("content")
    try:
        body = jsonbody.loads(content) if isinstance(content, str) else None
    except jsonbody.BadJSON:
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise BadEvent('"event.message.content" must be a JSON string with "text"')
    mentions = message.get("mentions")
    for mention in mentions if isinstance(mentions, list) else ():
        key = mention.get("key") if isinstance(mention, dict) else None
        if isinstance(key, str) and key:
            text = text.replace(key, " ")  # "@_user_1 家访" -> "家访"
    return text.strip()


def reply_key(event_id: str, index: int) -> str:
    return f"feishu:reply:{event_id}:{index}"


class FeishuChannel:
    """Runs a message's turn and queues its replies; keeps the tasks until they are done."""

    def __init__(
        self, dispatcher: Conversations, outbox: Outbox, clock: Clock, poke: Callable[[], None]
    ) -> None:
        self.dispatcher = dispatcher
        self.outbox = outbox
        self.clock = clock
        self.poke = poke
        self.reply_budget = REPLY_BUDGET
        self._locks = KeyedLocks()  # turn and replies under one lock: answers leave in order
        self._tasks: set[asyncio.Task[None]] = set()

    async def answer(self, message: FeishuMessage) -> None:
        """Start the turn; return once it is done or the reply budget is spent."""
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            async with asyncio.timeout(self.reply_budget):
                await asyncio.shield(task)
        except TimeoutError:
            log.info("feishu event_id=%r: turn over budget, answered first", message.event_id)

    async def on_frame(self, payload: bytes) -> None:
        """Long-connection mode: one event's JSON (already authenticated by the connection)."""
        try:
            message = parse_event(jsonbody.loads(payload))
        except (jsonbody.BadJSON, BadEvent) as exc:
            log.warning("feishu event ignored: %s", exc)
            return
        if message is not None:
            await self.answer(message)

    async def _handle(self, message: FeishuMessage) -> None:
        try:
            async with self._locks.hold(message.open_id):
                replies = await self.dispatcher.handle(message.inbound())
                await self._queue(message, [r for r in replies if r.strip()])
        except Exception as exc:  # type and place only: the message may quote a student
            log_failure(log, "feishu event_id=%r failed", message.event_id, exc=exc)

    async def _queue(self, message: FeishuMessage, replies: Sequence[str]) -> None:
        if not replies:
            return
        now = self.clock.now()
        rows = [
            OutboxMessage(reply_key(message.event_id, n), CHANNEL, message.open_id, "reply", text)
            for n, text in enumerate(replies)
        ]
        try:
            stored = await self.outbox.enqueue(rows, not_before=now, now=now)
        except Exception as exc:  # the turn is saved; "继续" repeats the current question
            log.warning("feishu event_id=%r: replies not stored (%s)", message.event_id,
                        type(exc).__name__)  # fmt: skip
            return
        if stored:
            self.poke()
        else:
            log.info("feishu event_id=%r was answered before: not sent again", message.event_id)

    async def drain(self, grace: float = SHUTDOWN_GRACE) -> None:
        """On shutdown: let running turns finish (queuing their replies), cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class Webhook:
    """`POST /feishu/callback`: authenticate, decrypt, answer (see the module docstring)."""

    def __init__(self, channel: FeishuChannel, conf: FeishuSettings) -> None:
        assert conf.encrypt_key is not None and conf.verification_token is not None
        self.channel = channel
        self.key = conf.encrypt_key.value
        self.token = conf.verification_token.value.encode("utf-8")

    async def callback(self, request: web.Request) -> web.Response:
        body = await request.read()  # over client_max_size: 413
        try:
            outer = jsonbody.loads(body)
        except jsonbody.BadJSON as exc:
            return _error(400, f"body is {exc}")
        encrypted = outer.get("encrypt") if isinstance(outer, dict) else None
        if not isinstance(encrypted, str):
            log.warning("feishu callback refused: not encrypted (is the Encrypt Key set?)")
            return _error(400, 'body must be {"encrypt": ...}')
        timestamp = request.headers.get("X-Lark-Request-Timestamp")
        nonce = request.headers.get("X-Lark-Request-Nonce")
        signature = request.headers.get("X-Lark-Signature")
        signed = bool(timestamp and nonce and signature)
        if signed:
            assert timestamp and nonce and signature
            refused = self._check_signature(timestamp, nonce, signature, body)
            if refused is not None:
                return refused
        try:
            payload = jsonbody.loads(crypto.decrypt(self.key, encrypted))
        except crypto.DecryptError as exc:
            log.warning("feishu callback refused: does not decrypt (%s)", exc)
            return _error(403, "forbidden")
        except jsonbody.BadJSON as exc:
            return _error(400, f"decrypted body is {exc}")
        if not isinstance(payload, dict):
            return _error(400, "decrypted body must be a JSON object")
        if payload.get("type") == "url_verification":
            return self._verify_url(payload)
        if not signed:
            return _error(401, "missing X-Lark-Request-Timestamp/Nonce/Signature")
        if not self._token_ok(payload):
            log.warning("feishu callback refused: wrong Verification Token")
            return _error(403, "forbidden")
        try:
            message = parse_event(payload)
        except BadEvent as exc:
            return _error(400, str(exc))
        if message is None:
            log.info("feishu event %r ignored", event_type(payload))
            return json_response({})
        log.info("feishu message event_id=%r", message.event_id)
        await self.channel.answer(message)
        return json_response({})

    def _check_signature(
        self, timestamp: str, nonce: str, signature: str, body: bytes
    ) -> web.Response | None:
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            return _error(401, "X-Lark-Request-Timestamp must be a number of seconds")
        if not crypto.signature_ok(timestamp, nonce, self.key, body, signature):
            log.warning("feishu callback refused: wrong signature")
            return _error(403, "forbidden")
        skew = abs(self.channel.clock.now().timestamp() - int(timestamp))
        if skew > MAX_SKEW.total_seconds():
            log.warning("feishu callback refused: timestamp %.0f s away from our clock", skew)
            return _error(403, "stale timestamp")
        return None

    def _token_ok(self, payload: dict[str, Any]) -> bool:
        header = payload.get("header")
        token = header.get("token") if isinstance(header, dict) else payload.get("token")
        if not isinstance(token, str):
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), self.token)

    def _verify_url(self, payload: dict[str, Any]) -> web.Response:
        challenge = payload.get("challenge")
        if not self._token_ok(payload):
            log.warning("feishu URL verification refused: wrong Verification Token")
            return _error(403, "forbidden")
        if not isinstance(challenge, str):
            return _error(400, '"challenge" must be text')
        return json_response({"challenge": challenge})


def _error(status: int, text: str) -> web.Response:
    return json_response({"error": text}, status=status)


FEISHU_CHANNEL = web.AppKey("feishu", FeishuChannel)


def install(app: web.Application, settings: Settings, deps: ChannelDeps) -> Sender:
    """Add the callback route or the long connection; return the Sender of channel "feishu"."""
    conf = settings.feishu
    assert conf is not None
    http = Http()
    sender = FeishuSender(
        http, TenantToken(http, conf.api_base, conf.app_id, conf.app_secret, deps.clock),
        conf.api_base,
    )  # fmt: skip
    channel = FeishuChannel(app[DISPATCHER], deps.outbox, deps.clock, lambda: app[DELIVERY].poke())
    app[FEISHU_CHANNEL] = channel
    client: WsClient | None = None
    if conf.mode == "webhook":
        app.router.add_post(PATH, Webhook(channel, conf).callback)
    elif app[SERVING]:  # a one-shot CLI job only sends; it must not take events
        ws_http = Http(aiohttp.ClientTimeout(total=None, sock_connect=10))
        client = WsClient(ws_http, conf.api_base, conf.app_id, conf.app_secret, channel.on_frame)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        if client is None:
            yield
        else:
            async with running(client):
                yield
            await client.http.close()
        await channel.drain()
        await http.close()

    app.cleanup_ctx.append(lifecycle)
    return sender
