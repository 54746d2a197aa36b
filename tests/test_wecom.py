"""The WeCom channel end to end: the real app on a loopback port, wechatpy playing WeCom's servers.

wechatpy (an independent implementation of the WXBizMsgCrypt scheme) encrypts and signs every
callback the way WeCom does and decrypts the bot's passive replies; `tests.fake_wecom` stands in
for the server API (gettoken, message/send). Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree  # only for XML this file or wechatpy writes, or the bot's reply

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import BaseTestServer, TestServer
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import func, select, update

from bot.app import create_app
from bot.channels import wecom
from bot.channels.wecom_api import MemberRateLimit, WeComClient, split_text
from bot.core.errors import SendError
from bot.core.types import InboundMessage
from bot.deps import Deps
from bot.web import DELIVERY, DISPATCHER
from config.settings import Secret, Settings, WeComSettings
from handlers import texts
from storage import outbox
from storage.schema import conversations, inbound_messages, students, visits
from storage.schema import outbox as outbox_table
from tests import fake_wecom
from tests.conftest import FakeClock
from tests.fake_wecom import AGENT_ID, CORP_ID, SECRET, FakeWeCom
from tests.test_conversation import TABLET_VISIT

try:  # wechatpy >= 2 names the WeCom package `work`; 1.8.x (pinned in the venv) `enterprise`
    from wechatpy.work import crypto as peer_crypto
except ImportError:
    from wechatpy.enterprise import crypto as peer_crypto

TOKEN = "hvToken2026"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
USER = "zhanglaoshi"  # demo teacher T001 (张示例)
NONCE = "1372623149"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with fake_wecom.running() as api:
        yield api


@pytest.fixture
def wecom_settings(settings: Settings, fake: FakeWeCom) -> Settings:
    config = WeComSettings(
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        secret=Secret(SECRET),
        token=Secret(TOKEN),
        aes_key=Secret(AES_KEY),
        api_base=fake.base_url,
    )
    return replace(settings, wecom=config)


@pytest.fixture
def app(wecom_settings: Settings, deps: Deps) -> web.Application:
    return create_app(wecom_settings, deps)


@pytest.fixture
async def server(app: web.Application) -> AsyncIterator[BaseTestServer]:
    async with TestServer(app, host="127.0.0.1") as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


@pytest.fixture
def wx(http: ClientSession, server: TestServer, clock: FakeClock) -> Peer:
    return Peer(http, server, clock)


# ---------------------------------------------------------------- WeCom's side of the wire


def message_xml(
    content: str | None = None,
    *,
    user: str = USER,
    msg_id: str | None = None,
    msg_type: str = "text",
    event: str | None = None,
    create_time: int = 1772413200,
    extra: str = "",
) -> str:
    fields = [
        f"<ToUserName><![CDATA[{CORP_ID}]]></ToUserName>",
        f"<FromUserName><![CDATA[{user}]]></FromUserName>",
        f"<CreateTime>{create_time}</CreateTime>",
        f"<MsgType><![CDATA[{msg_type}]]></MsgType>",
    ]
    if content is not None:
        fields.append(f"<Content><![CDATA[{content}]]></Content>")
    if event is not None:
        fields.append(f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[]]></EventKey>")
    if msg_id is not None:
        fields.append(f"<MsgId>{msg_id}</MsgId>")
    return f"<xml>{''.join(fields)}{extra}<AgentID>{AGENT_ID}</AgentID></xml>"


def sign(*parts: str) -> str:
    """The WeChat-family signature, written out here independently of the bot's code."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class Peer:
    """Plays WeCom's servers: wechatpy encrypts and signs callbacks and opens passive replies."""

    def __init__(
        self, http: ClientSession, server: BaseTestServer, clock: FakeClock, corp_id: str = CORP_ID
    ) -> None:
        self.http = http
        self.server = server
        self.clock = clock
        self.crypto = peer_crypto.WeChatCrypto(TOKEN, AES_KEY, corp_id)
        self._ids = itertools.count(7_300_000_000_000_000_001)

    def next_id(self) -> str:
        return str(next(self._ids))

    def timestamp(self, offset: int = 0) -> str:
        return str(int(self.clock.now().timestamp()) + offset)

    def seal(self, plaintext: str, timestamp: str, nonce: str = NONCE) -> tuple[str, str]:
        """(Encrypt, msg_signature) for ``plaintext``, computed by wechatpy."""
        envelope = ElementTree.fromstring(self.crypto.encrypt_message(plaintext, nonce, timestamp))
        encrypted, signature = envelope.findtext("Encrypt"), envelope.findtext("MsgSignature")
        assert encrypted and signature
        return encrypted, signature

    @staticmethod
    def body(encrypted: str) -> bytes:
        return (
            f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt>"
            f"<AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>"
        ).encode()

    async def post_raw(self, params: dict[str, str], body: bytes) -> tuple[int, str]:
        url = self.server.make_url(wecom.PATH)
        async with self.http.post(url, params=params, data=body) as r:
            return r.status, await r.text()

    async def post(self, inner_xml: str, *, timestamp: str | None = None) -> tuple[int, str]:
        ts = timestamp or self.timestamp()
        encrypted, signature = self.seal(inner_xml, ts)
        params = {"msg_signature": signature, "timestamp": ts, "nonce": NONCE}
        return await self.post_raw(params, self.body(encrypted))

    async def send(
        self, text: str, *, user: str = USER, msg_id: str | None = None
    ) -> tuple[int, str]:
        return await self.post(message_xml(text, user=user, msg_id=msg_id or self.next_id()))

    async def say(self, text: str, *, user: str = USER, msg_id: str | None = None) -> str:
        """Send a text as ``user``; the passive reply's text ("" for an empty 200)."""
        status, body = await self.send(text, user=user, msg_id=msg_id)
        assert status == 200, body
        return self.open(body, user)

    def open(self, reply_xml: str, user: str = USER) -> str:
        """Check and decrypt a passive reply with wechatpy; "" for an empty answer."""
        if reply_xml == "":
            return ""
        outer = ElementTree.fromstring(reply_xml)
        signature, ts, nonce = (outer.findtext(t) for t in ("MsgSignature", "TimeStamp", "Nonce"))
        plain = self.crypto.decrypt_message(reply_xml, signature, ts, nonce)
        inner = ElementTree.fromstring(plain)
        assert inner.findtext("ToUserName") == user
        assert inner.findtext("FromUserName") == CORP_ID
        assert inner.findtext("MsgType") == "text"
        return inner.findtext("Content") or ""


# ---------------------------------------------------------------- helpers


def count(deps: Deps, table: Any) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def visit_answers(deps: Deps) -> list[dict[str, Any]]:
    with deps.db.begin() as conn:
        return [row.answers for row in conn.execute(select(visits.c.answers)).all()]


def outbox_rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all())


def untouched(deps: Deps) -> bool:
    return all(count(deps, t) == 0 for t in (conversations, inbound_messages, outbox_table))


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def slow_down(app: web.Application, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make every turn wait for the returned event before it runs."""
    dispatcher = app[DISPATCHER]
    real = dispatcher.handle
    gate = asyncio.Event()

    async def handle(message: InboundMessage) -> list[str]:
        await gate.wait()
        return await real(message)

    monkeypatch.setattr(dispatcher, "handle", handle)
    return gate


# ---------------------------------------------------------------- a whole check-in


async def test_whole_checkin_over_encrypted_callbacks_and_passive_replies(
    wx: Peer, deps: Deps, fake: FakeWeCom
) -> None:
    listing = await wx.say("家访")
    assert "共5名" in listing and "周小禾" in listing
    assert "开始登记 周小禾（三年级1班）" in await wx.say("周小禾")
    for answer in TABLET_VISIT:
        reply = await wx.say(answer)
    assert "请核对 周小禾（三年级1班）" in reply
    done = await wx.say("提交")
    assert "已提交 周小禾（三年级1班）" in done and "新增跟进事项1项" in done

    with deps.db.begin() as conn:
        [visit] = conn.execute(select(visits)).all()
    assert visit.status == "submitted" and visit.method == "电话"
    assert visit.answers["device_missing"] == "平板或电脑"
    assert fake.send_calls == 0  # every answer went back passively


async def test_url_verification_echoes_the_bare_plaintext(
    wx: Peer, http: ClientSession, server: TestServer
) -> None:
    ts = wx.timestamp()
    # wechatpy's random prefix makes the base64 vary: retry until it holds "+" and "/" so the
    # test shows the URL-decoding is right (WeCom sends them as %2B and %2F)
    for _ in range(200):
        echostr, signature = wx.seal("6583912003405742114", ts)
        if "+" in echostr and "/" in echostr:
            break
    params = {"msg_signature": signature, "timestamp": ts, "nonce": NONCE, "echostr": echostr}
    async with http.get(server.make_url(wecom.PATH), params=params) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        assert await r.read() == b"6583912003405742114"

    params["msg_signature"] = "0" * 40
    async with http.get(server.make_url(wecom.PATH), params=params) as r:
        assert r.status == 403


@pytest.mark.parametrize("missing", ["msg_signature", "timestamp", "nonce", "echostr"])
async def test_url_verification_without_a_parameter_is_400(
    wx: Peer, http: ClientSession, server: TestServer, missing: str
) -> None:
    ts = wx.timestamp()
    echostr, signature = wx.seal("123", ts)
    params = {"msg_signature": signature, "timestamp": ts, "nonce": NONCE, "echostr": echostr}
    del params[missing]
    async with http.get(server.make_url(wecom.PATH), params=params) as r:
        assert r.status == 400 and missing in await r.text()


# ---------------------------------------------------------------- bad input touches nothing


async def test_wrong_signature_is_403_and_changes_nothing(wx: Peer, deps: Deps) -> None:
    ts = wx.timestamp()
    encrypted, good = wx.seal(message_xml("家访", msg_id=wx.next_id()), ts)
    for signature in (sign("not-the-token", ts, NONCE, encrypted), good.upper(), good[:-1]):
        params = {"msg_signature": signature, "timestamp": ts, "nonce": NONCE}
        assert (await wx.post_raw(params, wx.body(encrypted)))[0] == 403
    tampered = {"msg_signature": good, "timestamp": ts, "nonce": NONCE + "1"}
    assert (await wx.post_raw(tampered, wx.body(encrypted)))[0] == 403
    assert untouched(deps)


@pytest.mark.parametrize("missing", ["msg_signature", "timestamp", "nonce"])
async def test_missing_query_parameter_is_400(wx: Peer, deps: Deps, missing: str) -> None:
    ts = wx.timestamp()
    encrypted, signature = wx.seal(message_xml("家访", msg_id=wx.next_id()), ts)
    params = {"msg_signature": signature, "timestamp": ts, "nonce": NONCE}
    del params[missing]
    status, text = await wx.post_raw(params, wx.body(encrypted))
    assert status == 400 and missing in text
    assert untouched(deps)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
async def test_timestamp_outside_the_replay_window_is_403(
    wx: Peer, deps: Deps, offset: int
) -> None:
    xml = message_xml("家访", msg_id=wx.next_id())
    status, _ = await wx.post(xml, timestamp=wx.timestamp(offset))
    assert status == 403
    assert untouched(deps)
    assert (await wx.post(xml, timestamp=wx.timestamp(-290)))[0] == 200  # inside: accepted


async def test_non_numeric_timestamp_is_400(wx: Peer, deps: Deps) -> None:
    encrypted, signature = wx.seal(message_xml("家访", msg_id=wx.next_id()), "12a")
    params = {"msg_signature": signature, "timestamp": "12a", "nonce": NONCE}
    assert (await wx.post_raw(params, wx.body(encrypted)))[0] == 400
    assert untouched(deps)


async def test_envelope_for_another_corp_is_403(
    http: ClientSession, server: TestServer, clock: FakeClock, deps: Deps
) -> None:
    other = Peer(http, server, clock, corp_id="wwSomeOtherCorp")  # same token and key
    status, _ = await other.send("家访")
    assert status == 403
    assert untouched(deps)


def _signed(wx: Peer, encrypted: str) -> tuple[dict[str, str], bytes]:
    ts = wx.timestamp()
    signature = sign(TOKEN, ts, NONCE, encrypted)
    return {"msg_signature": signature, "timestamp": ts, "nonce": NONCE}, wx.body(encrypted)


def _aes(plain: bytes) -> str:
    key = base64.b64decode(AES_KEY + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


@pytest.mark.parametrize(
    "encrypted",
    [
        pytest.param("not base64 at all!", id="invalid-base64"),
        pytest.param("QUJD", id="not-whole-blocks"),
        pytest.param(_aes(b"x" * 63 + b"\x00"), id="pad-byte-zero"),
        pytest.param(_aes(b"x" * 63 + b"\x21"), id="pad-byte-33"),
        pytest.param(_aes(b"x" * 60 + b"\x01\x02\x03\x04"), id="pad-bytes-differ"),
    ],
)
async def test_correctly_signed_garbage_ciphertext_is_403(
    wx: Peer, deps: Deps, encrypted: str
) -> None:
    status, _ = await wx.post_raw(*_signed(wx, encrypted))
    assert status == 403
    assert untouched(deps)


async def test_outer_xml_with_a_dtd_or_entities_is_400(wx: Peer, deps: Deps) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><xml><Encrypt>&b;</Encrypt></xml>'
    )
    params, _ = _signed(wx, "aaaa")
    assert (await wx.post_raw(params, bomb))[0] == 400
    assert (await wx.post_raw(params, b"<xml><Encrypt>unterminated"))[0] == 400
    assert untouched(deps)


async def test_decrypted_xml_with_an_entity_is_400(wx: Peer, deps: Deps) -> None:
    inner = '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY who "zhanglaoshi">]>' + message_xml(
        "家访", user="&who;", msg_id=wx.next_id()
    )
    assert (await wx.post(inner))[0] == 400
    assert (await wx.post("<xml><MsgType>text</MsgType></xml>"))[0] == 400  # no sender
    assert untouched(deps)


async def test_body_over_64_kib_is_413(wx: Peer, deps: Deps) -> None:
    params, _ = _signed(wx, "aaaa")
    status, _ = await wx.post_raw(params, b"<xml><Encrypt>" + b"A" * 70_000 + b"</Encrypt></xml>")
    assert status == 413
    assert untouched(deps)


# ---------------------------------------------------------------- who is talking, what they send


async def test_sender_without_a_staff_record_gets_the_not_registered_reply(
    wx: Peer, deps: Deps
) -> None:
    reply = await wx.say("家访", user="wangwu")
    assert reply == texts.NOT_REGISTERED.format(user_id="wangwu")
    assert count(deps, conversations) == 0


@pytest.mark.parametrize(
    ("msg_type", "extra"),
    [
        (
            "image",
            "<PicUrl><![CDATA[http://example.invalid/p.jpg]]></PicUrl>"
            "<MediaId><![CDATA[m1]]></MediaId>",
        ),
        ("voice", "<MediaId><![CDATA[m2]]></MediaId><Format><![CDATA[amr]]></Format>"),
        (
            "location",
            "<Location_X>23.13</Location_X><Location_Y>113.26</Location_Y>"
            "<Scale>15</Scale><Label><![CDATA[某地]]></Label>",
        ),
    ],
)
async def test_non_text_messages_get_a_polite_text_only_reply(
    wx: Peer, msg_type: str, extra: str
) -> None:
    status, body = await wx.post(message_xml(msg_type=msg_type, msg_id=wx.next_id(), extra=extra))
    assert status == 200 and wx.open(body) == texts.TEXT_ONLY


async def test_non_text_in_the_middle_of_a_visit_repeats_the_question(wx: Peer) -> None:
    await wx.say("周小禾")
    status, body = await wx.post(message_xml(msg_type="image", msg_id=wx.next_id()))
    reply = wx.open(body)
    assert status == 200 and reply.startswith(texts.TEXT_ONLY) and "【第1题/" in reply


@pytest.mark.parametrize("event", ["subscribe", "enter_agent"])
async def test_subscribe_and_enter_agent_get_the_greeting(wx: Peer, event: str) -> None:
    status, body = await wx.post(message_xml(msg_type="event", event=event))
    assert status == 200
    assert wx.open(body) == texts.GREETING.format(name="张示例") + "\n\n" + texts.HELP


async def test_other_events_get_an_empty_200_and_touch_nothing(wx: Peer, deps: Deps) -> None:
    for event in ("click", "view", "unsubscribe"):
        status, body = await wx.post(message_xml(msg_type="event", event=event))
        assert (status, body) == (200, "")
    assert untouched(deps)


async def test_the_same_event_delivered_twice_is_answered_from_the_first(
    wx: Peer, deps: Deps, wecom_settings: Settings, http: ClientSession, clock: FakeClock
) -> None:
    xml = message_xml(msg_type="event", event="enter_agent", create_time=1772413999)
    first, second = await wx.post(xml), await wx.post(xml)
    assert wx.open(first[1]) == wx.open(second[1]) != ""
    async with TestServer(create_app(wecom_settings, deps), host="127.0.0.1") as restarted:
        third = await Peer(http, restarted, clock).post(xml)  # the same id after a restart
    assert wx.open(third[1]) == wx.open(first[1])
    with deps.db.begin() as conn:
        [event_id] = conn.execute(select(inbound_messages.c.message_id)).scalars().all()
    # told apart by sender and CreateTime, but the id does not spell out the member's UserID
    assert USER not in event_id and "1772413999" not in event_id


async def test_no_userid_text_or_forged_line_reaches_the_log(
    wx: Peer, app: web.Application, fake: FakeWeCom, deps: Deps,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    app[wecom.WECOM].reply_budget = 0.0  # every turn over budget: the log line quotes its id
    status, _ = await wx.post(message_xml(msg_type="event", event="subscribe"))
    assert status == 200
    # One message at a time, as one sender's arrive: each answered (through the outbox) before
    # the next is posted, or the turns could run in either order and answer differently.
    await eventually(lambda: len(fake.sent) == 1)
    await wx.send("家访", msg_id=None)  # a numbered MsgId
    await eventually(lambda: len(fake.sent) == 2)
    await wx.post(message_xml("周小禾"))  # no MsgId at all: sender and CreateTime
    await eventually(lambda: len(fake.sent) == 3)
    forged = f"{USER}\n2026-03-02 01:00:00 INFO forged line"
    await wx.post(message_xml("继续", msg_id=forged, create_time=1772413201))
    await eventually(lambda: len(fake.sent) == 4)
    real = app[DISPATCHER].handle
    detail = f"row for {USER} 周小禾 家庭困难 refused"  # the traceback shows the raise line only

    async def failing(message: InboundMessage) -> list[str]:
        await real(message)
        raise RuntimeError(detail)

    monkeypatch.setattr(app[DISPATCHER], "handle", failing)
    await wx.send("1")
    await eventually(lambda: "wecom reply task failed" in caplog.text)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bot."))
    assert "turn over budget" in ours and "RuntimeError" in ours
    for secret in (USER, "周小禾", "家庭困难", "家访", TOKEN, AES_KEY, "token-1"):
        assert secret not in ours, secret
    assert "\n2026-03-02 01:00:00 INFO forged" not in ours


async def test_a_roster_name_xml_cannot_carry_still_gets_a_readable_passive_reply(
    wx: Peer, deps: Deps
) -> None:
    with deps.db.begin() as conn:
        conn.execute(
            update(students).where(students.c.name == "周小禾").values(name="周小禾\uffff\x01")
        )
    mid = wx.next_id()
    listing = await wx.say("名单", msg_id=mid)  # 200, and wechatpy decrypts and parses it
    assert "周小禾\ufffd\ufffd" in listing and "\uffff" not in listing
    assert await wx.say("名单", msg_id=mid) == listing  # WeCom's retry gets the same answer


async def test_a_reply_with_a_lone_surrogate_is_still_well_formed(
    wx: Peer, app: web.Application, fake: FakeWeCom, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handle(message: InboundMessage) -> list[str]:
        return ["第\udc80条\ufffe"]

    monkeypatch.setattr(app[DISPATCHER], "handle", handle)
    assert await wx.say("名单") == "第\ufffd条\ufffd"
    app[wecom.WECOM].reply_budget = 0.0  # and the same text pushed by message/send
    assert await wx.say("名单") == ""
    await eventually(lambda: fake.texts() == ["第\ufffd条\ufffd"])


# ---------------------------------------------------------------- retries


async def test_a_retried_msgid_gets_the_same_reply_and_advances_once(wx: Peer, deps: Deps) -> None:
    await wx.say("周小禾")
    first = await wx.say("3", msg_id="7300000000000000999")
    retry = await wx.say("3", msg_id="7300000000000000999")
    assert first == retry and "【第2题/" in first
    assert visit_answers(deps) == [{"method": "电话"}]
    assert "【第3题/" in await wx.say("1")  # the next answer lands on question 2


async def test_a_retry_arriving_during_the_first_turn_shares_it(
    wx: Peer, deps: Deps, app: web.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    await wx.say("周小禾")
    gate = slow_down(app, monkeypatch)
    first = asyncio.create_task(wx.send("3", msg_id="7300000000000000777"))
    retry = asyncio.create_task(wx.send("3", msg_id="7300000000000000777"))
    await asyncio.sleep(0.2)
    gate.set()
    (s1, b1), (s2, b2) = await first, await retry
    assert s1 == s2 == 200 and wx.open(b1) == wx.open(b2) and "【第2题/" in wx.open(b1)
    assert visit_answers(deps) == [{"method": "电话"}]


async def test_a_retry_after_a_restart_gets_the_same_reply(
    wx: Peer, deps: Deps, wecom_settings: Settings, http: ClientSession, clock: FakeClock
) -> None:
    await wx.say("周小禾")
    first = await wx.say("3", msg_id="7300000000000000555")
    async with TestServer(create_app(wecom_settings, deps), host="127.0.0.1") as restarted:
        again = Peer(http, restarted, clock)
        assert await again.say("3", msg_id="7300000000000000555") == first
    assert visit_answers(deps) == [{"method": "电话"}]


# ---------------------------------------------------------------- slow turns go by message/send


async def test_a_slow_turn_answers_empty_and_the_reply_arrives_by_message_send(
    wx: Peer, app: web.Application, fake: FakeWeCom, deps: Deps
) -> None:
    app[wecom.WECOM].reply_budget = 0.0
    assert await wx.say("家访") == ""
    await eventually(lambda: len(fake.sent) == 1)
    [message] = fake.sent
    assert message.touser == USER and message.msgtype == "text" and "共5名" in message.content
    # A reply is sent without WeCom's duplicate check: the same list asked for again must show.
    assert message.body["agentid"] == AGENT_ID and message.body["enable_duplicate_check"] == 0
    await eventually(lambda: [r.status for r in outbox_rows(deps)] == ["sent"])
    [row] = outbox_rows(deps)
    assert row.kind == "reply" and row.idempotency_key.startswith("wecom-reply:")
    assert await wx.say("家访") == ""
    await eventually(lambda: len(fake.sent) == 2)
    assert fake.sent[1].content == message.content


async def test_a_retry_of_a_deferred_message_answers_empty_and_wecom_shows_one_reply(
    wx: Peer,
    app: web.Application,
    fake: FakeWeCom,
    deps: Deps,
    monkeypatch: pytest.MonkeyPatch,
    wecom_settings: Settings,
    http: ClientSession,
    clock: FakeClock,
) -> None:
    await wx.say("周小禾")
    gate = slow_down(app, monkeypatch)
    app[wecom.WECOM].reply_budget = 0.05
    mid = "7300000000000000333"
    assert await wx.say("3", msg_id=mid) == ""  # over budget: empty 200
    app[wecom.WECOM].reply_budget = 3.0
    started = asyncio.get_running_loop().time()
    assert await wx.say("3", msg_id=mid) == ""  # still running, already deferred: empty...
    assert asyncio.get_running_loop().time() - started < 1.5  # ...at once, not after 3 s
    gate.set()
    await eventually(lambda: len(fake.sent) == 1)
    assert await wx.say("3", msg_id=mid) == ""  # done, reply queued: still empty
    async with TestServer(create_app(wecom_settings, deps), host="127.0.0.1") as restarted:
        assert await Peer(http, restarted, clock).say("3", msg_id=mid) == ""  # after a restart
    await asyncio.sleep(0.2)
    assert len(fake.sent) == 1 and "【第2题/" in fake.sent[0].content
    assert visit_answers(deps) == [{"method": "电话"}]


async def test_a_reply_over_2048_bytes_goes_by_message_send_in_order(
    wx: Peer, app: web.Application, fake: FakeWeCom, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"第{i}行：" + "很长的说明文字" * 10 for i in range(40)]
    long_reply = "\n".join(lines)
    assert len(long_reply.encode()) > 2 * 2048

    async def handle(message: InboundMessage) -> list[str]:
        return [long_reply, "最后一句"]

    monkeypatch.setattr(app[DISPATCHER], "handle", handle)
    assert await wx.say("待跟进") == ""
    await eventually(lambda: bool(fake.texts()) and fake.texts()[-1] == "最后一句")
    sent = fake.texts()
    assert sent == [*split_text(long_reply), "最后一句"]
    assert len(sent) > 3 and all(len(t.encode()) <= 2048 for t in sent)
    assert "\n".join(sent[:-1]) == long_reply


# ---------------------------------------------------------------- the outbound client


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[WeComClient]:
    """The app's own sender, started by hand; the app's delivery is driven with run_once."""
    sender = app[wecom.WECOM_API]
    assert app[DELIVERY].senders["wecom"] is sender
    await sender.start()
    yield sender
    await sender.close()


def put(deps: Deps, key: str, text: str, recipient: str = USER) -> None:
    now = deps.clock.now()
    with deps.db.begin() as conn:
        outbox.enqueue(
            conn,
            key=key,
            channel="wecom",
            recipient=recipient,
            kind="reminder",
            body=text,
            not_before=now,
            now=now,
        )


async def test_the_token_is_cached_across_sends_until_shortly_before_it_expires(
    client: WeComClient, fake: FakeWeCom, clock: FakeClock
) -> None:
    for i in range(3):
        await client.send(USER, f"提醒{i}")
    assert fake.gettoken_calls == 1 and fake.texts() == ["提醒0", "提醒1", "提醒2"]
    # proactive messages (the default) ask WeCom to drop an identical resend
    assert {m.body["enable_duplicate_check"] for m in fake.sent} == {1}
    clock.advance(seconds=7200 - 301)
    await client.send(USER, "still cached")
    assert fake.gettoken_calls == 1
    clock.advance(seconds=2)  # within 5 minutes of expires_in
    await client.send(USER, "fresh token")
    assert fake.gettoken_calls == 2


async def test_an_expired_token_is_fetched_again_and_the_send_retried_at_once(
    client: WeComClient, fake: FakeWeCom
) -> None:
    await client.send(USER, "第一条")
    fake.expire_next_send = True
    await client.send(USER, "第二条")
    assert fake.gettoken_calls == 2 and fake.texts() == ["第一条", "第二条"]


async def test_a_set_up_error_keeps_the_message_queued_and_never_names_its_text(
    wecom_settings: Settings, deps: Deps, fake: FakeWeCom
) -> None:
    assert wecom_settings.wecom is not None
    bad = replace(wecom_settings.wecom, secret=Secret("wrong"))
    client = WeComClient(bad, deps.clock)
    await client.start()
    try:
        with pytest.raises(SendError) as caught:
            await client.send(USER, "王小雨家需要平板")
    finally:
        await client.close()
    assert not caught.value.permanent and caught.value.retry_after == 600
    assert caught.value.reason == "wecom gettoken errcode 40001"


async def test_transient_failures_are_retried_through_the_outbox(
    client: WeComClient, app: web.Application, fake: FakeWeCom, deps: Deps, clock: FakeClock
) -> None:
    fake.failures = [-1, "http 502"]
    put(deps, "r1", "请今天完成家访")
    delivery = app[DELIVERY]
    await delivery.run_once()
    [row] = outbox_rows(deps)
    assert row.status == "pending" and row.last_error == "wecom message/send errcode -1"
    clock.advance(seconds=30)
    await delivery.run_once()
    [row] = outbox_rows(deps)
    assert row.status == "pending" and "HTTP 502" in row.last_error
    clock.advance(seconds=60)
    await delivery.run_once()
    [row] = outbox_rows(deps)
    assert (row.status, row.attempts) == ("sent", 3)
    assert fake.texts() == ["请今天完成家访"]


async def test_a_send_that_timed_out_after_wecom_took_it_is_sent_again(
    wecom_settings: Settings, deps: Deps, fake: FakeWeCom
) -> None:
    """At least once: message/send has no idempotency key (a reply has no duplicate check)."""
    assert wecom_settings.wecom is not None
    client = WeComClient(wecom_settings.wecom, deps.clock, timeout=0.3)
    await client.start()
    fake.hold_next_send = 1.0  # delivered, then no answer within the client's timeout
    try:
        with pytest.raises(SendError) as caught:
            await client.send(USER, "【第2题/", proactive=False)
        assert not caught.value.permanent
        assert caught.value.reason == "wecom message/send timeout, outcome unknown"
        await client.send(USER, "【第2题/", proactive=False)
    finally:
        await client.close()
    assert fake.texts() == ["【第2题/", "【第2题/"]


ODD_ANSWERS = [
    pytest.param(b"<html>upstream ok</html>", id="html"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="a-list"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"errmsg": "ok"}', id="no-errcode"),
    pytest.param(b'{"errcode": "0"}', id="errcode-as-text"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, id="nested-10000-deep"),
]


@pytest.mark.parametrize("odd", ODD_ANSWERS)
async def test_an_odd_success_body_from_message_send_is_retried_not_counted_as_sent(
    client: WeComClient, app: web.Application, fake: FakeWeCom, deps: Deps, clock: FakeClock,
    caplog: pytest.LogCaptureFixture, odd: bytes,
) -> None:  # fmt: skip
    fake.failures = [odd]
    put(deps, "r1", "请今天完成家访")
    delivery = app[DELIVERY]
    await delivery.run_once()
    [row] = outbox_rows(deps)
    assert row.status == "pending" and "unexpected answer" in row.last_error
    clock.advance(seconds=30)
    await delivery.run_once()
    [row] = outbox_rows(deps)
    assert (row.status, row.attempts) == ("sent", 2) and fake.texts() == ["请今天完成家访"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    odd_lines = [w for w in warnings if "unexpected body" in w]
    assert len(odd_lines) == 1 and odd_lines[0].startswith("wecom message/send answered HTTP 200")
    for secret in (USER, "token-1", "请今天"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "odd", [*ODD_ANSWERS, pytest.param(b'{"errcode": 0, "errmsg": "ok"}', id="no-token")]
)
async def test_an_odd_success_body_from_gettoken_is_transient(
    client: WeComClient, fake: FakeWeCom, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    fake.token_answers = [odd]
    with pytest.raises(SendError) as caught:
        await client.send(USER, "提醒")
    assert not caught.value.permanent and "unexpected answer" in caught.value.reason
    assert fake.sent == [] and "wecom gettoken answered HTTP 200" in caplog.text
    await client.send(USER, "提醒")
    assert fake.texts() == ["提醒"]


async def test_api_frequency_limit_asks_for_a_minute(client: WeComClient, fake: FakeWeCom) -> None:
    fake.failures = [45009]
    with pytest.raises(SendError) as caught:
        await client.send(USER, "x")
    assert caught.value.retry_after == 60 and not caught.value.permanent


async def test_no_valid_recipient_is_recorded_as_failed_and_not_retried(
    client: WeComClient, app: web.Application, fake: FakeWeCom, deps: Deps, clock: FakeClock
) -> None:
    put(deps, "r1", "提醒", recipient="left-the-school")
    delivery = app[DELIVERY]
    await delivery.run_once()
    clock.advance(days=1)
    assert await delivery.run_once() == 0
    [row] = outbox_rows(deps)
    assert row.status == "failed" and row.last_error == "wecom message/send errcode 81013"
    assert fake.send_calls == 1 and fake.sent == []


async def test_the_31st_message_in_a_minute_waits_for_the_window(
    client: WeComClient, app: web.Application, fake: FakeWeCom, deps: Deps, clock: FakeClock
) -> None:
    for i in range(31):
        put(deps, f"r{i:02}", f"消息{i}")
    delivery = app[DELIVERY]
    await delivery.run_once()
    assert len(fake.sent) == 30
    last = outbox_rows(deps)[-1]
    assert last.status == "pending" and last.last_error == "wecom member rate limit"
    clock.advance(seconds=59)
    assert await delivery.run_once() == 0
    clock.advance(seconds=1)
    await delivery.run_once()
    assert fake.texts()[-1] == "消息30" and len(fake.sent) == 31


def test_member_rate_limit_windows(clock: FakeClock) -> None:
    limits, start = MemberRateLimit(), clock.now()
    for _ in range(30):
        limits.record("a", start)
    assert limits.wait("a", start) == 60 and limits.wait("b", start) == 0
    assert limits.wait("a", start + timedelta(seconds=45)) == 15

    limits = MemberRateLimit()  # 25 a minute for 40 minutes: the hour is full, the minute not
    for minute in range(40):
        for _ in range(25):
            limits.record("a", start + timedelta(minutes=minute))
    now = start + timedelta(minutes=40)
    assert limits.wait("a", now) == 20 * 60  # until the first minute's sends are an hour old
    assert limits.wait("a", now + timedelta(minutes=20)) == 0


async def test_long_texts_are_split_at_line_breaks_and_markdown_is_sent_as_markdown(
    client: WeComClient, fake: FakeWeCom
) -> None:
    text = "\n".join(f"{i}. " + "王小雨需要平板" * 12 for i in range(30))
    await client.send(USER, text)
    assert len(fake.sent) >= 2 and "\n".join(fake.texts()) == text
    await client.send_markdown(USER, "**进度**：已访 1/5")
    assert fake.sent[-1].msgtype == "markdown" and fake.sent[-1].content == "**进度**：已访 1/5"
    assert fake.gettoken_calls == 1


def test_split_text() -> None:
    assert split_text("短消息") == ["短消息"]
    assert split_text("a\nb\nc", limit=3) == ["a\nb", "c"]
    assert split_text("a\n\nb", limit=2) == ["a", "b"]
    assert split_text("字" * 5, limit=7) == ["字字", "字字", "字"]  # 3 bytes a character
    assert split_text("甲" * 1000 + "\n" + "乙" * 10) == ["甲" * 682, "甲" * 318 + "\n" + "乙" * 10]
