"""The Feishu channel in webhook mode against a local fake Feishu, through the real app.

Teacher T001 of the demo roster is given the Feishu open_id `OPEN_ID` (the roster column 飞书ID).
Every test runs on SQLite and on PostgreSQL (the `deps` fixture); nothing reaches the internet.
The crypto is held to the published vectors and to lark-oapi's own decryptor (`tests.lark_kit`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from sqlalchemy import func, insert, select

from bot.app import JOBS, create_app
from bot.channels import feishu, feishu_crypto
from bot.channels.dingtalk_api import Http
from bot.channels.feishu_api import FeishuSender, TenantToken, message_uuid
from bot.core.errors import ConfigError, SendError
from bot.core.ports import Conversations
from bot.core.types import InboundMessage, MessageKind
from bot.deps import Deps
from bot.jobs import REMIND
from bot.web import DELIVERY
from config.settings import FeishuSettings, Secret, Settings, load_settings
from handlers import texts
from storage import outbox
from storage.roster import import_roster, read_roster
from storage.schema import conversations, identities, inbound_messages, staff, visits
from storage.schema import outbox as outbox_table
from tests.conftest import FakeClock
from tests.fake_feishu import FakeFeishu
from tests.lark_kit import lark_decrypt
from tests.test_conversation import TABLET_VISIT

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "vectors.json"
APP_ID, APP_SECRET = "cli_a1b2c3d4e5", "feishu-app-secret-for-tests"
ENCRYPT_KEY, VERIFICATION_TOKEN = "encrypt-key-for-tests", "verification-token-for-tests"
OPEN_ID = "ou_7dab8a3d3cdcc9da365777c7ad535d62"
CHECKIN = ["家访", "周小禾", *TABLET_VISIT, "提交"]


# ---------------------------------------------------------------- the protocol vectors


def _vectors(kind: str) -> list[Any]:
    if not VECTORS_PATH.is_file():
        return [pytest.param(None, id="vectors.json-missing")]
    vectors = json.loads(VECTORS_PATH.read_text("utf-8"))["vectors"]
    found = [v for v in vectors if v["platform"] == "feishu" and v["kind"] == kind]
    return [pytest.param(v, id=v["id"]) for v in found] or [pytest.param(None, id="no-vectors")]


@pytest.mark.parametrize("vector", _vectors("feishu_decrypt"))
def test_decrypt_vectors_here_and_in_lark_oapi(vector: dict[str, Any] | None) -> None:
    if vector is None:
        pytest.fail(f"{VECTORS_PATH} is missing or has no Feishu decrypt vectors")
    key, encrypt = vector["inputs"]["encrypt_key"], vector["inputs"]["encrypt"]
    assert feishu_crypto.decrypt(key, encrypt) == vector["expected"]["plaintext"]
    assert lark_decrypt(key, encrypt) == vector["expected"]["plaintext"]


@pytest.mark.parametrize("vector", _vectors("feishu_event_signature"))
def test_signature_vector(vector: dict[str, Any] | None) -> None:
    if vector is None:
        pytest.fail(f"{VECTORS_PATH} is missing or has no Feishu signature vectors")
    i = vector["inputs"]
    body = i["body"].encode()
    expected = vector["expected"]["signature"]
    assert feishu_crypto.signature(i["timestamp"], i["nonce"], i["encrypt_key"], body) == expected
    assert feishu_crypto.signature_ok(i["timestamp"], i["nonce"], i["encrypt_key"], body, expected)
    assert not feishu_crypto.signature_ok(i["timestamp"], i["nonce"], "other", body, expected)


@pytest.mark.parametrize("text", ["", "hello", "x" * 16, "家访 周小禾 " * 100])
def test_what_we_encrypt_lark_oapi_decrypts(text: str) -> None:
    encrypt = feishu_crypto.encrypt(ENCRYPT_KEY, text)
    assert lark_decrypt(ENCRYPT_KEY, encrypt) == text
    assert feishu_crypto.decrypt(ENCRYPT_KEY, encrypt) == text


@pytest.mark.parametrize(
    "encrypt",
    ["not base64!", "", "AAAA", "A" * 43 + "=", feishu_crypto.encrypt("another key", "{}")],
)
def test_what_is_not_our_ciphertext_does_not_decrypt(encrypt: str) -> None:
    with pytest.raises(feishu_crypto.DecryptError):
        feishu_crypto.decrypt(ENCRYPT_KEY, encrypt)


# ---------------------------------------------------------------- settings

BASE_ENV = {"FEISHU_APP_ID": APP_ID, "FEISHU_APP_SECRET": APP_SECRET}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FEISHU_APP_ID": APP_ID}, "FEISHU_APP_SECRET"),
        ({"FEISHU_ENCRYPT_KEY": "k"}, "FEISHU_ENCRYPT_KEY"),
        (BASE_ENV, "FEISHU_VERIFICATION_TOKEN"),
        ({**BASE_ENV, "FEISHU_VERIFICATION_TOKEN": "v"}, "FEISHU_ENCRYPT_KEY"),
        ({**BASE_ENV, "FEISHU_MODE": "stream"}, "FEISHU_MODE"),
        ({**BASE_ENV, "FEISHU_MODE": "ws", "FEISHU_API_BASE": "open.feishu.cn"}, "FEISHU_API_BASE"),
    ],
)
def test_misconfiguration_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env, env_file=None)
    assert named in str(err.value)


def test_settings_of_both_modes_and_secrets_masked() -> None:
    ws = load_settings({**BASE_ENV, "FEISHU_MODE": "ws"}, env_file=None).feishu
    assert ws is not None and ws.mode == "ws" and ws.api_base == "https://open.feishu.cn"
    webhook = load_settings(
        {**BASE_ENV, "FEISHU_VERIFICATION_TOKEN": VERIFICATION_TOKEN,
         "FEISHU_ENCRYPT_KEY": ENCRYPT_KEY, "FEISHU_API_BASE": "https://open.larksuite.com/"},
        env_file=None,
    ).feishu  # fmt: skip
    assert webhook is not None and webhook.mode == "webhook"
    assert webhook.api_base == "https://open.larksuite.com"
    assert APP_SECRET not in repr(webhook) and ENCRYPT_KEY not in repr(webhook)
    assert load_settings({}, env_file=None).feishu is None


# ---------------------------------------------------------------- reading events


def message_event(
    text: str = "家访", *, event_id: str = "ev-1", open_id: str = OPEN_ID, chat_type: str = "p2p",
    message_type: str = "text", mentions: list[dict[str, Any]] | None = None,
    token: str = VERIFICATION_TOKEN, content: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An `im.message.receive_v1` event as Feishu sends it (schema 2.0)."""
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": "im.message.receive_v1",
            "create_time": "1772413200000",
            "token": token,
            "app_id": APP_ID,
            "tenant_key": "tenant-1",
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": open_id, "user_id": "zhang1", "union_id": "on_1"},
                "sender_type": "user",
                "tenant_key": "tenant-1",
            },
            "message": {
                "message_id": f"om_{event_id}",
                "create_time": "1772413200000",
                "chat_id": "oc_group1" if chat_type == "group" else "oc_p2p1",
                "chat_type": chat_type,
                "message_type": message_type,
                "content": content
                if content is not None
                else json.dumps({"text": text} if message_type == "text" else {"image_key": "i"}),
                "mentions": mentions or [],
            },
        },
    }


def test_group_mentions_are_stripped_and_other_types_unsupported() -> None:
    mention = {"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "家访助手"}
    msg = feishu.parse_event(
        message_event("@_user_1  家访 ", chat_type="group", mentions=[mention])
    )
    assert msg is not None and msg.text == "家访" and msg.in_group and msg.open_id == OPEN_ID
    image = feishu.parse_event(message_event(message_type="image"))
    assert image is not None and image.kind is MessageKind.UNSUPPORTED and image.text == ""


def test_events_that_are_not_user_messages_are_none() -> None:
    read = message_event()
    read["header"]["event_type"] = "im.message.message_read_v1"
    from_app = message_event()
    from_app["event"]["sender"]["sender_type"] = "app"
    v1 = {"uuid": "u", "token": VERIFICATION_TOKEN, "type": "event_callback", "event": {}}
    assert [feishu.parse_event(p) for p in (read, from_app, v1)] == [None, None, None]


def _without(path: str) -> dict[str, Any]:
    payload = message_event()
    *parents, last = path.split(".")
    node = payload
    for name in parents:
        node = node[name]
    del node[last]
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"schema": "1.0"},
        _without("header"),
        _without("header.event_id"),
        _without("event"),
        _without("event.sender.sender_id"),
        _without("event.sender.sender_id.open_id"),
        _without("event.message.chat_type"),
        _without("event.message.content"),
        message_event(content="{not json"),
        message_event(event_id="ev\n1"),
        message_event(open_id="x" * 200),
    ],
)
def test_unreadable_events_are_refused(payload: Any) -> None:
    with pytest.raises(feishu.BadEvent):
        feishu.parse_event(payload)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu(
        app_id=APP_ID,
        app_secret=APP_SECRET,
        encrypt_key=ENCRYPT_KEY,
        verification_token=VERIFICATION_TOKEN,
        now=lambda: clock.now().timestamp(),
    )
    await fake.start()
    yield fake
    await fake.close()
    assert fake.problems == []


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


def give_feishu_id(deps: Deps, staff_no: str = "T001", open_id: str = OPEN_ID) -> None:
    with deps.db.begin() as conn:
        staff_id = conn.execute(select(staff.c.id).where(staff.c.staff_no == staff_no)).scalar()
        conn.execute(
            insert(identities).values(channel="feishu", external_id=open_id, staff_id=staff_id)
        )


def with_feishu(settings: Settings, fake: FakeFeishu, mode: str = "webhook") -> Settings:
    conf = FeishuSettings(
        app_id=APP_ID,
        app_secret=Secret(APP_SECRET),
        verification_token=Secret(VERIFICATION_TOKEN),
        encrypt_key=Secret(ENCRYPT_KEY),
        mode=mode,
        api_base=fake.base,
    )
    return replace(settings, feishu=conf)


@pytest.fixture
def webhook_settings(settings: Settings, fake: FakeFeishu, deps: Deps) -> Settings:
    give_feishu_id(deps)
    return with_feishu(settings, fake)


@asynccontextmanager
async def serving(settings: Settings, deps: Deps, **kw: Any) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(settings, deps, **kw), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


class Teacher:
    """Builds the events one Feishu user sends, each with a new event_id."""

    _ids = itertools.count(1)

    def __init__(self, open_id: str = OPEN_ID) -> None:
        self.open_id = open_id

    def says(self, text: str = "", **kw: Any) -> dict[str, Any]:
        return message_event(text, event_id=f"ev{next(self._ids):06d}", open_id=self.open_id, **kw)


async def post(
    http: ClientSession, server: TestServer, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(server.make_url(feishu.PATH), data=body, headers=headers) as r:
        return r.status, await r.json()


async def deliver(
    http: ClientSession, server: TestServer, fake: FakeFeishu, payload: Any
) -> tuple[int, Any]:
    body, headers = fake.webhook_request(payload)
    return await post(http, server, body, headers)


def count(deps: Deps, table: Any) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def outbox_rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all())


def visit_rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(visits)).all())


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def assert_whole_checkin(replies: list[str], deps: Deps) -> None:
    assert "共5名" in replies[0] and "周小禾" in replies[1]
    assert "请核对 周小禾（三年级1班）" in replies[-2]
    assert "已提交 周小禾（三年级1班）" in replies[-1]
    [visit] = visit_rows(deps)
    assert visit.status == "submitted" and visit.method == "电话"


def assert_nothing_written(deps: Deps, fake: FakeFeishu) -> None:
    assert count(deps, inbound_messages) == 0 and count(deps, conversations) == 0
    assert count(deps, outbox_table) == 0 and fake.messages == []


# ---------------------------------------------------------------- the webhook


async def test_url_verification_echoes_the_challenge(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    challenge = {"challenge": "ajls384kdjx98XX", "token": VERIFICATION_TOKEN,
                 "type": "url_verification"}  # fmt: skip
    wrong = {**challenge, "token": "not-ours"}
    async with serving(webhook_settings, deps) as server:
        body, _ = fake.webhook_request(challenge)  # unsigned, as Feishu sends it
        status, answer = await post(http, server, body, {"Content-Type": "application/json"})
        assert (status, answer) == (200, {"challenge": "ajls384kdjx98XX"})
        body, _ = fake.webhook_request(wrong)
        status, _ = await post(http, server, body, {})
        assert status == 403
    assert_nothing_written(deps, fake)


async def test_whole_checkin_over_the_webhook(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    teacher = Teacher()
    async with serving(webhook_settings, deps) as server:
        for n, text in enumerate(CHECKIN, start=1):
            status, answer = await deliver(http, server, fake, teacher.says(text))
            assert (status, answer) == (200, {})
            await fake.wait_for(n)
        await eventually(lambda: all(row.status == "sent" for row in outbox_rows(deps)))
    assert_whole_checkin(fake.texts(), deps)
    assert {m.receive_id for m in fake.messages} == {OPEN_ID}
    assert {m.query["receive_id_type"] for m in fake.messages} == {"open_id"}
    rows = outbox_rows(deps)
    assert [m.uuid for m in fake.messages] == [message_uuid(r.idempotency_key) for r in rows]
    assert len({m.uuid for m in fake.messages}) == len(CHECKIN) and fake.issued == ["t-1"]
    for secret in ("周小禾", "平板", OPEN_ID, APP_SECRET, ENCRYPT_KEY, "t-1"):
        assert secret not in caplog.text


def _signed(fake: FakeFeishu, change: str, clock: FakeClock) -> tuple[bytes, dict[str, str]]:
    event = message_event(event_id="ev-bad")
    now = int(clock.now().timestamp())
    if change == "no-headers":
        body, _ = fake.webhook_request(event)
        return body, {}
    if change == "wrong-key":
        return fake.webhook_request(event, key="not-our-key")
    if change == "stale":
        return fake.webhook_request(event, timestamp=now - 2 * 3600)
    if change == "ahead":
        return fake.webhook_request(event, timestamp=now + 2 * 3600)
    body, headers = fake.webhook_request(event)
    if change == "tampered":
        return body.replace(b'"}', b'A"}'), headers
    if change == "bad-signature":
        return body, {**headers, "X-Lark-Signature": "0" * 64}
    if change == "word-timestamp":
        return body, {**headers, "X-Lark-Request-Timestamp": "yesterday"}
    raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("no-headers", 401),
        ("word-timestamp", 401),
        ("bad-signature", 403),
        ("tampered", 403),
        ("wrong-key", 403),
        ("stale", 403),
        ("ahead", 403),
    ],
)
async def test_bad_signatures_and_stale_timestamps_are_refused_and_change_nothing(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, clock: FakeClock,
    http: ClientSession, change: str, status: int,
) -> None:  # fmt: skip
    async with serving(webhook_settings, deps) as server:
        got, _ = await post(http, server, *_signed(fake, change, clock))
    assert got == status
    assert_nothing_written(deps, fake)


def _signed_body(fake: FakeFeishu, clock: FakeClock, body: bytes) -> dict[str, str]:
    ts, nonce = str(int(clock.now().timestamp())), "n1"
    return {
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": feishu_crypto.signature(ts, nonce, ENCRYPT_KEY, body),
    }


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 100 + b"]" * 100, 400, "deep"),
        (json.dumps(message_event()).encode(), 400, "encrypt"),  # plaintext: no Encrypt Key set
        (b'{"encrypt": 5}', 400, "encrypt"),
        (b'{"encrypt": "bm90IGEgY2lwaGVydGV4dA=="}', 403, "forbidden"),  # corrupt ciphertext
        (b'{"encrypt": "%%%"}', 403, "forbidden"),
    ],
)
async def test_malformed_bodies_and_corrupt_ciphertext(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, clock: FakeClock,
    http: ClientSession, body: bytes, status: int, problem: str,
) -> None:  # fmt: skip
    async with serving(webhook_settings, deps) as server:
        got, answer = await post(http, server, body, _signed_body(fake, clock, body))
    assert got == status and problem in answer["error"]
    assert_nothing_written(deps, fake)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ("{broken", 400),
        ('"a string"', 400),
        (_without("event.sender.sender_id"), 400),
        (_without("header.event_id"), 400),
        (message_event(token="not-ours"), 403),
        (_without("header.token"), 403),
    ],
)
async def test_decrypted_events_that_are_unusable_or_carry_a_wrong_token(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession,
    payload: Any, status: int,
) -> None:  # fmt: skip
    async with serving(webhook_settings, deps) as server:
        got, _ = await deliver(http, server, fake, payload)
    assert got == status
    assert_nothing_written(deps, fake)


async def test_an_oversized_body_is_413(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    async with serving(webhook_settings, deps) as server:
        got, _ = await deliver(http, server, fake, message_event("家访" * 20_000))
    assert got == 413
    assert_nothing_written(deps, fake)


async def test_events_that_are_not_messages_get_200_and_reach_no_one(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    read = message_event(event_id="ev-read")
    read["header"]["event_type"] = "im.message.message_read_v1"
    entered = message_event(event_id="ev-enter")
    entered["header"]["event_type"] = "im.chat.access_event.bot_p2p_chat_entered_v1"
    from_bot = message_event(event_id="ev-bot")
    from_bot["event"]["sender"]["sender_type"] = "app"
    async with serving(webhook_settings, deps) as server:
        for payload in (read, entered, from_bot):
            assert await deliver(http, server, fake, payload) == (200, {})
    assert_nothing_written(deps, fake)


async def test_a_redelivered_event_is_handled_and_answered_once_even_after_a_restart(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    teacher = Teacher()
    answer = teacher.says("3")
    async with serving(webhook_settings, deps) as server:
        await deliver(http, server, fake, teacher.says("周小禾"))
        for _ in range(2):
            assert (await deliver(http, server, fake, answer))[0] == 200
        await fake.wait_for(2)
        await eventually(lambda: all(row.status == "sent" for row in outbox_rows(deps)))
    async with serving(webhook_settings, deps) as server:  # a restarted process
        assert (await deliver(http, server, fake, answer))[0] == 200
        await asyncio.sleep(0.1)
    [visit] = visit_rows(deps)
    assert visit.answers == {"method": "电话"}
    assert len(fake.messages) == 2 and "【第2题/" in fake.texts()[1]
    assert len(outbox_rows(deps)) == 2 and fake.duplicates == 0


async def test_a_group_mention_is_answered_one_to_one_never_in_the_group(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    mention = {"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "家访助手"}
    event = Teacher().says("@_user_1 家访", chat_type="group", mentions=[mention])
    async with serving(webhook_settings, deps) as server:
        assert (await deliver(http, server, fake, event))[0] == 200
        [reply] = await fake.wait_for(1)
    assert reply.receive_id == OPEN_ID and reply.query == {"receive_id_type": "open_id"}
    assert "共5名" in reply.text


async def test_pictures_get_please_reply_in_text_and_strangers_the_register_reply(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    async with serving(webhook_settings, deps) as server:
        await deliver(http, server, fake, Teacher().says(message_type="image"))
        await deliver(http, server, fake, Teacher("ou_stranger").says("家访"))
        await fake.wait_for(2)
    by_user = {m.receive_id: m.text for m in fake.messages}
    assert texts.TEXT_ONLY in by_user[OPEN_ID]
    assert by_user["ou_stranger"] == texts.NOT_REGISTERED.format(user_id="ou_stranger")


class SlowConversations:
    """The real dispatcher behind a delay: a turn that outlasts Feishu's 3 seconds."""

    def __init__(self, inner: Conversations, delay: float) -> None:
        self.inner, self.delay = inner, delay

    async def handle(self, message: InboundMessage) -> list[str]:
        await asyncio.sleep(self.delay)
        return await self.inner.handle(message)


async def test_a_slow_turn_is_answered_200_within_three_seconds_and_its_reply_follows(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession
) -> None:
    async with serving(webhook_settings, deps) as server:
        channel = server.app[feishu.FEISHU_CHANNEL]
        channel.dispatcher = SlowConversations(channel.dispatcher, 3.5)
        started = asyncio.get_running_loop().time()
        assert await deliver(http, server, fake, Teacher().says("家访")) == (200, {})
        assert asyncio.get_running_loop().time() - started < 3.0
        assert fake.messages == []
        [reply] = await fake.wait_for(1)
    assert "共5名" in reply.text


async def test_the_roster_column_feishu_id_binds_the_open_id(
    settings: Settings, deps: Deps, fake: FakeFeishu, http: ClientSession, tmp_path: Path,
    clock: FakeClock,
) -> None:  # fmt: skip
    staff_csv = tmp_path / "staff.csv"
    staff_csv.write_text(
        "工号,姓名,学校,角色,飞书ID\nT002,李示例,示例区实验小学,教师,ou_li\n", "utf-8"
    )
    with deps.db.begin() as conn:
        import_roster(conn, read_roster([staff_csv]), now=clock.now())
    async with serving(with_feishu(settings, fake), deps) as server:
        await deliver(http, server, fake, Teacher("ou_li").says("家访"))
        [reply] = await fake.wait_for(1)
    assert reply.receive_id == "ou_li" and "共" in reply.text
    assert "还没有在家访助手中登记" not in reply.text


# ---------------------------------------------------------------- outbound


@pytest.fixture
async def sender(fake: FakeFeishu, clock: FakeClock) -> AsyncIterator[FeishuSender]:
    http = Http()
    yield FeishuSender(http, TenantToken(http, fake.base, APP_ID, Secret(APP_SECRET), clock),
                       fake.base)  # fmt: skip
    await http.close()


async def test_the_token_is_cached_renewed_before_expiry_and_after_a_rejection(
    sender: FeishuSender, fake: FakeFeishu, clock: FakeClock
) -> None:
    await sender.send(OPEN_ID, "一")
    await sender.send(OPEN_ID, "二")
    assert fake.issued == ["t-1"]
    clock.advance(seconds=7200 - 599)  # inside the last ten minutes
    await sender.send(OPEN_ID, "三")
    assert fake.issued == ["t-1", "t-2"]
    fake.revoked.add("t-2")
    await sender.send(OPEN_ID, "四")
    assert fake.issued == ["t-1", "t-2", "t-3"]
    assert [m.token for m in fake.messages] == ["t-1", "t-1", "t-2", "t-3"]


@pytest.mark.parametrize(
    ("status", "answer", "permanent", "retry_after"),
    [
        (400, {"code": 230013, "msg": "Bot has NO availability to this user."}, True, None),
        (400, {"code": 230001, "msg": "invalid param"}, True, None),
        (429, {"code": 99991400, "msg": "request trigger frequency limit"}, False, 60.0),
        (400, {"code": 230020, "msg": "rate limit"}, False, 60.0),
        (400, {"code": 99991672, "msg": "Access denied: scope im:message"}, False, 600.0),
        (500, {"code": 1, "msg": "internal"}, False, None),
        (502, {}, False, None),
        (200, {"code": 0, "msg": "success"}, False, None),  # no message_id: not taken as sent
    ],
)
async def test_send_errors_are_transient_or_permanent(
    sender: FeishuSender, fake: FakeFeishu, status: int, answer: dict[str, Any],
    permanent: bool, retry_after: float | None,
) -> None:  # fmt: skip
    fake.send_errors.append((status, answer))
    with pytest.raises(SendError) as err:
        await sender.send(OPEN_ID, "提醒")
    assert err.value.permanent is permanent and err.value.retry_after == retry_after
    assert OPEN_ID not in err.value.reason


async def test_a_wrong_app_secret_keeps_messages_queued(fake: FakeFeishu, clock: FakeClock) -> None:
    http = Http()
    bad = FeishuSender(http, TenantToken(http, fake.base, APP_ID, Secret("wrong"), clock),
                       fake.base)  # fmt: skip
    try:
        with pytest.raises(SendError) as err:
            await bad.send(OPEN_ID, "提醒")
    finally:
        await http.close()
    assert not err.value.permanent and err.value.retry_after == 600.0


async def test_a_resend_of_one_outbox_row_reaches_the_teacher_once(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, clock: FakeClock
) -> None:
    """Sent, but not recorded as sent (a crash, a lost answer): the retry carries the same
    uuid and Feishu drops it."""
    now = clock.now()
    async with serving(webhook_settings, deps, serving=False) as server:  # delivery by hand
        await deps.db.run(
            lambda conn: outbox.enqueue(
                conn, key="reminder:T001:2026-03-02", channel="feishu", recipient=OPEN_ID,
                kind="reminder", body="您有5名学生待家访", not_before=now, now=now,
            )
        )  # fmt: skip
        delivery = server.app[DELIVERY]
        await delivery.run_once()
        [row] = outbox_rows(deps)
        assert row.status == "sent"
        with deps.db.begin() as conn:  # as if the "sent" had never been recorded
            conn.execute(
                outbox_table.update().values(status="pending", next_attempt_at=now, sent_at=None)
            )
        await delivery.run_once()
    assert fake.texts() == ["您有5名学生待家访"] and fake.duplicates == 1
    assert [r.status for r in outbox_rows(deps)] == ["sent"]


async def test_the_reminder_job_reaches_a_teacher_on_feishu(
    webhook_settings: Settings, deps: Deps, fake: FakeFeishu, clock: FakeClock
) -> None:
    async with serving(webhook_settings, deps) as server:
        report = await server.app[JOBS].run(REMIND, clock.now())
        server.app[DELIVERY].poke()  # the app's own delivery loop sends it
        await fake.wait_for(1)
        await eventually(lambda: all(row.status == "sent" for row in outbox_rows(deps)))
    assert report.skipped is None and report.planned >= 1
    [reminder] = [m for m in fake.messages if m.receive_id == OPEN_ID]
    assert "周小禾" in reminder.text and reminder.uuid is not None
    assert all(row.channel == "feishu" and row.status == "sent" for row in outbox_rows(deps))
