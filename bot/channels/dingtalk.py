"""The DingTalk (钉钉) channel: an internal app's robot, in Stream mode or HTTP mode.

Stream mode (default) dials out (`bot.channels.dingtalk_stream`); HTTP mode takes
`POST /dingtalk/callback`, signed with the `timestamp` and `sign` headers, each pair good for one
request (`UsedSigns`: the sign does not cover the body, so a copied header must not carry a
second one). Both hand the robot
message to `DingTalkChannel.handle`: the teacher is `senderStaffId`, the text is trimmed, `msgId`
de-duplicates (the dispatcher remembers it in the database, so also across restarts).

Replies, queued once per `msgId`: each reply is first written to the outbox under the key
`dingtalk:reply:{msgId}:{n}`. A key that already exists means this message was answered before
(DingTalk redelivered it, or the Stream server pushed it twice), and nothing is sent again. A new
reply goes out at once through the message's `sessionWebhook` while that is valid and points at
DingTalk (`DINGTALK_OAPI_BASE`), and its outbox row is marked sent; otherwise, or when the webhook
fails, the row is left to the outbox, which sends it with the robot's 1:1 API. In HTTP mode the
webhook is never used: the `sign` header covers the timestamp but not the body, so a replayed
header with a forged body could name an outsider's conversation as the webhook. If the process dies
in between, the outbox sends it a little later (`WEBHOOK_GRACE`): late, but not lost. A reply is
sent exactly once when the outcome of its send is known; when it is not (a timeout after the
request went out, an unreadable answer, a crash right after sending), it is sent again and may
arrive twice: neither the sessionWebhook nor batchSend takes an idempotency key.

Messages from a group chat (@-mentions) are answered 1:1, never in the group: the answers name
students and their families' difficulties.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from bot import jsonbody
from bot.channels import dingtalk_api as api
from bot.channels.dingtalk_stream import StreamClient, running
from bot.core.channels import DINGTALK_GROUP, DINGTALK_SIGNS
from bot.core.errors import SendError
from bot.core.ports import ChannelDeps, Clock, Conversations, OneTimeSigns, Outbox, Sender
from bot.core.types import InboundMessage, MessageKind, OutboxMessage
from bot.locks import KeyedLocks
from bot.web import DELIVERY, DISPATCHER, SERVING, json_response
from config.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "dingtalk"
GROUP_CHANNEL = DINGTALK_GROUP  # outbox channel of the coordinators' group robot
GROUP_RECIPIENT = "default"
MAX_SKEW = timedelta(hours=1)  # HTTP mode: a callback's timestamp may be this far off our clock
SIGN_CHANNEL = DINGTALK_SIGNS  # inbound_messages rows that remember HTTP mode's used signs
SIGN_MARGIN = timedelta(minutes=5)  # kept this much longer than MAX_SKEW: instances' clocks differ
MAX_ID = 128
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # never in DingTalk's ids; PostgreSQL refuses NUL
WEBHOOK_GRACE = timedelta(minutes=2)  # a reply row waits this long before the outbox takes it


class BadPayload(ValueError):
    """The robot message is not one we can read; the reason is safe to show the caller."""


@dataclass(frozen=True, slots=True)
class RobotMessage:
    """What this channel needs from a robot callback (HTTP body or Stream frame data)."""

    msg_id: str
    sender: str | None  # senderStaffId; None for people outside the organisation
    kind: MessageKind
    text: str
    session_webhook: str | None
    webhook_expires: datetime | None
    in_group: bool

    def inbound(self) -> InboundMessage:
        assert self.sender is not None
        return InboundMessage(CHANNEL, self.sender, self.text, self.kind, message_id=self.msg_id)


def parse_robot_message(payload: Any) -> RobotMessage:
    """Turn a robot message into a RobotMessage; BadPayload names what is wrong."""
    if not isinstance(payload, dict):
        raise BadPayload("body must be a JSON object")
    msg_id, msgtype = payload.get("msgId"), payload.get("msgtype")
    if not _usable_id(msg_id) or not msg_id:
        raise BadPayload('"msgId" must be text of at most 128 characters, no control characters')
    if not isinstance(msgtype, str):
        raise BadPayload('"msgtype" must be text')
    sender = payload.get("senderStaffId")
    if sender is not None and not _usable_id(sender):
        raise BadPayload(
            '"senderStaffId" must be text of at most 128 characters, no control characters'
        )
    kind, text = MessageKind.UNSUPPORTED, ""  # picture, file, audio, video, richText ...
    if msgtype == "text":
        body = payload.get("text")
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise BadPayload('"text.content" must be text')
        kind, text = MessageKind.TEXT, content.strip()  # an @-mention leaves a leading space
    webhook, expires = payload.get("sessionWebhook"), payload.get("sessionWebhookExpiredTime")
    return RobotMessage(
        msg_id=msg_id,
        sender=(sender or "").strip() or None,
        kind=kind,
        text=text,
        session_webhook=webhook if isinstance(webhook, str) and webhook else None,
        webhook_expires=_expiry(expires),
        in_group=str(payload.get("conversationType")) == "2",
    )


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID and not _CONTROL.search(value)


def _expiry(ms: Any) -> datetime | None:
    """`sessionWebhookExpiredTime` (epoch ms) as a datetime; None when absent or odd."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        return None
    try:
        return api.from_epoch_ms(ms)
    except (OverflowError, OSError, ValueError):
        return None


def check_signature(timestamp: str | None, sign: str | None, secret: str, now: datetime) -> int:
    """0 when the callback headers are genuine, else the HTTP status to answer (401/403)."""
    if not timestamp or not sign:
        return 401
    try:
        sent_at = int(timestamp)
    except ValueError:
        return 401
    if abs(api.epoch_ms(now) - sent_at) > MAX_SKEW.total_seconds() * 1000:
        return 403
    expected = api.sign(secret, timestamp)
    return 0 if hmac.compare_digest(expected.encode(), sign.encode()) else 403


class UsedSigns:
    """HTTP mode's (timestamp, sign) pairs already accepted: each header is good for one request.

    The sign covers only the timestamp, so a header copied from one genuine callback would
    otherwise carry any body for the whole hour `MAX_SKEW` allows. The pairs are kept by the
    `OneTimeSigns` port (`storage.signs`: rows of `inbound_messages` under the channel
    `SIGN_CHANNEL`), so every instance on the database refuses the second use. Pairs past the
    window (plus `SIGN_MARGIN`) are forgotten, so it holds about an hour of callbacks, and only
    DingTalk, which knows the secret, can add to it.

    When the database does not answer, the check lets the request through: its turn cannot
    write anything either (the teacher gets the "busy" apology), so a replay gains nothing.
    """

    def __init__(self, signs: OneTimeSigns, clock: Clock) -> None:
        self.signs = signs
        self.clock = clock

    async def first_use(self, sent_at: int, sign: str) -> bool:
        now = self.clock.now()
        forget_before = api.epoch_ms(now - MAX_SKEW - SIGN_MARGIN)
        try:
            return await self.signs.first_use(
                sent_at, sign, forget_before_ms=forget_before, now=now
            )
        except Exception as exc:
            log.warning("dingtalk: used signs not checked (%s)", type(exc).__name__)
            return True


class DingTalkChannel:
    """Handles one robot message: the turn, then its replies (see the module docstring)."""

    def __init__(
        self,
        dispatcher: Conversations,
        outbox: Outbox,
        signs: OneTimeSigns,
        clock: Clock,
        http: api.Http,
        oapi_base: str,
        poke: Callable[[], None],
        *,
        trust_webhook: bool = True,
    ) -> None:
        self.dispatcher = dispatcher
        # HTTP mode's sign covers the timestamp, not the body: a sessionWebhook from the body
        # could be an outsider's conversation, so replies there go by batchSend to the sender.
        self.trust_webhook = trust_webhook
        self.outbox = outbox
        self.clock = clock
        self.http = http
        self.oapi_prefix = oapi_base.rstrip("/") + "/"
        self.poke = poke
        self.used_signs = UsedSigns(signs, clock)
        # Turn and replies under one lock per teacher, so answers leave in the order asked.
        self._locks = KeyedLocks()

    async def receive(self, payload: Any) -> None:
        """Stream mode: a decoded robot message (already acknowledged)."""
        try:
            message = parse_robot_message(payload)
        except BadPayload as exc:
            log.warning("dingtalk robot message ignored: %s", exc)
            return
        await self.handle(message)

    async def handle(self, message: RobotMessage) -> None:
        if message.sender is None:
            log.info("dingtalk msg_id=%r has no senderStaffId (outside the org): ignored",
                     message.msg_id)  # fmt: skip
            return
        async with self._locks.hold(message.sender):
            replies = await self.dispatcher.handle(message.inbound())
            await self._reply(message, replies)

    def _webhook(self, message: RobotMessage, now: datetime) -> str | None:
        url, expires = message.session_webhook, message.webhook_expires
        if not self.trust_webhook:
            return None
        if message.in_group or url is None or expires is None or expires <= now:
            return None
        if not url.startswith(self.oapi_prefix):
            # HTTP mode's sign covers only the timestamp: never POST to a URL from the body
            # unless it is DingTalk's own.
            log.warning("dingtalk msg_id=%r: sessionWebhook not under DINGTALK_OAPI_BASE",
                        message.msg_id)  # fmt: skip
            return None
        return url

    async def _reply(self, message: RobotMessage, replies: Sequence[str]) -> None:
        assert message.sender is not None
        if not replies:
            return
        now = self.clock.now()
        webhook = self._webhook(message, now)
        sender, msg_id = message.sender, message.msg_id
        rows = [
            OutboxMessage(f"dingtalk:reply:{msg_id}:{n}", CHANNEL, sender, "reply", text)
            for n, text in enumerate(replies)
        ]
        not_before = now + WEBHOOK_GRACE if webhook else now
        try:
            stored = set(await self.outbox.enqueue(rows, not_before=not_before, now=now))
        except Exception as exc:  # the database is down: the reply is an apology; try to send it
            log.warning("dingtalk msg_id=%r: replies not stored (%s)", message.msg_id,
                        type(exc).__name__)  # fmt: skip
            if webhook:
                await self._send_unrecorded(webhook, replies)
            return
        fresh = [(row.key, row.body) for row in rows if row.key in stored]
        if not fresh:
            log.info("dingtalk msg_id=%r was answered before: not sent again", message.msg_id)
            return
        if webhook:
            fresh = await self._send_by_webhook(message.msg_id, webhook, fresh)
        if fresh:
            self.poke()

    async def _send_by_webhook(
        self, msg_id: str, webhook: str, rows: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Send rows in order; the ones left for the outbox (from the first failure on)."""
        for n, (key, text) in enumerate(rows):
            try:
                await api.reply_by_session(self.http, webhook, text)
            except SendError as exc:
                log.info("dingtalk msg_id=%r: sessionWebhook failed (%s); using the outbox",
                         msg_id, exc.reason)  # fmt: skip
                left = rows[n:]
                await self._settle([k for k, _ in left], sent=False, reason=exc.reason)
                return left
            await self._settle([key], sent=True, reason="")
        return []

    async def _settle(self, keys: list[str], *, sent: bool, reason: str) -> None:
        error = "" if sent else f"sessionWebhook: {reason}"
        try:
            await self.outbox.settle(keys, sent=sent, error=error, now=self.clock.now())
        except Exception as exc:  # the row stays pending: worst case one late duplicate
            log.warning("dingtalk: outbox rows not updated (%s)", type(exc).__name__)

    async def _send_unrecorded(self, webhook: str, replies: Sequence[str]) -> None:
        for text in replies:
            try:
                await api.reply_by_session(self.http, webhook, text)
            except SendError as exc:
                log.warning("dingtalk: unrecorded reply not sent (%s)", exc.reason)
                return


DINGTALK = web.AppKey("dingtalk", DingTalkChannel)
_SECRET = web.AppKey("dingtalk_secret", str)  # the app secret, for HTTP mode's signature


async def callback(request: web.Request) -> web.Response:
    """`POST /dingtalk/callback` (HTTP mode)."""
    channel = request.app[DINGTALK]
    secret = request.app[_SECRET]
    timestamp, sign = request.headers.get("timestamp"), request.headers.get("sign")
    status = check_signature(timestamp, sign, secret, channel.clock.now())
    if status:
        return json_response({"error": "missing or wrong timestamp/sign"}, status=status)
    assert timestamp is not None and sign is not None
    if not await channel.used_signs.first_use(int(timestamp), sign):
        # A replayed header: refused like a wrong one, and nothing of the body is read.
        log.warning("dingtalk callback refused: timestamp/sign already used")
        return json_response({"error": "timestamp/sign already used"}, status=403)
    try:
        payload = jsonbody.loads(await request.read())
    except jsonbody.BadJSON as exc:
        return json_response({"error": f"body is {exc}"}, status=400)
    try:
        message = parse_robot_message(payload)
    except BadPayload as exc:
        return json_response({"error": str(exc)}, status=400)
    await channel.handle(message)
    return json_response({})


def install(app: web.Application, settings: Settings, deps: ChannelDeps) -> Sender:
    """Add the robot (HTTP route or Stream task); return the Sender for channel "dingtalk"."""
    conf = settings.dingtalk
    assert conf is not None
    http = api.Http()
    token = api.AccessToken(http, conf.api_base, conf.app_key, conf.app_secret, deps.clock)
    channel = DingTalkChannel(
        app[DISPATCHER],
        deps.outbox,
        deps.signs,
        deps.clock,
        http,
        conf.oapi_base,
        lambda: app[DELIVERY].poke(),
        trust_webhook=conf.mode == "stream",
    )
    app[DINGTALK] = channel
    app.cleanup_ctx.append(_closing(http))
    if conf.mode == "http":
        app[_SECRET] = conf.app_secret.value
        app.router.add_post("/dingtalk/callback", callback)
    elif app[SERVING]:  # a one-shot CLI job only sends; it must not take robot messages
        stream_http = api.Http(aiohttp.ClientTimeout(total=None, sock_connect=10))
        client = StreamClient(
            stream_http, conf.api_base, conf.app_key, conf.app_secret, channel.receive
        )
        app.cleanup_ctx.append(_closing(stream_http))
        app.cleanup_ctx.append(_streaming(client))
    return api.RobotSender(http, token, conf.api_base, conf.robot_code)


def install_digest(app: web.Application, settings: Settings, deps: ChannelDeps) -> Sender:
    """The coordinators' group robot: the Sender for channel "dingtalk_group"."""
    assert settings.dingtalk_digest_webhook is not None
    http = api.Http()
    app.cleanup_ctx.append(_closing(http))
    return api.GroupRobotSender(
        http, settings.dingtalk_digest_webhook, settings.dingtalk_digest_secret, deps.clock
    )


def _closing(http: api.Http) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        yield
        await http.close()

    return ctx


def _streaming(client: StreamClient) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        async with running(client):
            yield

    return ctx
