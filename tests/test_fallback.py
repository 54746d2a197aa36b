"""Fallback across channels: a reminder that one platform will not deliver arrives on the next,
once, and never on two. The real app with WeCom, DingTalk (HTTP mode) and the WeChat Official
Account against their local fakes, on SQLite and PostgreSQL. Demo teacher T001 is on WeCom
(zhanglaoshi) and DingTalk (dt_zhang) in the roster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import insert, select

from bot.app import JOBS, create_app
from bot.core.types import InboundMessage
from bot.deps import Deps
from bot.web import DELIVERY, DISPATCHER
from config.settings import Secret, Settings, WeComSettings, load_settings
from storage.schema import identities, staff
from storage.schema import outbox as outbox_table
from tests import fake_wecom
from tests.conftest import FakeClock
from tests.fake_dingtalk import FakeDingTalk
from tests.fake_wechat import FakeWeChat
from tests.fake_wecom import AGENT_ID, CORP_ID, SECRET, FakeWeCom
from tests.test_dingtalk import APP_KEY, APP_SECRET, ROBOT_CODE, with_dingtalk
from tests.test_wechat import OPENID, wechat_config
from tests.test_wechat import fake as wechat_fake  # noqa: F401 (the fixture)

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@pytest.fixture
async def wecom() -> AsyncIterator[FakeWeCom]:
    async with fake_wecom.running() as api:
        yield api


@pytest.fixture
async def dingtalk(clock: FakeClock) -> AsyncIterator[FakeDingTalk]:
    fake = FakeDingTalk(
        app_key=APP_KEY,
        app_secret=APP_SECRET,
        robot_code=ROBOT_CODE,
        now=lambda: clock.now().timestamp(),
    )
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def both(settings: Settings, wecom: FakeWeCom, dingtalk: FakeDingTalk) -> Settings:
    config = WeComSettings(
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        secret=Secret(SECRET),
        token=Secret("hvToken2026"),
        aes_key=Secret(AES_KEY),
        api_base=wecom.base_url,
    )
    return with_dingtalk(replace(settings, wecom=config), dingtalk, "http")


@pytest.fixture
async def app(both: Settings, deps: Deps) -> AsyncIterator[web.Application]:
    application = create_app(both, deps, serving=False)
    async with TestServer(application, host="127.0.0.1"):
        yield application


def coordinators_on_dingtalk(deps: Deps) -> None:
    """The demo's coordinators have no chat identity; give each one on DingTalk (the digest's)."""
    with deps.db.begin() as conn:
        ids = conn.execute(select(staff.c.id).where(staff.c.role != "teacher")).scalars().all()
        for sid in ids:
            conn.execute(
                insert(identities).values(
                    channel="dingtalk", external_id=f"dt_c{sid}", staff_id=sid
                )
            )


def rows(deps: Deps) -> list[Any]:
    with deps.db.begin() as conn:
        return list(conn.execute(select(outbox_table)).all())


async def remind(app: web.Application, clock: FakeClock) -> None:
    report = await app[JOBS].run("remind", clock.now())
    assert report.queued >= 1
    await app[DELIVERY].run_once()


async def test_wecom_rejects_with_81013_and_the_reminder_arrives_by_dingtalk_once(
    app: web.Application,
    wecom: FakeWeCom,
    dingtalk: FakeDingTalk,
    deps: Deps,
    clock: FakeClock,
) -> None:
    wecom.members = set()  # T001 is outside the WeCom app's visible range: 81013
    await remind(app, clock)
    assert wecom.sent == [] and wecom.send_calls == 1
    [reminder] = dingtalk.texts(dingtalk.batch_sends)
    assert "周小禾" in reminder
    [row] = [r for r in rows(deps) if r.kind == "reminder"]
    assert (row.status, row.channel, row.fallback_from) == ("sent", "dingtalk", "wecom")
    clock.advance(hours=2)
    await app[DELIVERY].run_once()
    await app[JOBS].run("remind", clock.now())  # the same day: nothing new
    await app[DELIVERY].run_once()
    assert len(dingtalk.batch_sends) == 1 and wecom.sent == []
    # one message reached its teacher by fallback: the reminder (the digest names such teachers)
    assert [(r.kind, r.status) for r in rows(deps) if r.fallback_from] == [("reminder", "sent")]


async def test_a_platform_down_for_an_hour_then_back_sends_no_duplicate(
    app: web.Application,
    wecom: FakeWeCom,
    dingtalk: FakeDingTalk,
    deps: Deps,
    clock: FakeClock,
) -> None:
    wecom.failures = ["http 502"] * 50
    await remind(app, clock)
    assert dingtalk.batch_sends == []  # a first failure: retried on WeCom, not moved yet
    for _ in range(12):  # WeCom keeps failing; the outbox retries with backoff
        clock.advance(minutes=6)
        await app[DELIVERY].run_once()
    assert len(dingtalk.batch_sends) == 1 and wecom.sent == []
    wecom.failures = []  # WeCom is back
    for _ in range(5):
        clock.advance(minutes=10)
        await app[DELIVERY].run_once()
    assert len(dingtalk.batch_sends) == 1 and wecom.sent == []
    [row] = [r for r in rows(deps) if r.kind == "reminder"]
    assert (row.status, row.channel, row.fallback_from) == ("sent", "dingtalk", "wecom")


async def test_proactive_messages_go_to_the_channel_used_last(
    app: web.Application, wecom: FakeWeCom, dingtalk: FakeDingTalk, clock: FakeClock
) -> None:
    message = InboundMessage("dingtalk", "dt_zhang", "帮助", message_id="m-1")
    await app[DISPATCHER].handle(message)
    clock.advance(minutes=5)
    await remind(app, clock)
    assert len(dingtalk.batch_sends) == 1 and wecom.sent == []


async def test_a_transient_failure_within_the_hour_stays_on_its_channel(
    app: web.Application, wecom: FakeWeCom, dingtalk: FakeDingTalk, clock: FakeClock
) -> None:
    wecom.failures = [-1, -1]
    await remind(app, clock)
    clock.advance(minutes=1)
    await app[DELIVERY].run_once()
    clock.advance(minutes=2)
    await app[DELIVERY].run_once()
    assert len(wecom.sent) == 1 and dingtalk.batch_sends == []


async def test_wechat_outside_the_window_without_a_template_falls_back_to_wecom(
    settings: Settings,
    deps: Deps,
    wecom: FakeWeCom,
    wechat_fake: FakeWeChat,  # noqa: F811
    clock: FakeClock,
) -> None:
    with deps.db.begin() as conn:
        staff_id = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        conn.execute(
            insert(identities).values(channel="wechat", external_id=OPENID, staff_id=staff_id)
        )
    wecom_config = WeComSettings(
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        secret=Secret(SECRET),
        token=Secret("hvToken2026"),
        aes_key=Secret(AES_KEY),
        api_base=wecom.base_url,
    )
    wechat = wechat_config(wechat_fake, template=False)
    configured = replace(settings, wecom=wecom_config, wechat=wechat)
    application = create_app(configured, deps, serving=False)
    async with TestServer(application, host="127.0.0.1"):
        await application[DISPATCHER].handle(
            InboundMessage("wechat", OPENID, "帮助", message_id="m-1")
        )
        wechat_fake.in_window.clear()  # two days later, say: the window has closed
        clock.advance(minutes=5)
        await remind(application, clock)
    assert (
        wechat_fake.delivered == [] and len(wecom.sent) == 1 and "周小禾" in wecom.sent[0].content
    )


def test_fallback_after_minutes_is_a_setting() -> None:
    assert load_settings({}, env_file=None).fallback_after.total_seconds() == 3600
    loaded = load_settings({"HOMEVISIT_FALLBACK_AFTER_MINUTES": "15"}, env_file=None)
    assert loaded.fallback_after.total_seconds() == 900
    with pytest.raises(Exception, match="HOMEVISIT_FALLBACK_AFTER_MINUTES"):
        load_settings({"HOMEVISIT_FALLBACK_AFTER_MINUTES": "soon"}, env_file=None)


async def test_a_fallback_inside_quiet_hours_waits_for_the_morning(
    app: web.Application,
    wecom: FakeWeCom,
    dingtalk: FakeDingTalk,
    clock: FakeClock,
) -> None:
    clock.advance(hours=11)  # 20:00 in Shanghai; quiet hours start at 21:00
    wecom.failures = ["http 502"] * 50
    await remind(app, clock)
    for _ in range(12):  # WeCom still failing at 21:12: the move is due at 07:00
        clock.advance(minutes=6)
        await app[DELIVERY].run_once()
    assert dingtalk.batch_sends == []
    clock.advance(hours=10)  # 07:12
    await app[DELIVERY].run_once()
    assert len(dingtalk.batch_sends) == 1 and wecom.sent == []


async def test_the_digest_names_a_teacher_reached_only_by_fallback(
    app: web.Application,
    wecom: FakeWeCom,
    dingtalk: FakeDingTalk,
    deps: Deps,
    clock: FakeClock,
) -> None:
    with deps.db.begin() as conn:
        name = conn.execute(select(staff.c.name).where(staff.c.staff_no == "T001")).scalar_one()
    coordinators_on_dingtalk(deps)
    wecom.members = set()  # 81013: the reminder reaches T001 on DingTalk
    await remind(app, clock)
    report = await app[JOBS].run("digest", clock.now())
    assert report.queued >= 1
    digests = [r.body for r in rows(deps) if r.kind == "digest"]
    moved = [
        line
        for body in digests
        for line in body.splitlines()
        if line.startswith("只能经备用渠道联系到的老师：")
    ]
    assert moved and all(f"{name}（企业微信→钉钉）" in line for line in moved)
    assert all(name not in line for b in digests for line in b.splitlines() if "收不到" in line)


async def test_the_digest_names_nobody_when_every_message_went_on_its_first_channel(
    app: web.Application, deps: Deps, clock: FakeClock
) -> None:
    coordinators_on_dingtalk(deps)
    await remind(app, clock)
    await app[JOBS].run("digest", clock.now())
    digests = [r.body for r in rows(deps) if r.kind == "digest"]
    assert digests and not any("只能经备用渠道" in body for body in digests)
