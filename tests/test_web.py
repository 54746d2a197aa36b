"""The HTTP surface on a real aiohttp server (loopback), built by the real app factory."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import BaseTestServer, TestServer
from sqlalchemy import func, select

from bot.app import create_app
from bot.deps import Deps
from config.settings import Settings
from handlers import texts
from storage.db import Database
from storage.export import export_visits
from storage.schema import conversations, visits
from tests.test_conversation import TABLET_VISIT

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def server(settings: Settings, deps: Deps) -> AsyncIterator[BaseTestServer]:
    async with TestServer(create_app(settings, deps), host="127.0.0.1") as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def post(http: ClientSession, server: TestServer, body: Any, **kw: Any) -> tuple[int, Any]:
    headers = kw.pop("headers", AUTH)
    async with http.post(server.make_url("/api/messages"), json=body, headers=headers, **kw) as r:
        return r.status, await r.json()


async def test_healthz(server: TestServer, http: ClientSession) -> None:
    async with http.get(server.make_url("/healthz")) as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}


async def test_healthz_is_503_when_the_database_does_not_answer(
    settings: Settings, deps: Deps, http: ClientSession
) -> None:
    dead = Database("postgresql://root@127.0.0.1:1/test")  # nothing listens on port 1
    try:
        app = create_app(settings, replace(deps, db=dead))
        async with (
            TestServer(app, host="127.0.0.1") as srv,
            http.get(srv.make_url("/healthz")) as r,
        ):
            assert r.status == 503 and (await r.json())["status"] == "unavailable"
    finally:
        dead.close()


async def test_whole_checkin_over_the_json_api_shows_up_in_the_export(
    server: TestServer, http: ClientSession, deps: Deps, settings: Settings, tmp_path: Path
) -> None:
    status, body = await post(http, server, {"user": "T001", "text": "家访"})
    assert status == 200 and "共5名" in body["replies"][0]
    await post(http, server, {"user": "T001", "text": "周小禾"})
    for answer in TABLET_VISIT:
        status, body = await post(http, server, {"user": "T001", "text": answer})
        assert status == 200
    assert "请核对" in body["replies"][0]
    status, body = await post(http, server, {"user": "T001", "text": "提交"})
    assert "已提交" in body["replies"][0]

    out = tmp_path / "visits.csv"
    with deps.db.begin() as conn:
        report = export_visits(
            conn,
            out,
            "csv",
            [(q.key, q.label) for q in deps.form.questions],
            deps.form.followup_kinds,
            settings.tz,
        )
    assert report.visits == 1 and report.followups == 1
    with out.open(encoding="utf-8-sig", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["学籍号"] == "DEMO0003" and row["教师工号"] == "T001"
    assert (row["家访方式"], row["居家学习"], row["网课设备"], row["缺少设备"]) == (
        "电话",
        "好",
        "否",
        "平板或电脑",
    )
    assert (row["生活困难"], row["情绪状态"], row["亲子关系"], row["其他情况"]) == (
        "否",
        "稳定",
        "融洽",
        "无",
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer 令牌"},
    ],
)
async def test_missing_or_wrong_token_is_401_and_changes_nothing(
    server: TestServer, http: ClientSession, deps: Deps, headers: dict[str, str]
) -> None:
    status, body = await post(http, server, {"user": "T001", "text": "家访"}, headers=headers)
    assert status == 401 and "token" in body["error"]
    with deps.db.begin() as conn:
        assert conn.execute(select(func.count()).select_from(conversations)).scalar_one() == 0


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        # 10,000 levels (~50 KB): json.loads alone would die of a RecursionError (HTTP 500)
        pytest.param(b"[" * 10_000 + b"]" * 10_000, "nested deeper than 32", id="deep-list"),
        pytest.param(
            b'{"user": "T001", "text": "x", "n": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
            "nested deeper than 32",
            id="deep-object-in-a-message",
        ),
        pytest.param(b"[" * 33 + b"]" * 33, "nested deeper than 32", id="33-levels"),
        (b'{"text": "hi"}', '"user"'),
        (b'{"user": "T001"}', '"text"'),
        (b'{"user": "T001", "text": 5}', '"text"'),
        (b'{"user": "T001", "text": "x", "message_id": 7}', '"message_id"'),
        (b'{"user": "T001", "text": "x", "message_id": "m1\\n2026 ERROR forged"}', '"message_id"'),
        (b'{"user": "T001", "text": "x", "message_id": "m\\u0000"}', '"message_id"'),
        (b'{"user": "T0\\n01", "text": "x"}', '"user"'),
    ],
)
async def test_malformed_bodies_are_400(
    server: TestServer, http: ClientSession, raw: bytes, problem: str
) -> None:
    async with http.post(
        server.make_url("/api/messages"),
        data=raw,
        headers={**AUTH, "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400 and problem in (await r.json())["error"]


async def test_body_over_64_kib_is_413(server: TestServer, http: ClientSession, deps: Deps) -> None:
    status, _ = await post(http, server, {"user": "T001", "text": "字" * 30_000})
    assert status == 413
    with deps.db.begin() as conn:
        assert conn.execute(select(func.count()).select_from(visits)).scalar_one() == 0


async def test_long_but_allowed_message_gets_a_polite_answer(
    server: TestServer, http: ClientSession
) -> None:
    status, body = await post(http, server, {"user": "T001", "text": "a" * 5000})
    assert status == 200 and "5000字" in body["replies"][0]


async def test_unknown_staff_number_gets_the_register_reply(
    server: TestServer, http: ClientSession
) -> None:
    status, body = await post(http, server, {"user": "NOBODY", "text": "家访"})
    assert status == 200
    assert body["replies"] == [texts.UNKNOWN_STAFF_NO.format(user_id="NOBODY")]


async def test_retry_with_the_same_message_id_is_processed_once(
    server: TestServer, http: ClientSession, deps: Deps
) -> None:
    await post(http, server, {"user": "T001", "text": "周小禾"})
    first = await post(http, server, {"user": "T001", "text": "3", "message_id": "abc"})
    second = await post(http, server, {"user": "T001", "text": "3", "message_id": "abc"})
    assert first == second
    with deps.db.begin() as conn:
        answers = conn.execute(select(visits.c.answers)).scalar_one()
    assert answers == {"method": "电话"}


async def test_half_an_emoji_is_answered_like_any_text(
    server: TestServer, http: ClientSession
) -> None:
    # "\ud83d" alone (JSON allows the escape) cannot be stored by any driver as it is
    await post(http, server, {"user": "T001", "text": "家访"})
    body = {"user": "T001", "text": "小\ud83d", "message_id": "m-\ud83d"}
    first = await post(http, server, body)
    assert first == (200, {"replies": [texts.NO_SUCH_NAME.format(name="小\ufffd")]})
    assert await post(http, server, body) == first  # and its retry is recognised


async def test_json_channel_is_off_without_a_token(
    settings: Settings, deps: Deps, http: ClientSession
) -> None:
    app = create_app(replace(settings, api_token=None), deps)
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        http.post(srv.make_url("/api/messages"), json={}) as r,
    ):
        assert r.status == 404
