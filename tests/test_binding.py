"""Binding a chat identity with a one-time code: `bind code`, `绑定码 工号`, `绑定 工号 码`.

On the real databases (SQLite and PostgreSQL) through the real dispatcher, on the memory store
for the same script, over the WeChat Official Account channel end to end, and the CLI as a
real process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from bot.app import JOBS, build_dispatcher, conversation_over, create_app
from bot.core.binding import ALPHABET, CODE_LENGTH
from bot.deps import Deps
from bot.web import DELIVERY
from config.calendar import SchoolCalendar
from config.forms import load_form
from config.settings import Settings, load_settings
from handlers import texts
from storage.db import Database
from storage.demo import demo_roster, load_demo
from storage.memory import MemoryStore, MemoryTurns
from storage.schema import audit_log, bind_failures, binding_codes, identities, metadata
from tests.conftest import ChatDriver, FakeClock, make_db_url, make_settings
from tests.fake_wechat import FakeWeChat
from tests.test_cli import env, homevisit  # noqa: F401 (the fixture)
from tests.test_conversation import TABLET_VISIT
from tests.test_wechat import STRANGER, Peer, message_xml, wechat_config
from tests.test_wechat import fake as fake  # the fixture

CODE = re.compile(rf"[{ALPHABET}]{{{CODE_LENGTH}}}")


async def code_for(bot: ChatDriver, staff_no: str, issuer: str = "C001") -> str:
    reply = await bot.say(f"绑定码 {staff_no}", user=issuer)
    found = CODE.search(reply.split("：", 1)[1])
    assert found is not None, reply
    return found.group(0)


def wechat(bot: ChatDriver) -> ChatDriver:
    return ChatDriver(bot.dispatcher, "wechat")


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def any_bot(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[ChatDriver]:
    """The conversation on each database and on the memory store, with the demo roster."""
    if request.param == "memory":
        store = MemoryStore()
        store.load_roster(demo_roster())
        settings = load_settings({}, env_file=None)
        form = load_form(settings.form_path)
        yield ChatDriver(
            conversation_over(MemoryTurns(store), settings, form, clock, SchoolCalendar())
        )
        return
    for url in make_db_url(request.param, tmp_path):
        db = Database(url)
        metadata.create_all(db.engine)
        with db.begin() as conn:
            load_demo(conn, now=clock.now())
        settings = make_settings(url)
        deps = Deps(db=db, form=load_form(settings.form_path), clock=clock)
        yield ChatDriver(build_dispatcher(settings, deps))
        db.close()


async def test_a_teacher_binds_wechat_with_the_coordinators_code(any_bot: ChatDriver) -> None:
    code = await code_for(any_bot, "T002")
    wx = wechat(any_bot)
    assert await wx.say("家访", user="oLi") == texts.NOT_REGISTERED.format(user_id="oLi")
    done = await wx.say(f"绑定 T002 {code.lower()}", user="oLi")
    assert done.startswith(texts.BIND_DONE.format(name="李示例"))
    assert "王小雨" in await wx.say("家访", user="oLi")
    # single use: the same code does nothing for anyone else, and the same sender is told
    assert await wx.say(f"绑定 T002 {code}", user="oOther") == texts.BIND_WRONG
    assert await wx.say(f"绑定 T002 {code}", user="oLi") == texts.BIND_ALREADY.format(name="李示例")


async def test_codes_expire_after_72_hours_and_a_new_code_voids_the_old(
    any_bot: ChatDriver, clock: FakeClock
) -> None:
    old = await code_for(any_bot, "T002")
    new = await code_for(any_bot, "T002")
    wx = wechat(any_bot)
    assert await wx.say(f"绑定 T002 {old}", user="oLi") == texts.BIND_WRONG
    clock.advance(hours=72, seconds=1)
    assert await wx.say(f"绑定 T002 {new}", user="oLi") == texts.BIND_WRONG


async def test_who_may_issue_codes(any_bot: ChatDriver) -> None:
    assert await any_bot.say("绑定码 T002", user="T001") == texts.BIND_CODE_NOT_FOR_TEACHERS
    assert await any_bot.say("绑定码", user="C001") == texts.BIND_CODE_USAGE
    unknown = await any_bot.say("绑定码 NOPE", user="C001")
    assert unknown == texts.BIND_CODE_UNKNOWN.format(staff_no="NOPE")
    assert CODE.search(await any_bot.say("绑定码 T003", user="B001"))  # the bureau: any school


async def test_wrong_codes_are_rate_limited_per_sender_and_per_staff_number(
    any_bot: ChatDriver, clock: FakeClock
) -> None:
    code = await code_for(any_bot, "T002")
    wx = wechat(any_bot)
    for _ in range(5):
        assert await wx.say("绑定 T002 AAAAAAAA", user="oGuess") == texts.BIND_WRONG
    locked = texts.BIND_LOCKED.format(minutes=60)
    assert await wx.say(f"绑定 T002 {code}", user="oGuess") == locked  # even the right code
    for i in range(5):  # other senders guessing the same staff number: 10 in all
        await wx.say("绑定 T002 BBBBBBBB", user=f"oGuess{i}")
    assert await wx.say(f"绑定 T002 {code}", user="oLi") == locked
    clock.advance(hours=1, seconds=1)
    assert (await wx.say(f"绑定 T002 {code}", user="oLi")).startswith("绑定成功")


async def test_an_existing_identity_is_replaced_only_with_a_code_and_never_taken(
    any_bot: ChatDriver,
) -> None:
    wecom = ChatDriver(any_bot.dispatcher, "wecom")
    assert "周小禾" in await wecom.say("家访", user="zhanglaoshi")  # T001's roster identity
    # someone else's identity cannot be bound, even with a valid code
    code = await code_for(any_bot, "T002")
    assert await wecom.say(f"绑定 T002 {code}", user="zhanglaoshi") == texts.BIND_TAKEN
    # T001's new WeCom id replaces the old one only with T001's code
    assert await wecom.say("绑定 T001 CCCCCCCC", user="zhang_new") == texts.BIND_WRONG
    code = await code_for(any_bot, "T001")
    assert (await wecom.say(f"绑定 T001 {code}", user="zhang_new")).startswith("绑定成功")
    assert "周小禾" in await wecom.say("家访", user="zhang_new")
    # (the old id may still be served for a minute from the engine's staff cache, as after a
    # roster import; the store no longer knows it)
    turns = any_bot.dispatcher.turns
    assert await turns.run(lambda store: store.find_staff("wecom", "zhanglaoshi")) is None


async def test_bad_binding_input_gets_the_format(any_bot: ChatDriver) -> None:
    wx = wechat(any_bot)
    assert await wx.say("绑定", user="oLi") == texts.BIND_USAGE
    assert await wx.say("绑定 T002", user="oLi") == texts.BIND_USAGE
    assert await any_bot.say("绑定 T002 ABCDEFGH", user="T002") == texts.BIND_NOT_NEEDED


async def test_bindings_are_audited_and_only_hashes_kept(bot: ChatDriver, deps: Deps) -> None:
    code = await code_for(bot, "T002")
    await wechat(bot).say(f"绑定 T002 {code}", user="oLi")
    await wechat(bot).say("绑定 T003 AAAAAAAA", user="oLi")
    with deps.db.begin() as conn:
        audit = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.detail)
        ).all()
        [stored] = conn.execute(select(binding_codes)).all()
        failures = conn.execute(select(bind_failures.c.subject)).scalars().all()
        bound = conn.execute(select(identities).where(identities.c.channel == "wechat")).all()
    assert [(a.actor, a.action) for a in audit][-2:] == [
        ("C001", "binding_code"),
        ("T002", "binding"),
    ]
    assert json.loads(audit[-1].detail) == {
        "staff_no": "T002",
        "channel": "wechat",
        "replaced": False,
    }
    assert "oLi" not in "".join(a.detail for a in audit)
    assert stored.code_hash != code and code not in stored.code_hash and stored.used_at is not None
    assert sorted(f.split(":")[0] for f in failures) == ["sender", "staff"]
    assert not any("oLi" in f for f in failures) and len(bound) == 1


async def test_a_wechat_follower_binds_and_checks_in_over_the_channel(
    settings: Settings,
    deps: Deps,
    fake: FakeWeChat,
    clock: FakeClock,
    bot: ChatDriver,
) -> None:
    """The issue's "done when": a teacher with only WeChat follows the account, binds with the
    coordinator's code, completes a check-in and gets the next reminder (by template, as the
    48-hour window has closed by then)."""
    code = await code_for(bot, "T002")
    app = create_app(replace(settings, wechat=wechat_config(fake)), deps, serving=False)
    async with TestServer(app, host="127.0.0.1") as server, ClientSession() as http:
        wx = Peer(http, server, clock)
        _, body = await wx.post(
            message_xml(user=STRANGER, msg_type="event", event="subscribe"), user=STRANGER
        )
        assert "绑定 工号 绑定码" in wx.open(body, STRANGER)
        assert (await wx.say(f"绑定 T002 {code}", user=STRANGER)).startswith("绑定成功")
        assert "王小雨" in await wx.say("家访", user=STRANGER)
        assert "开始登记 王小雨（四年级2班）" in await wx.say("1", user=STRANGER)
        for answer in TABLET_VISIT:
            await wx.say(answer, user=STRANGER)
        assert "已提交 王小雨（四年级2班）" in await wx.say("提交", user=STRANGER)
        clock.advance(days=3)
        fake.in_window.discard(STRANGER)
        assert (await app[JOBS].run("remind", clock.now())).queued >= 1
        await app[DELIVERY].run_once()
    [notice] = [d for d in fake.delivered if d.touser == STRANGER]
    assert notice.kind == "template" and notice.content


def test_bind_code_prints_the_code_last(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    assert homevisit(env, tmp_path, "demo").returncode == 0
    done = homevisit(env, tmp_path, "bind", "code", "--user", "T002")
    assert done.returncode == 0, done.stderr
    assert CODE.fullmatch(done.stdout.strip().splitlines()[-1])
    stranger = homevisit(env, tmp_path, "bind", "code", "--user", "NOBODY")
    assert stranger.returncode == 1 and "NOBODY" in stranger.stderr
    assert len(stranger.stderr.strip().splitlines()) == 1 and "Traceback" not in stranger.stderr


async def test_a_roster_import_keeps_an_identity_bound_by_code(
    bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    code = await code_for(bot, "T002")
    dingtalk = ChatDriver(bot.dispatcher, "dingtalk")
    assert (await dingtalk.say(f"绑定 T002 {code}", user="dt_li")).startswith("绑定成功")
    with deps.db.begin() as conn:
        load_demo(conn, now=clock.now())  # the roster again: T002's 钉钉ID cell is empty
    turns = bot.dispatcher.turns
    found = await turns.run(lambda store: store.find_staff("dingtalk", "dt_li"))
    assert found is not None and found.staff_no == "T002"
