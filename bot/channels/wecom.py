"""The WeCom (企业微信) self-built-app channel: ``GET``/``POST /wecom/callback`` and the sender.

Inbound (PROTOCOLS.md section 1): the GET handshake echoes the decrypted ``echostr`` as bare
text; each POST is verified (``msg_signature``), decrypted, parsed and handed to the dispatcher as
an `InboundMessage` from the member's UserID (``FromUserName``), which the store maps to a staff
member through the identities table.

Answers to bad requests, none of which touches the database:

- 400: a query parameter is missing, the timestamp is not a number, or the XML (outer or
  decrypted) is unusable: syntax, a DTD or entities (defusedxml), a missing field;
- 403: the signature does not match, the timestamp is more than `REPLAY_WINDOW` away from the app
  clock, or a correctly signed ciphertext does not decrypt to an envelope for our CorpID (bad
  base64, bad padding, another receive id). One status for every authentication failure: the
  sender knows the token but not our key, or is not talking to us; nothing to repair by retrying;
- 413: a body over 64 KiB (the app's ``client_max_size``).

Replies: the turn runs as a task. When it finishes within the reply budget (`REPLY_BUDGET`, well
under WeCom's 5-second deadline) the answer is one encrypted passive reply with every reply text
joined by a blank line (passive replies do not count against the per-member send limits).
Otherwise the request is answered with an empty 200 and, when the turn finishes, its texts go to
the outbox and from there through ``message/send``. A joined reply over 2,048 bytes also goes the
outbox way, as several messages: a passive part plus pushed parts could arrive out of order.
Characters XML 1.0 cannot carry (U+FFFF, most control characters, lone surrogates) are replaced
by U+FFFD in every reply, so a passive reply is always well-formed XML.

Events: ``subscribe`` and ``enter_agent`` get the greeting and the help text; other events (menu
clicks and the like, which this app does not use) get an empty 200 and reach no one. Message
types other than text (image, voice, location, ...) become UNSUPPORTED: a polite "please reply
in text", never an error.

Nothing here logs message content, names or UserIDs: message ids, types and errcodes only, and
client-supplied values in `repr` form, so a newline or NUL in them cannot forge a log line. A
message id never carries the UserID (see `message_key`), so neither do the log lines, the
dispatcher's or the outbox keys that quote it. Unexpected exceptions are logged by type and place
(`bot.logsafe.log_failure`), never by their message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web

from bot.channels.wecom_api import TEXT_LIMIT, WeComClient, split_text
from bot.channels.wecom_crypto import (
    DecryptError,
    MalformedMessage,
    SignatureError,
    WeComCrypto,
    WeComMessage,
    xml_text,
)
from bot.core.ports import ChannelDeps, Conversations, Sender
from bot.core.types import InboundMessage, MessageKind, OutboxMessage
from bot.logsafe import log_failure
from bot.web import DELIVERY, DISPATCHER
from config.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "wecom"
PATH = "/wecom/callback"
REPLAY_WINDOW = timedelta(minutes=5)
REPLY_BUDGET = 3.0  # seconds; WeCom gives up on a callback after 5
SHUTDOWN_GRACE = 5.0  # seconds to let running turns finish (and queue their replies) on exit
GREETED_EVENTS = frozenset({"subscribe", "enter_agent"})
XML = "text/xml"
_MSG_ID = re.compile(r"[0-9]{1,20}")  # WeCom's MsgId: a 64-bit number
_KEY_LABEL = b"homevisit wecom message key\0"


def reply_key(message_id: str, index: int) -> str:
    """Outbox idempotency key of the ``index``-th pushed piece of the reply to a message."""
    return f"wecom-reply:{message_id}:{index}"


def message_key(msg: WeComMessage, secret: bytes) -> str:
    """The de-duplication id of a callback; it never contains the member's UserID.

    A message's MsgId (a 64-bit number) as it is. Events have no MsgId: WeCom tells them apart
    by sender and CreateTime, but "UserID:CreateTime" would name the member (a UserID is often a
    name in pinyin) in every log line and outbox key that quotes the id. So for events, and for
    anything whose MsgId is not such a number, the id is an HMAC of sender, CreateTime, MsgType
    and MsgId under ``secret`` (the app's EncodingAESKey): the same for every retry, on every
    instance and after a restart, and meaningless without the key.
    """
    if msg.msg_type != "event" and msg.msg_id and _MSG_ID.fullmatch(msg.msg_id):
        return msg.msg_id
    basis = f"{msg.from_user}\0{msg.create_time}\0{msg.msg_type}\0{msg.msg_id or ''}".encode()
    return "h:" + hmac.new(secret, _KEY_LABEL + basis, hashlib.sha256).hexdigest()[:32]


def to_inbound(msg: WeComMessage, secret: bytes) -> InboundMessage | None:
    """Translate a decrypted callback; None for an event nobody needs to hear about."""
    user = msg.from_user
    message_id = message_key(msg, secret)
    if msg.msg_type == "event":
        if (msg.event or "").lower() not in GREETED_EVENTS:
            return None
        return InboundMessage(CHANNEL, user, kind=MessageKind.EVENT, message_id=message_id)
    if msg.msg_type == "text":
        return InboundMessage(CHANNEL, user, msg.content or "", message_id=message_id)
    return InboundMessage(CHANNEL, user, kind=MessageKind.UNSUPPORTED, message_id=message_id)


@dataclass(eq=False)
class _Flight:
    """One message's turn while it runs. ``deferred``: some request already answered empty."""

    task: asyncio.Task[str | None] = field(init=False)
    deferred: bool = False


class WeComChannel:
    """The callback routes of one WeCom app. ``reply_budget`` may be lowered by tests.

    The reply machinery (`_answer` and what it calls) is shared with the WeChat Official
    Account channel (`bot.channels.wechat`), which subclasses this with its own `channel`.
    """

    channel = CHANNEL

    def __init__(self, settings: Settings, deps: ChannelDeps) -> None:
        wecom = settings.wecom
        assert wecom is not None  # installed only when configured
        self.crypto = WeComCrypto(wecom.token.value, wecom.aes_key.value, wecom.corp_id)
        self._key_secret = wecom.aes_key.value.encode()
        self._init_replies(deps)

    def _init_replies(self, deps: ChannelDeps) -> None:
        self.deps = deps
        self.reply_budget = REPLY_BUDGET
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[str | None]] = set()  # strong references until done

    # -- GET: URL verification

    async def verify_url(self, request: web.Request) -> web.Response:
        query = _params(request, "msg_signature", "timestamp", "nonce", "echostr")
        if isinstance(query, web.Response):
            return query
        signature, timestamp, nonce, echostr = query
        refused = self._refuse_timestamp(timestamp)
        if refused is not None:
            return refused
        try:
            plaintext = self.crypto.verify_url(signature, timestamp, nonce, echostr)
        except (SignatureError, DecryptError) as exc:
            log.warning("wecom URL verification refused: %s", type(exc).__name__)
            return _text(403, "forbidden")
        return _text(200, plaintext)

    # -- POST: one encrypted message or event

    async def callback(self, request: web.Request) -> web.Response:
        query = _params(request, "msg_signature", "timestamp", "nonce")
        if isinstance(query, web.Response):
            return query
        signature, timestamp, nonce = query
        refused = self._refuse_timestamp(timestamp)
        if refused is not None:
            return refused
        body = await request.read()  # over client_max_size: 413
        try:
            msg = self.crypto.decrypt_message(signature, timestamp, nonce, body)
        except MalformedMessage as exc:
            log.warning("wecom callback refused: malformed (%r)", str(exc))
            return _text(400, "malformed message")
        except (SignatureError, DecryptError) as exc:
            log.warning("wecom callback refused: %s", type(exc).__name__)
            return _text(403, "forbidden")
        message = to_inbound(msg, self._key_secret)
        if message is None:
            log.info("wecom event %r ignored", msg.event)
            return _text(200, "")
        log.info("wecom %r message_id=%r", msg.msg_type, message.message_id)
        reply = await self._answer(message, request.app[DISPATCHER], request.app[DELIVERY].poke)
        if reply is None:
            return _text(200, "")
        now = int(self.deps.clock.now().timestamp())
        xml = self.crypto.encrypt_reply(
            msg.from_user, reply, timestamp=str(now), nonce=secrets.token_hex(8), create_time=now
        )
        return web.Response(text=xml, content_type=XML)

    def _refuse_timestamp(self, timestamp: str) -> web.Response | None:
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            return _text(400, "timestamp must be a number of seconds")
        skew = abs(self.deps.clock.now().timestamp() - int(timestamp))
        if skew > REPLAY_WINDOW.total_seconds():
            log.warning(
                "%s callback refused: timestamp %.0f s away from our clock", self.channel, skew
            )
            return _text(403, "stale timestamp")
        return None

    # -- replies: passive within the budget, else through the outbox

    async def _answer(
        self, message: InboundMessage, dispatcher: Conversations, poke: Callable[[], None]
    ) -> str | None:
        """The passive reply text, or None for an empty 200 (replies then go by the outbox).

        WeCom retries a callback it got no answer to, and a retry may arrive while the first
        request's turn is still running. Both requests then share one turn (the `_Flight`, keyed
        by message id), so a retry never waits behind the per-conversation lock for a turn that
        the dispatcher would only answer from its de-duplication table anyway. Whoever gives up
        waiting first marks the flight deferred; from then on every request for that id answers
        empty and the turn's end queues the replies once: WeCom shows at most one answer, either
        the passive one (a retry then gets the same passive reply again) or the pushed one.
        After the turn, the deferred decision is durable as the outbox rows themselves, so a
        retry that arrives later or after a restart also answers empty (see `_run`). A crash
        after the turn committed but before its replies were queued leaves no rows: a retry
        then gets the stored replies passively, which is the only copy the teacher sees.
        """
        assert message.message_id is not None  # every WeCom message and event gets one
        flight = self._flights.get(message.message_id)
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.create_task(self._run(flight, message, dispatcher, poke))
            self._flights[message.message_id] = flight
            self._tasks.add(flight.task)
            flight.task.add_done_callback(self._landed(message.message_id, flight))
        elif flight.deferred:
            return None
        try:
            async with asyncio.timeout(self.reply_budget):
                return await asyncio.shield(flight.task)
        except TimeoutError:
            pass
        except asyncio.CancelledError:  # WeCom hung up: let the outbox carry the answer
            if not flight.task.done():
                flight.deferred = True
            raise
        # No await between this check and the flag: the task cannot finish in between, so its
        # own check after the turn sees the flag.
        if flight.task.done():
            return flight.task.result()
        flight.deferred = True
        log.info(
            "%s message_id=%r: turn over budget, reply is pushed", self.channel, message.message_id
        )
        return None

    def _landed(
        self, message_id: str, flight: _Flight
    ) -> Callable[[asyncio.Task[str | None]], None]:
        def done(task: asyncio.Task[str | None]) -> None:
            self._tasks.discard(task)
            if self._flights.get(message_id) is flight:
                del self._flights[message_id]
            exc = None if task.cancelled() else task.exception()
            if exc is not None:  # its message may quote a student: type and place only
                log_failure(
                    log, "%s reply task failed message_id=%r", self.channel, message_id, exc=exc
                )

        return done

    async def _run(
        self,
        flight: _Flight,
        message: InboundMessage,
        dispatcher: Conversations,
        poke: Callable[[], None],
    ) -> str | None:
        """Run the turn; return the passive reply, or queue the replies and return None."""
        assert message.message_id is not None
        if await self._already_queued(message.message_id):
            flight.deferred = True  # answered empty before (maybe by an earlier process)
            return None
        # What XML cannot carry becomes U+FFFD, here already: a lone surrogate would break
        # the byte count below, and pushed replies then read the same as a passive one.
        replies = [xml_text(r) for r in await dispatcher.handle(message) if r.strip()]
        joined = "\n\n".join(replies)
        if not flight.deferred and joined and len(joined.encode("utf-8")) <= TEXT_LIMIT:
            return joined
        flight.deferred = True
        if replies:
            await self._queue(message, replies)
            poke()
        return None

    async def _already_queued(self, message_id: str) -> bool:
        try:
            return await self.deps.outbox.contains(self._reply_key(message_id, 0))
        except Exception as exc:  # the turn itself will meet the database trouble and say so
            log.warning(
                "%s outbox look-up failed message_id=%r: %s",
                self.channel,
                message_id,
                type(exc).__name__,
            )
            return False

    def _reply_key(self, message_id: str, index: int) -> str:
        return f"{self.channel}-reply:{message_id}:{index}"

    async def _queue(self, message: InboundMessage, replies: list[str]) -> None:
        assert message.message_id is not None
        pieces = [piece for reply in replies for piece in split_text(reply, TEXT_LIMIT)]
        now = self.deps.clock.now()
        message_id, recipient = message.message_id, message.user_id
        rows = [
            OutboxMessage(self._reply_key(message_id, i), self.channel, recipient, "reply", piece)
            for i, piece in enumerate(pieces)
        ]
        try:
            await self.deps.outbox.enqueue(rows, not_before=now, now=now)
        except Exception as exc:
            # The turn is saved; only its answer is lost. A retry of this message gets it
            # passively (no outbox rows), and "继续" repeats the current question.
            log_failure(
                log, "%s could not queue the reply message_id=%r", self.channel, message_id, exc=exc
            )

    async def drain(self, grace: float = SHUTDOWN_GRACE) -> None:
        """On shutdown: let running turns finish (queuing their replies), then cancel the rest."""
        for flight in self._flights.values():
            flight.deferred = True  # nobody is left to send a passive reply
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%s: %d reply task(s) cancelled at shutdown", self.channel, len(pending))
            await asyncio.gather(*pending, return_exceptions=True)


WECOM = web.AppKey("wecom", WeComChannel)
WECOM_API = web.AppKey("wecom_api", WeComClient)


def install(app: web.Application, settings: Settings, deps: ChannelDeps) -> Sender:
    """Add the callback routes and the outbound client; return the client as the sender."""
    assert settings.wecom is not None
    channel = WeComChannel(settings, deps)
    client = WeComClient(settings.wecom, deps.clock)
    app[WECOM] = channel
    app[WECOM_API] = client
    app.router.add_get(PATH, channel.verify_url)
    app.router.add_post(PATH, channel.callback)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await client.start()
        yield
        await channel.drain()
        await client.close()

    app.cleanup_ctx.append(lifecycle)
    return client


# -- small helpers


def _params(request: web.Request, *names: str) -> tuple[str, ...] | web.Response:
    """The named query values (aiohttp has URL-decoded them), or a 400 naming what is missing."""
    missing = [n for n in names if not request.query.get(n)]
    if missing:
        return _text(400, f"missing query parameter(s): {', '.join(missing)}")
    return tuple(request.query[n] for n in names)


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")
