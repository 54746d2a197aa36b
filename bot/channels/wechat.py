"""The WeChat Official Account (公众号, verified 服务号) channel: ``GET``/``POST /wechat/callback``.

Inbound (PROTOCOLS.md section 2): the GET handshake checks ``signature`` (SHA-1 of the sorted
token, timestamp and nonce) and echoes ``echostr`` unchanged. A POST comes in one of three modes,
as set in the account's 服务器配置:

- plain (明文): the message XML in clear, authenticated by ``signature`` alone, which does not
  cover the body. With ``WECHAT_AES_KEY`` set such a POST is refused (403): an operator who
  configured a key wants only bodies the key authenticates;
- compatible (兼容) and safe (安全): ``encrypt_type=aes`` and ``msg_signature`` in the query and
  an ``<Encrypt>`` element in the body (compatible mode adds the clear fields, which are
  ignored): the WXBizMsgCrypt scheme of WeCom (`bot.channels.wecom_crypto`) with the AppID as
  receive id.

Bad requests touch nothing and get what the WeCom channel answers: 400 (a missing parameter, a
timestamp that is not a number, unusable XML: syntax, DTD, entities, a missing field), 403 (a
signature that does not match, a timestamp more than five minutes away, an envelope for another
AppID, a ciphertext that does not decrypt, an ``openid`` that is not the sender), 413 (over
64 KiB).

Replies and de-duplication are the WeCom channel's (this class extends `WeComChannel`): each
MsgId (events: sender and CreateTime, as an HMAC) is handled once across restarts through the
dispatcher's inbound table; a turn done within the reply budget is the passive reply (encrypted
in safe and compatible mode), else WeChat gets ``success`` and the replies go through the outbox
as customer-service messages (`bot.channels.wechat_api`). ``subscribe`` gets the greeting, or
for someone not yet bound, how to bind; other events (unsubscribe, menu clicks) get ``success``
and reach no one. Nothing here logs an OpenID or message content.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from bot.channels.wechat_api import WeChatClient
from bot.channels.wecom import WeComChannel, _params, _text, message_key
from bot.channels.wecom_crypto import (
    DecryptError,
    MalformedMessage,
    SignatureError,
    WeComCrypto,
    WeComMessage,
    parse_message,
    sha1_signature,
    text_reply_xml,
)
from bot.core.channels import WECHAT
from bot.core.ports import ChannelDeps, Sender
from bot.core.types import InboundMessage, MessageKind
from bot.web import DELIVERY, DISPATCHER
from config.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = WECHAT
PATH = "/wechat/callback"
SUCCESS = "success"  # "received, no passive reply": WeChat neither retries nor warns the user
GREETED_EVENTS = frozenset({"subscribe"})
XML = "text/xml"


def to_inbound(msg: WeComMessage, secret: bytes) -> InboundMessage | None:
    """Translate a callback; None for an event nobody needs to hear about."""
    message_id = message_key(msg, secret)
    if msg.msg_type == "event":
        if (msg.event or "").lower() not in GREETED_EVENTS:
            return None
        return InboundMessage(CHANNEL, msg.from_user, kind=MessageKind.EVENT, message_id=message_id)
    if msg.msg_type == "text":
        return InboundMessage(CHANNEL, msg.from_user, msg.content or "", message_id=message_id)
    return InboundMessage(
        CHANNEL, msg.from_user, kind=MessageKind.UNSUPPORTED, message_id=message_id
    )


class WeChatChannel(WeComChannel):
    """The callback routes of one Official Account."""

    channel = CHANNEL

    def __init__(self, settings: Settings, deps: ChannelDeps) -> None:
        wechat = settings.wechat
        assert wechat is not None  # installed only when configured
        self.token = wechat.token.value
        self.app_id = wechat.app_id
        self.crypto_or_none = (
            None
            if wechat.aes_key is None
            else WeComCrypto(wechat.token.value, wechat.aes_key.value, wechat.app_id)
        )
        self._key_secret = hashlib.sha256(
            b"homevisit wechat\0" + wechat.app_secret.value.encode() + b"\0" + self.token.encode()
        ).digest()
        self._init_replies(deps)

    def _check_signature(self, signature: str, timestamp: str, nonce: str) -> bool:
        expected = sha1_signature(self.token, timestamp, nonce).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("utf-8"))

    # -- GET: URL verification

    async def verify_url(self, request: web.Request) -> web.Response:
        query = _params(request, "signature", "timestamp", "nonce", "echostr")
        if isinstance(query, web.Response):
            return query
        signature, timestamp, nonce, echostr = query
        refused = self._refuse_timestamp(timestamp)
        if refused is not None:
            return refused
        if not self._check_signature(signature, timestamp, nonce):
            log.warning("wechat URL verification refused: SignatureError")
            return _text(403, "forbidden")
        return _text(200, echostr)

    # -- POST: one message or event

    async def callback(self, request: web.Request) -> web.Response:
        query = _params(request, "signature", "timestamp", "nonce")
        if isinstance(query, web.Response):
            return query
        signature, timestamp, nonce = query
        encrypted = request.query.get("encrypt_type", "raw").lower() == "aes"
        msg_signature = request.query.get("msg_signature", "")
        if encrypted and not msg_signature:
            return _text(400, "missing query parameter(s): msg_signature")
        refused = self._refuse_timestamp(timestamp)
        if refused is not None:
            return refused
        if not self._check_signature(signature, timestamp, nonce):
            log.warning("wechat callback refused: SignatureError")
            return _text(403, "forbidden")
        if encrypted != (self.crypto_or_none is not None):
            log.warning(
                "wechat callback refused: %s message, but WECHAT_AES_KEY is %s",
                "encrypted" if encrypted else "plain",
                "set" if self.crypto_or_none else "not set",
            )
            return _text(403, "forbidden")
        body = await request.read()  # over client_max_size: 413
        try:
            if self.crypto_or_none is not None:
                msg = self.crypto_or_none.decrypt_message(msg_signature, timestamp, nonce, body)
            else:
                msg = parse_message(body)
        except MalformedMessage as exc:
            log.warning("wechat callback refused: malformed (%r)", str(exc))
            return _text(400, "malformed message")
        except (SignatureError, DecryptError) as exc:
            log.warning("wechat callback refused: %s", type(exc).__name__)
            return _text(403, "forbidden")
        openid = request.query.get("openid")
        if openid is not None and openid != msg.from_user:
            log.warning("wechat callback refused: openid is not the sender")
            return _text(403, "forbidden")
        message = to_inbound(msg, self._key_secret)
        if message is None:
            log.info("wechat event %r ignored", msg.event)
            return _text(200, SUCCESS)
        log.info("wechat %r message_id=%r", msg.msg_type, message.message_id)
        reply = await self._answer(message, request.app[DISPATCHER], request.app[DELIVERY].poke)
        if reply is None:
            return _text(200, SUCCESS)
        now = int(self.deps.clock.now().timestamp())
        if self.crypto_or_none is None:
            xml = text_reply_xml(msg.to_user, msg.from_user, reply, now)
        else:
            xml = self.crypto_or_none.encrypt_reply(
                msg.from_user,
                reply,
                timestamp=str(now),
                nonce=secrets.token_hex(8),
                create_time=now,
                from_user=msg.to_user,
            )
        return web.Response(text=xml, content_type=XML)


WECHAT_CHANNEL = web.AppKey("wechat", WeChatChannel)


def install(app: web.Application, settings: Settings, deps: ChannelDeps) -> Sender:
    """Add the callback routes and the outbound client; return the client as the sender."""
    assert settings.wechat is not None
    channel = WeChatChannel(settings, deps)
    client = WeChatClient(settings.wechat, deps.clock, settings.tz)
    app[WECHAT_CHANNEL] = channel
    app.router.add_get(PATH, channel.verify_url)
    app.router.add_post(PATH, channel.callback)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await client.start()
        yield
        await channel.drain()
        await client.close()

    app.cleanup_ctx.append(lifecycle)
    return client
