"""Console sign-in and session security, over the real app on loopback and both databases.

Each security rule of issue 13 has a test here: one-time links (reused, expired, forged, a
teacher's), sessions (idle and absolute timeouts, logout, deactivation, role change), CSRF,
cookies, headers, the per-address rate limit (shared by instances), WeCom's web authorisation
against a local fake, and the chat word 后台.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import insert, select

from bot.core.signin import secret_hash
from bot.deps import Deps
from config.settings import Secret, Settings, WeComSettings
from handlers import texts
from storage.db import Database
from storage.schema import console_sessions, console_tokens, identities, signin_attempts, staff
from tests import fake_wecom
from tests.conftest import ChatDriver, FakeClock
from tests.console_kit import ConsoleClient, issue_link, set_staff, start_console
from tests.fake_wecom import AGENT_ID, CORP_ID, SECRET, FakeWeCom

PROTECTED = [
    "/console/",
    "/console/students",
    "/console/students/1",
    "/console/followups",
    "/console/roster",
    "/console/export?format=xlsx",
    "/console/audit",
]


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def _signed_in(web: ConsoleClient) -> bool:
    async with await web.get("/console/") as r:
        return r.status == 200


# ---------------------------------------------------------------------------- links
async def test_a_link_signs_a_coordinator_in_once(web: ConsoleClient) -> None:
    token = issue_link(web.deps.db, "C001", web.deps)
    async with await web.get(f"/console/login?token={token}") as r:
        assert r.status == 303 and r.headers["Location"] == "/console/"
        cookie = r.cookies["hv_console"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
        assert cookie["path"] == "/console"
    page = await web.text("/console/")
    assert "示例区实验小学" in page and "家访概况" in page

    web.forget_cookies()
    async with await web.get(f"/console/login?token={token}") as r:
        body = await r.text()
        assert r.status == 403 and "hv_console" not in r.cookies
    assert "已失效" in body and "后台" in body  # says how to get a new one
    assert not await _signed_in(web)


async def test_only_the_hash_of_a_token_is_stored(web: ConsoleClient) -> None:
    token = issue_link(web.deps.db, "C001", web.deps)
    with web.deps.db.begin() as conn:
        stored = conn.execute(select(console_tokens.c.token_hash)).scalars().all()
    assert stored == [secret_hash(token)] and token not in stored
    assert len(token) >= 43  # 256 bits in URL-safe base64


async def test_an_expired_link_gets_no_session(web: ConsoleClient, clock: FakeClock) -> None:
    token = issue_link(web.deps.db, "B001", web.deps)
    clock.advance(minutes=15, seconds=1)
    async with await web.get(f"/console/login?token={token}") as r:
        assert r.status == 403 and "hv_console" not in r.cookies
        assert "15 分钟" in await r.text()


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "../../etc", "A" * 500])
async def test_a_forged_token_gets_no_session(web: ConsoleClient, token: str) -> None:
    async with await web.get("/console/login", params={"token": token}) as r:
        assert r.status == 403 and "hv_console" not in r.cookies
    assert not await _signed_in(web)


async def test_a_teachers_token_opens_nothing(web: ConsoleClient, clock: FakeClock) -> None:
    with web.deps.db.begin() as conn:
        t001 = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        conn.execute(
            insert(console_tokens).values(
                token_hash=secret_hash("t" * 43),
                staff_id=t001,
                created_at=clock.now(),
                expires_at=clock.now() + timedelta(minutes=15),
            )
        )
    async with await web.get("/console/login?token=" + "t" * 43) as r:
        assert r.status == 403
    assert not await _signed_in(web)


async def test_a_secure_cookie_behind_https(settings: Settings, deps: Deps) -> None:
    async for web in start_console(replace(settings, public_url="https://hv.example.edu"), deps):
        token = issue_link(deps.db, "C001", deps)
        async with await web.get(f"/console/login?token={token}") as r:
            assert r.status == 303 and r.cookies["hv_console"]["secure"]


# ---------------------------------------------------------------------------- pages need a session
@pytest.mark.parametrize("path", PROTECTED)
async def test_a_page_without_a_session_shows_nothing(web: ConsoleClient, path: str) -> None:
    async with await web.get(path) as r:
        assert r.status == 303 and r.headers["Location"] == "/console/signin"
        body = await r.text()
    assert "王小雨" not in body and "DEMO" not in body
    help_page = await web.text("/console/signin")
    assert "后台" in help_page and "王小雨" not in help_page


async def test_a_made_up_session_cookie_is_nobody(web: ConsoleClient) -> None:
    web.http.cookie_jar.update_cookies({"hv_console": "A" * 43}, web.server.make_url("/console/"))
    assert not await _signed_in(web)


async def test_security_headers_on_every_console_response(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    for path in ["/console/", "/console/students", "/console/signin", "/console/students/999999"]:
        async with await web.get(path) as r:
            h = r.headers
            assert h["Cache-Control"] == "no-store", path
            assert h["Referrer-Policy"] == "no-referrer" and h["X-Frame-Options"] == "DENY"
            csp = h["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp
            assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            body = await r.text()
            assert (
                "<script" not in body
                and " style=" not in body
                and "http" not in body.split("<body>")[-1].replace("http://www.w3.org/2000/svg", "")
            )
    token = issue_link(web.deps.db, "C001", web.deps)
    async with await web.get(f"/console/login?token={token}") as r:  # the URL with a token
        assert r.headers["Referrer-Policy"] == "no-referrer"


# ---------------------------------------------------------------------------- sessions
async def test_the_session_ends_after_thirty_idle_minutes(
    web: ConsoleClient, clock: FakeClock
) -> None:
    await web.sign_in("C001")
    clock.advance(minutes=25)
    assert await _signed_in(web)  # activity keeps it alive ...
    clock.advance(minutes=25)
    assert await _signed_in(web)
    clock.advance(minutes=30, seconds=1)  # ... idleness does not
    assert not await _signed_in(web)


async def test_the_session_ends_after_eight_hours_whatever_the_activity(
    web: ConsoleClient, clock: FakeClock
) -> None:
    await web.sign_in("C001")
    for _ in range(19):
        clock.advance(minutes=25)
        assert await _signed_in(web)
    clock.advance(minutes=25)  # 8 h 20 min after sign-in
    assert not await _signed_in(web)


async def test_logout_needs_the_csrf_token_then_ends_the_session(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    csrf = await web.csrf()
    async with await web.post("/console/logout", data={}) as r:
        assert r.status == 403
    async with await web.post("/console/logout", data={"csrf_token": "wrong" + csrf}) as r:
        assert r.status == 403
    assert await _signed_in(web)
    async with await web.post("/console/logout", data={"csrf_token": csrf}) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/console/signin")
    assert not await _signed_in(web)
    with web.deps.db.begin() as conn:
        ended = conn.execute(select(console_sessions.c.ended_at)).scalars().all()
    assert ended and all(e is not None for e in ended)


async def test_the_csrf_token_may_come_as_a_header(web: ConsoleClient) -> None:
    await web.sign_in("B001")
    csrf = await web.csrf()
    async with await web.post("/console/logout", headers={"X-CSRF-Token": csrf}) as r:
        assert r.status == 303
    assert not await _signed_in(web)


async def test_an_old_cookie_replayed_after_logout_is_nobody(web: ConsoleClient) -> None:
    await web.sign_in("C001")
    cookie = web.http.cookie_jar.filter_cookies(web.server.make_url("/console/"))["hv_console"]
    csrf = await web.csrf()
    async with await web.post("/console/logout", data={"csrf_token": csrf}):
        pass
    web.http.cookie_jar.update_cookies(
        {"hv_console": cookie.value}, web.server.make_url("/console/")
    )
    assert not await _signed_in(web)


@pytest.mark.parametrize(
    "change", [{"active": False}, {"role": "teacher"}, {"role": "bureau", "school_id": None}]
)
async def test_deactivation_or_a_role_change_ends_the_session(
    web: ConsoleClient, change: dict[str, object]
) -> None:
    await web.sign_in("C001")
    set_staff(web.deps.db, "C001", **change)
    assert not await _signed_in(web)
    set_staff(web.deps.db, "C001", active=True, role="coordinator")  # back: still signed out
    assert not await _signed_in(web)


async def test_sign_in_attempts_are_limited_per_address(web: ConsoleClient) -> None:
    for _ in range(10):
        async with await web.get("/console/login?token=" + "A" * 43) as r:
            assert r.status == 403
    token = issue_link(web.deps.db, "C001", web.deps)
    async with await web.get(f"/console/login?token={token}") as r:
        assert r.status == 429 and "hv_console" not in r.cookies
    assert not await _signed_in(web)


async def test_the_limit_holds_across_instances_and_passes(
    web: ConsoleClient, settings: Settings, deps: Deps, clock: FakeClock
) -> None:
    """Two instances on one database (their own engines, as behind a load balancer) share the
    count; the database keeps hashes, not addresses; after the window a link works again."""
    other_db = Database(settings.database_url)
    try:
        async for other in start_console(settings, replace(deps, db=other_db)):
            for client in [web, other] * 5:
                async with await client.get("/console/login?token=" + "A" * 43) as r:
                    assert r.status == 403
            for client in (web, other):
                token = issue_link(deps.db, "C001", deps)
                async with await client.get(f"/console/login?token={token}") as r:
                    assert r.status == 429 and "hv_console" not in r.cookies
            with deps.db.begin() as conn:
                kept = set(conn.execute(select(signin_attempts.c.address)).scalars())
            assert kept == {secret_hash("127.0.0.1")}
            clock.advance(minutes=5, seconds=1)
            token = issue_link(deps.db, "C001", deps)
            async with await other.get(f"/console/login?token={token}") as r:
                assert r.status == 303
            with deps.db.begin() as conn:  # the old attempts are gone, the new one counted
                assert len(conn.execute(select(signin_attempts)).all()) == 1
    finally:
        other_db.close()


async def test_no_token_reaches_the_log(
    web: ConsoleClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = issue_link(web.deps.db, "C001", web.deps)
    await web.sign_in("C001")
    async with await web.get(f"/console/login?token={token}"):
        pass
    cookie = web.http.cookie_jar.filter_cookies(web.server.make_url("/console/"))["hv_console"]
    # (the test server's access log aside: `homevisit serve` runs without one)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert token not in ours and cookie.value not in ours


# ---------------------------------------------------------------------------- WeCom
@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with fake_wecom.running() as api:
        yield api


@pytest.fixture
async def wecom_web(
    settings: Settings, deps: Deps, fake: FakeWeCom
) -> AsyncIterator[ConsoleClient]:
    config = WeComSettings(
        CORP_ID, AGENT_ID, Secret(SECRET), Secret("hvToken2026"), Secret("a" * 43), fake.base_url
    )
    with deps.db.begin() as conn:
        c001 = conn.execute(select(staff.c.id).where(staff.c.staff_no == "C001")).scalar_one()
        conn.execute(insert(identities).values(channel="wecom", external_id="jiaxt", staff_id=c001))
    wecom_settings = replace(settings, wecom=config, public_url="http://hv.example.edu")
    async for client in start_console(wecom_settings, deps):
        yield client


async def _authorize(web: ConsoleClient) -> str:
    async with await web.get("/console/signin/wecom") as r:
        assert r.status == 302
        location = urlsplit(r.headers["Location"])
        assert r.cookies["hv_oauth_state"]["httponly"]
    assert (location.netloc, location.path) == ("open.weixin.qq.com", "/connect/oauth2/authorize")
    assert location.fragment == "wechat_redirect"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["appid"] == CORP_ID and query["scope"] == "snsapi_base"
    assert query["agentid"] == str(AGENT_ID) and query["response_type"] == "code"
    assert query["redirect_uri"] == "http://hv.example.edu/console/signin/wecom/callback"
    return query["state"]


async def test_wecom_sign_in_exchanges_the_code_for_the_userid(
    wecom_web: ConsoleClient, fake: FakeWeCom
) -> None:
    state = await _authorize(wecom_web)
    fake.oauth_codes["code-1"] = "jiaxt"
    path = f"/console/signin/wecom/callback?code=code-1&state={state}"
    async with await wecom_web.get(path) as r:
        assert r.status == 303 and r.headers["Location"] == "/console/"
    assert fake.getuserinfo_calls == 1
    page = await wecom_web.text("/console/")
    assert "甲协调" in page


async def test_a_wrong_oauth_state_gets_no_session(
    wecom_web: ConsoleClient, fake: FakeWeCom
) -> None:
    state = await _authorize(wecom_web)
    fake.oauth_codes["code-1"] = "jiaxt"
    async with await wecom_web.get(
        f"/console/signin/wecom/callback?code=code-1&state=x{state}"
    ) as r:
        assert r.status == 403 and "hv_console" not in r.cookies
    wecom_web.forget_cookies()  # another browser: the right state, but not bound to it
    async with await wecom_web.get(
        f"/console/signin/wecom/callback?code=code-1&state={state}"
    ) as r:
        assert r.status == 403
    assert fake.getuserinfo_calls == 0
    assert not await _signed_in(wecom_web)


async def test_a_code_wecom_rejects_gets_no_session(
    wecom_web: ConsoleClient, fake: FakeWeCom
) -> None:
    state = await _authorize(wecom_web)
    async with await wecom_web.get(f"/console/signin/wecom/callback?code=nope&state={state}") as r:
        assert r.status == 403 and "hv_console" not in r.cookies
    assert fake.getuserinfo_calls == 1 and not await _signed_in(wecom_web)


async def test_a_wecom_teacher_is_told_the_console_is_for_coordinators(
    wecom_web: ConsoleClient, fake: FakeWeCom
) -> None:
    state = await _authorize(wecom_web)
    fake.oauth_codes["code-2"] = "zhanglaoshi"  # T001
    async with await wecom_web.get(
        f"/console/signin/wecom/callback?code=code-2&state={state}"
    ) as r:
        assert r.status == 403 and "协调员" in await r.text()
    assert not await _signed_in(wecom_web)


async def test_wecom_sign_in_is_off_without_wecom(web: ConsoleClient) -> None:
    async with await web.get("/console/signin/wecom") as r:
        assert r.status == 404


# ---------------------------------------------------------------------------- the chat word
async def test_houtai_gives_a_coordinator_a_working_link(
    bot: ChatDriver, web: ConsoleClient
) -> None:
    reply = await bot.say("后台", user="C001")
    [url] = re.findall(r"http://127\.0\.0\.1:8080(/console/login\?token=[\w-]+)", reply)
    assert "15分钟" in reply
    async with await web.get(url) as r:
        assert r.status == 303
    assert await _signed_in(web)
    assert "console/login" in await bot.say("console", user="B001")


async def test_houtai_tells_a_teacher_it_is_for_coordinators(bot: ChatDriver) -> None:
    reply = await bot.say("后台", user="T001")
    assert texts.CONSOLE_NOT_FOR_TEACHERS in reply and "token=" not in reply
