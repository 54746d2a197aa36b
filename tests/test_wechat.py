"""The WeChat Official Account channel end to end: the real app on a loopback port, wechatpy
playing WeChat's servers (safe mode) or the signature written out here (plain mode), and
`tests.fake_wechat` standing in for the server API. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree  # only for XML this file or wechatpy writes, or the bot's reply

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import BaseTestServer, TestServer
from sqlalchemy import func, insert, select
from wechatpy.crypto import WeChatCrypto

from bot.app import JOBS, create_app
from bot.channels import wechat
from bot.channels.wechat_api import WeChatClient
from bot.channels.wecom_crypto import WeComCrypto, parse_message
from bot.core.errors import ConfigError, SendError
from bot.core.types import InboundMessage, OutboxMessage
from bot.deps import Deps
from bot.web import DELIVERY
from config.settings import Secret, Settings, WeChatSettings, load_settings
from handlers import texts
from storage.schema import conversations, identities, inbound_messages, staff, visits
from storage.schema import outbox as outbox_table
from tests import fake_wechat
from tests.conftest import FakeClock
from tests.fake_wechat import APP_ID, APP_SECRET, TEMPLATE, FakeWeChat
from tests.test_conversation import TABLET_VISIT

TOKEN = "hvWechatToken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OPENID = "oTeacherZhang000000000000001"  # bound to demo teacher T001 (张示例)
STRANGER = "oStranger0000000000000000002"
ORIGINAL_ID = "gh_10f6c3c3ac5a"
NONCE = "1320562132"
VECTORS = Path(__file__).resolve().parent / "vectors" / "vectors.json"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    async with fake_wechat.running() as api:
        api.followers |= {OPENID, STRANGER}
        api.in_window |= {OPENID, STRANGER}
        yield api


def wechat_config(fake: FakeWeChat, *, aes: bool = True, template: bool = True) -> WeChatSettings:
    return WeChatSettings(
        app_id=APP_ID,
        app_secret=Secret(APP_SECRET),
        token=Secret(TOKEN),
        aes_key=Secret(AES_KEY) if aes else None,
        template_reminder=TEMPLATE if template else None,
        api_base=fake.base_url,
    )


@pytest.fixture(params=["safe"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wechat_settings(settings: Settings, fake: FakeWeChat, mode: str) -> Settings:
    return replace(settings, wechat=wechat_config(fake, aes=mode == "safe"))


@pytest.fixture
def bound(deps: Deps) -> None:
    """T001's WeChat identity, as a binding would have stored it."""
    with deps.db.begin() as conn:
        staff_id = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        conn.execute(
            insert(identities).values(channel="wechat", external_id=OPENID, staff_id=staff_id)
        )


@pytest.fixture
def app(wechat_settings: Settings, deps: Deps, bound: None) -> web.Application:
    return create_app(wechat_settings, deps)


@pytest.fixture
async def server(app: web.Application) -> AsyncIterator[BaseTestServer]:
    async with TestServer(app, host="127.0.0.1") as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


@pytest.fixture
def wx(http: ClientSession, server: TestServer, clock: FakeClock, mode: str) -> Peer:
    return Peer(http, server, clock, safe=mode == "safe")


# ---------------------------------------------------------------- WeChat's side of the wire


def sign(*parts: str) -> str:
    """The WeChat signature, written out here independently of the bot's code."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def message_xml(
    content: str | None = None,
    *,
    user: str = OPENID,
    msg_id: str | None = None,
    msg_type: str = "text",
    event: str | None = None,
    create_time: int = 1772413200,
) -> str:
    fields = [
        f"<ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName>",
        f"<FromUserName><![CDATA[{user}]]></FromUserName>",
        f"<CreateTime>{create_time}</CreateTime>",
        f"<MsgType><![CDATA[{msg_type}]]></MsgType>",
    ]
    if content is not None:
        fields.append(f"<Content><![CDATA[{content}]]></Content>")
    if event is not None:
        fields.append(f"<Event><![CDATA[{event}]]></Event>")
    if msg_id is not None:
        fields.append(f"<MsgId>{msg_id}</MsgId>")
    return f"<xml>{''.join(fields)}</xml>"


class Peer:
    """Plays WeChat's servers in safe mode (wechatpy encrypts) or plain mode."""

    def __init__(
        self,
        http: ClientSession,
        server: BaseTestServer,
        clock: FakeClock,
        *,
        safe: bool = True,
        app_id: str = APP_ID,
    ) -> None:
        self.http, self.server, self.clock, self.safe = http, server, clock, safe
        self.crypto = WeChatCrypto(TOKEN, AES_KEY, app_id)
        self._ids = itertools.count(24_500_000_000_000_001)

    def next_id(self) -> str:
        return str(next(self._ids))

    def timestamp(self, offset: int = 0) -> str:
        return str(int(self.clock.now().timestamp()) + offset)

    async def post_raw(self, params: dict[str, str], body: bytes) -> tuple[int, str]:
        async with self.http.post(self.server.make_url(wechat.PATH), params=params, data=body) as r:
            return r.status, await r.text()

    def query(self, ts: str, user: str = OPENID) -> dict[str, str]:
        return {
            "signature": sign(TOKEN, ts, NONCE),
            "timestamp": ts,
            "nonce": NONCE,
            "openid": user,
        }

    async def post(
        self, inner_xml: str, *, timestamp: str | None = None, user: str = OPENID
    ) -> tuple[int, str]:
        ts = timestamp or self.timestamp()
        params = self.query(ts, user)
        if not self.safe:
            return await self.post_raw(params, inner_xml.encode())
        envelope = ElementTree.fromstring(self.crypto.encrypt_message(inner_xml, NONCE, ts))
        encrypted, msg_signature = envelope.findtext("Encrypt"), envelope.findtext("MsgSignature")
        assert encrypted and msg_signature
        params |= {"encrypt_type": "aes", "msg_signature": msg_signature}
        body = (
            f"<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        )
        return await self.post_raw(params, body.encode())

    async def send(
        self, text: str, *, user: str = OPENID, msg_id: str | None = None
    ) -> tuple[int, str]:
        return await self.post(
            message_xml(text, user=user, msg_id=msg_id or self.next_id()), user=user
        )

    async def say(self, text: str, *, user: str = OPENID, msg_id: str | None = None) -> str:
        """Send a text; the passive reply's text ("" for ``success``)."""
        status, body = await self.send(text, user=user, msg_id=msg_id)
        assert status == 200, body
        return self.open(body, user)

    def open(self, reply_xml: str, user: str = OPENID) -> str:
        if reply_xml == "success":
            return ""
        if self.safe:
            outer = ElementTree.fromstring(reply_xml)
            signature, ts, nonce = (
                outer.findtext(t) for t in ("MsgSignature", "TimeStamp", "Nonce")
            )
            reply_xml = self.crypto.decrypt_message(reply_xml, signature, ts, nonce)
        inner = ElementTree.fromstring(reply_xml)
        assert inner.findtext("ToUserName") == user
        assert inner.findtext("FromUserName") == ORIGINAL_ID
        assert inner.findtext("MsgType") == "text"
        return inner.findtext("Content") or ""


# ---------------------------------------------------------------- helpers


def count(deps: Deps, table: Any) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def untouched(deps: Deps) -> bool:
    return all(count(deps, t) == 0 for t in (conversations, inbound_messages, outbox_table))


def outbox_rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all())


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------- a whole check-in


@pytest.mark.parametrize("mode", ["safe", "plain"], indirect=True)
async def test_whole_checkin_with_passive_replies(wx: Peer, deps: Deps, fake: FakeWeChat) -> None:
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
    assert visit.status == "submitted" and visit.answers["device_missing"] == "平板或电脑"
    assert fake.custom_calls == 0  # every answer went back passively


async def test_the_next_reminder_reaches_the_teacher_by_customer_service_message(
    wx: Peer, app: web.Application, fake: FakeWeChat, clock: FakeClock
) -> None:
    await wx.say("帮助")
    report = await app[JOBS].run("remind", clock.now())
    assert report.queued == 1
    await app[DELIVERY].run_once()  # (or the running delivery loop does)
    await eventually(lambda: len(fake.texts(OPENID)) == 1)
    [reminder] = fake.texts(OPENID)
    assert "周小禾" in reminder


# ---------------------------------------------------------------- URL verification


@pytest.mark.parametrize("mode", ["safe", "plain"], indirect=True)
async def test_url_verification_echoes_echostr_unchanged(
    wx: Peer, http: ClientSession, server: TestServer
) -> None:
    ts = wx.timestamp()
    params = {"signature": sign(TOKEN, ts, NONCE), "timestamp": ts, "nonce": NONCE}
    params["echostr"] = "5838479218127813673"
    async with http.get(server.make_url(wechat.PATH), params=params) as r:
        assert r.status == 200 and await r.text() == "5838479218127813673"
    params["signature"] = "0" * 40
    async with http.get(server.make_url(wechat.PATH), params=params) as r:
        assert r.status == 403
    del params["echostr"]
    async with http.get(server.make_url(wechat.PATH), params=params) as r:
        assert r.status == 400 and "echostr" in await r.text()


# ---------------------------------------------------------------- bad input touches nothing


async def test_wrong_signature_is_403_and_changes_nothing(wx: Peer, deps: Deps) -> None:
    ts = wx.timestamp()
    params = wx.query(ts) | {"signature": "f" * 40}
    assert (await wx.post_raw(params, message_xml("家访", msg_id="1").encode()))[0] == 403
    assert untouched(deps)


async def test_wrong_msg_signature_is_403(wx: Peer, deps: Deps) -> None:
    ts = wx.timestamp()
    envelope = ElementTree.fromstring(
        wx.crypto.encrypt_message(message_xml("家访", msg_id="1"), NONCE, ts)
    )
    body = f"<xml><Encrypt><![CDATA[{envelope.findtext('Encrypt')}]]></Encrypt></xml>".encode()
    params = wx.query(ts) | {"encrypt_type": "aes", "msg_signature": "0" * 40}
    assert (await wx.post_raw(params, body))[0] == 403
    del params["msg_signature"]
    assert (await wx.post_raw(params, body))[0] == 400
    assert untouched(deps)


async def test_stale_timestamp_is_403(wx: Peer, deps: Deps) -> None:
    status, _ = await wx.post(message_xml("家访", msg_id="1"), timestamp=wx.timestamp(-301))
    assert status == 403 and untouched(deps)


async def test_envelope_for_another_appid_is_403(
    http: ClientSession, server: TestServer, clock: FakeClock, deps: Deps
) -> None:
    other = Peer(http, server, clock, app_id="wx0000000000000000")
    status, _ = await other.post(message_xml("家访", msg_id="1"))
    assert status == 403 and untouched(deps)


async def test_correctly_signed_garbage_ciphertext_is_403(wx: Peer, deps: Deps) -> None:
    ts, garbage = wx.timestamp(), "QUJD" * 16
    params = wx.query(ts) | {
        "encrypt_type": "aes",
        "msg_signature": sign(TOKEN, ts, NONCE, garbage),
    }
    body = f"<xml><Encrypt><![CDATA[{garbage}]]></Encrypt></xml>".encode()
    assert (await wx.post_raw(params, body))[0] == 403 and untouched(deps)


async def test_a_plain_post_is_refused_when_an_aes_key_is_configured(wx: Peer, deps: Deps) -> None:
    status, _ = await wx.post_raw(
        wx.query(wx.timestamp()), message_xml("家访", msg_id="1").encode()
    )
    assert status == 403 and untouched(deps)


@pytest.mark.parametrize("mode", ["plain"], indirect=True)
async def test_xml_with_a_dtd_or_entities_is_400(wx: Peer, deps: Deps) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "家访家访">]>'
        f"<xml><ToUserName>{ORIGINAL_ID}</ToUserName><FromUserName>{OPENID}</FromUserName>"
        "<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&a;</Content><MsgId>1</MsgId></xml>"
    )
    assert (await wx.post_raw(wx.query(wx.timestamp()), bomb.encode()))[0] == 400
    assert (await wx.post_raw(wx.query(wx.timestamp()), b"<xml><oops"))[0] == 400
    no_sender = message_xml("家访", msg_id="1").replace(
        f"<FromUserName><![CDATA[{OPENID}]]></FromUserName>", ""
    )
    assert (await wx.post_raw(wx.query(wx.timestamp()), no_sender.encode()))[0] == 400
    assert untouched(deps)


async def test_decrypted_xml_with_an_entity_is_400(wx: Peer, deps: Deps) -> None:
    inner = '<!DOCTYPE xml [<!ENTITY a "x">]><xml><Content>&a;</Content></xml>'
    assert (await wx.post(inner))[0] == 400 and untouched(deps)


@pytest.mark.parametrize("mode", ["plain"], indirect=True)
async def test_an_openid_that_is_not_the_sender_is_403(wx: Peer, deps: Deps) -> None:
    params = wx.query(wx.timestamp(), STRANGER)
    assert (await wx.post_raw(params, message_xml("家访", msg_id="1").encode()))[0] == 403
    assert untouched(deps)


async def test_body_over_64_kib_is_413(wx: Peer, deps: Deps) -> None:
    ts = wx.timestamp()
    params = wx.query(ts) | {"encrypt_type": "aes", "msg_signature": "0" * 40}
    status, _ = await wx.post_raw(params, b"<xml>" + b"x" * 70_000 + b"</xml>")
    assert status == 413 and untouched(deps)


# ---------------------------------------------------------------- events, strangers, retries


async def test_subscribe_from_someone_not_bound_says_how_to_bind(wx: Peer) -> None:
    status, body = await wx.post(
        message_xml(user=STRANGER, msg_type="event", event="subscribe"), user=STRANGER
    )
    reply = wx.open(body, STRANGER)
    assert status == 200 and reply.startswith(texts.WELCOME) and "绑定 工号 绑定码" in reply


async def test_subscribe_from_a_bound_teacher_is_the_greeting(wx: Peer) -> None:
    _, body = await wx.post(message_xml(msg_type="event", event="subscribe"))
    assert wx.open(body).startswith(texts.GREETING.format(name="张示例"))


async def test_unsubscribe_and_other_events_are_success_and_touch_nothing(
    wx: Peer, deps: Deps
) -> None:
    for event in ("unsubscribe", "CLICK", "VIEW"):
        status, body = await wx.post(message_xml(msg_type="event", event=event))
        assert (status, body) == (200, "success")
    assert untouched(deps)


async def test_a_stranger_writing_is_told_how_to_bind(wx: Peer) -> None:
    reply = await wx.say("家访", user=STRANGER)
    assert reply == texts.NOT_REGISTERED.format(user_id=STRANGER)


async def test_non_text_messages_get_a_polite_text_only_reply(wx: Peer) -> None:
    _, body = await wx.post(message_xml(msg_type="image", msg_id=wx.next_id()))
    assert texts.TEXT_ONLY in wx.open(body)


async def test_a_retried_msgid_gets_the_same_reply_and_advances_once(
    wx: Peer, deps: Deps, wechat_settings: Settings, http: ClientSession, clock: FakeClock
) -> None:
    await wx.say("周小禾")
    first = await wx.say("3", msg_id="24500000000000000555")
    assert await wx.say("3", msg_id="24500000000000000555") == first
    async with TestServer(create_app(wechat_settings, deps), host="127.0.0.1") as restarted:
        assert await Peer(http, restarted, clock).say("3", msg_id="24500000000000000555") == first
    with deps.db.begin() as conn:
        assert [r.answers for r in conn.execute(select(visits.c.answers))] == [{"method": "电话"}]


async def test_a_slow_turn_answers_success_and_the_reply_goes_by_customer_service_message(
    wx: Peer, app: web.Application, fake: FakeWeChat, deps: Deps
) -> None:
    app[wechat.WECHAT_CHANNEL].reply_budget = 0.0
    status, body = await wx.send("家访")
    assert (status, body) == (200, "success")
    await eventually(lambda: len(fake.texts(OPENID)) == 1)
    assert "共5名" in fake.texts(OPENID)[0]
    await eventually(lambda: [r.status for r in outbox_rows(deps)] == ["sent"])
    [row] = outbox_rows(deps)
    assert row.kind == "reply" and row.idempotency_key.startswith("wechat-reply:")


# ---------------------------------------------------------------- the 48-hour window


async def queue_reminder(deps: Deps, clock: FakeClock, key: str = "remind:T001") -> None:
    message = OutboxMessage(
        key, "wechat", OPENID, "reminder", "今天还有3名学生待家访。\n回复“家访”开始。"
    )
    await deps.outbox.enqueue([message], not_before=clock.now(), now=clock.now())


async def test_outside_the_window_a_reminder_goes_as_the_template_message(
    app: web.Application, server: TestServer, fake: FakeWeChat, deps: Deps, clock: FakeClock
) -> None:
    fake.in_window.discard(OPENID)
    await queue_reminder(deps, clock)
    await app[DELIVERY].run_once()  # (or the running delivery loop does)
    await eventually(lambda: [r.status for r in outbox_rows(deps)] == ["sent"])
    [notice] = fake.delivered
    assert notice.kind == "template" and notice.body["template_id"] == TEMPLATE
    assert (
        notice.content == "今天还有3名学生待家访。"
        and notice.body["data"]["keyword2"]["value"] == "2026-03-02"
    )
    assert [r.status for r in outbox_rows(deps)] == ["sent"]


async def test_outside_the_window_without_a_template_fails_for_good(
    settings: Settings, deps: Deps, fake: FakeWeChat, clock: FakeClock, bound: None
) -> None:
    fake.in_window.discard(OPENID)
    configured = replace(settings, wechat=wechat_config(fake, template=False))
    app = create_app(configured, deps, serving=False)
    async with TestServer(app, host="127.0.0.1"):
        await queue_reminder(deps, clock)
        await app[DELIVERY].run_once()
    assert fake.delivered == []
    [row] = outbox_rows(deps)
    assert row.status == "failed" and "45015" in row.last_error


async def test_a_reply_outside_the_window_is_not_turned_into_a_template(
    fake: FakeWeChat, clock: FakeClock
) -> None:
    fake.in_window.clear()
    client = WeChatClient(wechat_config(fake), clock, load_settings({}, env_file=None).tz)
    await client.start()
    try:
        with pytest.raises(SendError) as caught:
            await client.send(OPENID, "第2题", proactive=False)
    finally:
        await client.close()
    assert caught.value.permanent and fake.delivered == []


# ---------------------------------------------------------------- the access token


@pytest.fixture
async def client(fake: FakeWeChat, clock: FakeClock) -> AsyncIterator[WeChatClient]:
    api = WeChatClient(wechat_config(fake), clock, load_settings({}, env_file=None).tz)
    await api.start()
    yield api
    await api.close()


async def test_the_stable_token_is_cached_until_shortly_before_it_expires(
    client: WeChatClient, fake: FakeWeChat, clock: FakeClock
) -> None:
    await client.send(OPENID, "一")
    await client.send(OPENID, "二")
    assert fake.token_calls == 1
    clock.advance(seconds=7200 - 200)
    await client.send(OPENID, "三")
    assert fake.token_calls == 2 and fake.texts(OPENID) == ["一", "二", "三"]


async def test_a_rejected_token_is_refreshed_by_force_and_the_send_retried(
    client: WeChatClient, fake: FakeWeChat
) -> None:
    await client.send(OPENID, "一")
    fake.expire_tokens()
    await client.send(OPENID, "二")
    assert fake.forced_refreshes == 1 and fake.texts(OPENID) == ["一", "二"]


async def test_transient_failures_are_retried_and_unknown_followers_fail_for_good(
    client: WeChatClient, fake: FakeWeChat
) -> None:
    fake.failures = [-1, "http 502"]
    for _ in range(2):
        with pytest.raises(SendError) as caught:
            await client.send(OPENID, "一")
        assert not caught.value.permanent
    with pytest.raises(SendError) as caught:
        await client.send("oNobody", "一")
    assert (
        caught.value.permanent
        and "43004" in caught.value.reason
        and "oNobody" not in caught.value.reason
    )


async def test_a_wrong_app_secret_keeps_messages_queued(fake: FakeWeChat, clock: FakeClock) -> None:
    config = replace(wechat_config(fake), app_secret=Secret("wrong"))
    api = WeChatClient(config, clock, load_settings({}, env_file=None).tz)
    await api.start()
    try:
        with pytest.raises(SendError) as caught:
            await api.send(OPENID, "一")
    finally:
        await api.close()
    assert not caught.value.permanent and caught.value.retry_after == 600.0


# ---------------------------------------------------------------- settings and crypto


def test_settings_name_every_bad_wechat_variable() -> None:
    good = {"WECHAT_APP_ID": APP_ID, "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": TOKEN}
    loaded = load_settings(good | {"WECHAT_AES_KEY": AES_KEY}, env_file=None).wechat
    assert loaded is not None and loaded.api_base == "https://api.weixin.qq.com"
    assert loaded.template_reminder is None and "s" not in repr(loaded.app_secret)
    for env, var in [
        ({"WECHAT_APP_ID": APP_ID}, "WECHAT_TOKEN"),
        (good | {"WECHAT_AES_KEY": "short"}, "WECHAT_AES_KEY"),
        (good | {"WECHAT_APP_ID": "not-an-appid"}, "WECHAT_APP_ID"),
        ({"WECHAT_TEMPLATE_REMINDER": TEMPLATE}, "WECHAT_TEMPLATE_REMINDER"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(env, env_file=None)
        assert var in str(caught.value)


def _vector(vector_id: str) -> dict[str, Any]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text("utf-8"))["vectors"]
    return next(v for v in vectors if v["id"] == vector_id)


def test_the_official_safe_mode_sample_decrypts_with_the_appid_as_receive_id() -> None:
    v = _vector("mp_official_sample_decrypt_safe_mode")
    i, e = v["inputs"], v["expected"]
    crypto = WeComCrypto(i["token"], i["encoding_aes_key"], e["receive_id"])
    body = (
        f"<xml><ToUserName>gh_10f6c3c3ac5a</ToUserName><Encrypt>{i['ciphertext']}</Encrypt></xml>"
    )
    msg = crypto.decrypt_message(e["msg_signature"], i["timestamp"], i["nonce"], body.encode())
    assert msg == parse_message(e["plaintext"].encode())
    assert msg.from_user == "oyORnuP8q7ou2gfYjqLzSIWZf0rs" and msg.to_user == "gh_10f6c3c3ac5a"


@pytest.mark.parametrize(
    "vector_id", ["wechatpy_mp_plain_signature", "mp_official_sample_plain_signature"]
)
def test_plain_mode_signature_vectors(vector_id: str) -> None:
    v = _vector(vector_id)
    assert sign(*v["inputs"]["parts"]) == v["expected"]["signature"]
    token, ts, nonce = v["inputs"]["parts"]
    channel = object.__new__(wechat.WeChatChannel)
    channel.token = token
    assert channel._check_signature(v["expected"]["signature"], ts, nonce)
    assert not channel._check_signature("0" * 40, ts, nonce)


def test_an_encrypted_passive_reply_opens_with_wechatpy() -> None:
    ours = WeComCrypto(TOKEN, AES_KEY, APP_ID)
    xml = ours.encrypt_reply(
        OPENID,
        "你好]]>老师",
        timestamp="1409735669",
        nonce="n1",
        create_time=1,
        from_user=ORIGINAL_ID,
    )
    outer = ElementTree.fromstring(xml)
    plain = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(
        xml, outer.findtext("MsgSignature"), "1409735669", "n1"
    )
    inner = ElementTree.fromstring(plain)
    assert (
        inner.findtext("FromUserName") == ORIGINAL_ID and inner.findtext("Content") == "你好]]>老师"
    )


def test_inbound_ids_never_carry_the_openid() -> None:
    msg = parse_message(message_xml(msg_type="event", event="subscribe").encode())
    inbound = wechat.to_inbound(msg, b"k")
    assert isinstance(inbound, InboundMessage) and inbound.message_id is not None
    assert OPENID not in inbound.message_id and inbound.message_id.startswith("h:")


async def test_compatible_mode_reads_the_ciphertext_not_the_clear_fields(
    wx: Peer, deps: Deps
) -> None:
    ts = wx.timestamp()
    inner = message_xml("家访", msg_id=wx.next_id())
    envelope = ElementTree.fromstring(wx.crypto.encrypt_message(inner, NONCE, ts))
    encrypted, msg_signature = envelope.findtext("Encrypt"), envelope.findtext("MsgSignature")
    assert encrypted and msg_signature
    clear = message_xml("放弃", msg_id="1")  # what a forger could change: it is ignored
    body = clear.replace("</xml>", f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>")
    params = wx.query(ts) | {"encrypt_type": "aes", "msg_signature": msg_signature}
    status, reply = await wx.post_raw(params, body.encode())
    assert status == 200 and "共5名" in wx.open(reply)
