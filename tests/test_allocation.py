"""Allocation and delivery of aid items (#15) over both databases: open needs most urgent first,
stock taken by one conditional UPDATE (never below zero, even with two coordinators at once), the
teacher told once in the same transaction, deliveries, and need against supply; the console's
allocate and deliver forms with CSRF and scope."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, timedelta

import pytest
from sqlalchemy import func, insert, select

from bot.app import build_dispatcher
from bot.core.aid import POOL, StockError
from bot.core.console_ports import Principal
from bot.core.types import StaffRole, StudentRef
from bot.deps import Deps
from config.aid import DEFAULT_AID, load_aid_items
from config.settings import Settings
from handlers import states
from handlers.states import Check, Checking, OpenDraft
from storage.aid import SqlAid
from storage.db import Database
from storage.schema import (
    aid_allocations,
    aid_stock,
    assignments,
    audit_log,
    followups,
    outbox,
    schools,
    staff,
    student_categories,
    students,
    visits,
)
from tests.conftest import ChatDriver
from tests.console_kit import ConsoleClient, add_school, start_console
from tests.test_conversation import TABLET_VISIT
from tests.test_ladder import FINE_VISIT, WECOM
from tests.test_schedule import World, local, world  # noqa: F401  (the fixture)

SCHOOL = "示例区实验小学"
TABLET = "平板电脑"


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


def school_id(deps: Deps, name: str = SCHOOL) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(schools.c.id).where(schools.c.name == name)).scalar_one())


def aid(deps: Deps, db: Database | None = None) -> SqlAid:
    items = load_aid_items(DEFAULT_AID, deps.form.followup_kinds)
    return SqlAid(db or deps.db, items, ("wecom", "dingtalk"))


def coordinator(deps: Deps, no: str = "C001", school: str = SCHOOL) -> Principal:
    return Principal(
        1, no, "协调", StaffRole.COORDINATOR, school_id(deps, school), school, "c", "s"
    )


def bureau() -> Principal:
    return Principal(2, "B001", "教育局", StaffRole.BUREAU, None, None, "c", "s")


def add_needs(
    deps: Deps,
    count: int,
    *,
    kind: str = "device",
    school: str = SCHOOL,
    owner: str = "T001",
    prefix: str = "NEED",
) -> list[int]:
    """`count` students of `school`, each with one open follow-up of `kind` found on a visit by
    `owner`: student i has been waiting i % 10 days, and every fourth is 低保 (every eighth also
    孤儿). Returns the follow-up ids in order."""
    now = deps.clock.now()
    found = []
    with deps.db.begin() as conn:
        sid = conn.execute(select(schools.c.id).where(schools.c.name == school)).scalar_one()
        tid = conn.execute(select(staff.c.id).where(staff.c.staff_no == owner)).scalar_one()
        for i in range(count):
            stu = conn.execute(
                insert(students)
                .values(
                    student_no=f"{prefix}{i:03}",
                    name=f"学生{prefix}{i}",
                    school_id=sid,
                    class_name="六年级1班",
                    active=True,
                )
                .returning(students.c.id)
            ).scalar_one()
            conn.execute(
                insert(assignments).values(student_id=stu, role="head_teacher", staff_id=tid)
            )
            cats = ["低保"] if i % 4 == 0 else []
            cats += ["孤儿"] if i % 8 == 0 else []
            for cat in cats:
                conn.execute(insert(student_categories).values(student_id=stu, category=cat))
            at = now - timedelta(days=i % 10)
            visit = conn.execute(
                insert(visits)
                .values(
                    student_id=stu,
                    staff_id=tid,
                    form_id="home_visit",
                    form_version="1",
                    status="submitted",
                    method="phone",
                    reached=True,
                    answers={},
                    started_at=at,
                    updated_at=at,
                    submitted_at=at,
                )
                .returning(visits.c.id)
            ).scalar_one()
            found.append(
                conn.execute(
                    insert(followups)
                    .values(
                        visit_id=visit,
                        student_id=stu,
                        owner_staff_id=tid,
                        kind=kind,
                        detail="缺平板",
                        due_date=date(2026, 12, 31),
                        status="open",
                        created_at=at,
                    )
                    .returning(followups.c.id)
                ).scalar_one()
            )
    return found


def stock_of(deps: Deps, school: int, item: str = TABLET) -> int | None:
    with deps.db.begin() as conn:
        return conn.execute(
            select(aid_stock.c.quantity).where(
                aid_stock.c.school_id == school, aid_stock.c.item == item
            )
        ).scalar()


def count(deps: Deps, table: object, *where: object) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore[arg-type]


def messages(deps: Deps) -> list[tuple[str, str, str, str]]:
    with deps.db.begin() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    outbox.c.idempotency_key, outbox.c.channel, outbox.c.recipient, outbox.c.body
                )
                .where(outbox.c.kind == "aid")
                .order_by(outbox.c.id)
            )
        ]


async def test_seventeen_tablets_against_twenty_three_needs(deps: Deps) -> None:
    """The district's story: 23 tablet needs, 17 tablets arrive, allocated most urgent first,
    the teacher told of each, 15 deliveries confirmed (one twice: told), shortfall 6."""
    store, me, now = aid(deps), coordinator(deps), deps.clock.now()
    mine = me.school_id or 0
    add_needs(deps, 23)
    needs = await store.open_needs(me, TABLET, now)
    assert len(needs) == 23
    # most urgent first: two aid categories, then one, then none; within each, waited longest
    ranks = [(len(n.aid_categories), n.days_open) for n in needs]
    assert ranks == sorted(ranks, key=lambda r: (-r[0], -r[1]))
    assert needs[0].aid_categories == ("孤儿", "低保")
    assert {n.kind for n in needs} == {"device"} and needs[0].owner_name == "张示例"

    assert await store.change_stock(me, mine, TABLET, 17, "arrival", "第一批", now) == 17
    with pytest.raises(StockError, match="库存不足：平板电脑 现有 17，不能减少 18"):
        await store.allocate(
            me, mine, TABLET, [n.followup_id for n in needs[:18]], "courier", "SF1", now
        )
    assert stock_of(deps, mine) == 17 and count(deps, aid_allocations) == 0 and not messages(deps)

    chosen = [n.followup_id for n in needs[:17]]
    ids = await store.allocate(me, mine, TABLET, chosen, "courier", "SF123456", now)
    assert len(ids) == 17 and stock_of(deps, mine) == 0
    sent = messages(deps)
    assert len(sent) == 17 and sent[0][:3] == (f"aid-allocated:{ids[0]}", "wecom", "zhanglaoshi")
    assert needs[0].student_name in sent[0][3] and "快递（单号 SF123456）" in sent[0][3]
    left = await store.open_needs(me, TABLET, now)
    assert [n.followup_id for n in left] == [n.followup_id for n in needs[17:]]
    # a retry of the same allocation (a reply lost in a crash) counts the stock once
    await store.change_stock(me, mine, TABLET, 1, "arrival", "", now)
    with pytest.raises(StockError, match="第1项需求已经发放过物品"):
        await store.allocate(me, mine, TABLET, chosen[:1], "courier", "SF123456", now)
    assert stock_of(deps, mine) == 1 and len(messages(deps)) == 17
    await store.change_stock(me, mine, TABLET, -1, "correction", "", now)

    for allocation in ids[:15]:
        done = await store.deliver(me, allocation, now)
        assert done.status == "delivered" and done.delivered_at == now
    with pytest.raises(StockError, match="已经登记送达"):
        await store.deliver(me, ids[0], now)

    view = await store.stock(me)
    (tablets,) = [s for s in view.supply if s.item == TABLET]
    assert (tablets.needs, tablets.allocated, tablets.delivered, tablets.in_use) == (23, 17, 15, 0)
    assert tablets.line() == "平板电脑：需求 23 · 已发放 17 · 已送达 15 · 在用 0 · 缺口 6"
    district = await store.stock(bureau())
    assert (SCHOOL, tablets) in district.by_school
    assert [s for s in district.supply if s.item == TABLET] == [tablets]
    listed = await store.allocations(me)
    assert [a.status for a in listed[:2]] == ["allocated", "allocated"]  # undelivered first
    assert sum(a.status == "delivered" for a in listed) == 15
    assert count(deps, audit_log, audit_log.c.action == "aid_allocate") == 1
    assert count(deps, audit_log, audit_log.c.action == "aid_deliver") == 15


async def test_bad_allocations_change_nothing(deps: Deps) -> None:
    store, me, now = aid(deps), coordinator(deps), deps.clock.now()
    mine = me.school_id or 0
    other = add_school(deps.db)["school"]
    (need,) = add_needs(deps, 1)
    (theirs,) = add_needs(deps, 1, school="第二实验小学", owner="T101", prefix="OTH")
    (data,) = add_needs(deps, 1, kind="data_plan", prefix="DATA")
    await store.change_stock(me, mine, TABLET, 3, "arrival", "", now)
    await store.change_stock(bureau(), POOL, TABLET, 3, "arrival", "", now)
    for args, text in (
        ((mine, "电视机", [need], "handed", ""), "没有这种物品：电视机"),
        ((mine, "牛奶", [need], "handed", ""), "牛奶不对应跟进需求"),
        ((mine, TABLET, [need], "drone", ""), "请选择发放方式"),
        ((mine, TABLET, [need], "courier", " "), "快递请填写快递单号"),
        ((mine, TABLET, [], "handed", ""), "请至少选择一名学生"),
        ((mine, TABLET, [need, theirs], "handed", ""), "第2项需求不存在或不在你的范围内"),
        ((mine, TABLET, [999999], "handed", ""), "第1项需求不存在"),
        ((mine, TABLET, [data], "handed", ""), "第1项需求不是平板电脑能解决的"),
        ((other, TABLET, [need], "handed", ""), "只能登记本校的库存"),
        ((POOL, TABLET, [need], "handed", ""), "只能登记本校的库存"),
        ((mine, TABLET, [need], "courier", "x" * 101), "快递单号最多 100 个字"),
    ):
        with pytest.raises(StockError, match=text):
            await store.allocate(me, *args, now)
    assert count(deps, aid_allocations) == 0 and stock_of(deps, mine) == 3 and not messages(deps)

    # the bureau: a school's stock only for that school's needs; the pool for any school
    with pytest.raises(StockError, match="第1项需求是其他学校的"):
        await store.allocate(bureau(), mine, TABLET, [theirs], "handed", "", now)
    await store.allocate(bureau(), POOL, TABLET, [theirs], "carrier", "", now)
    assert stock_of(deps, POOL) == 2 and stock_of(deps, other) is None
    # T101 has no chat account: allocated all the same, nobody to tell
    assert not messages(deps)
    # the other school's coordinator sees their allocation, ours does not
    assert [
        a.student_name for a in await store.allocations(coordinator(deps, "C101", "第二实验小学"))
    ] == ["学生OTH0"]
    assert await store.allocations(me) == []
    (theirs_allocation,) = await store.allocations(bureau())
    with pytest.raises(StockError, match="没有这条发放记录"):
        await store.deliver(me, theirs_allocation.id, now)

    # a closed need is refused
    with deps.db.begin() as conn:
        conn.execute(followups.update().where(followups.c.id == need).values(status="done"))
    with pytest.raises(StockError, match="第1项需求已经办结"):
        await store.allocate(me, mine, TABLET, [need], "handed", "", now)
    assert stock_of(deps, mine) == 3


async def test_two_coordinators_take_the_last_tablet_at_once(deps: Deps, db_url: str) -> None:
    """Each on their own connection pool: one gets the last tablet, the other is told; and of two
    allocating to the same need at once with stock for both, one allocation stands."""
    me, now = coordinator(deps), deps.clock.now()
    mine = me.school_id or 0
    first, second = add_needs(deps, 2)
    await aid(deps).change_stock(me, mine, TABLET, 1, "arrival", "", now)
    pools = [Database(db_url) for _ in range(2)]
    try:
        results = await asyncio.gather(
            *(
                aid(deps, db).allocate(me, mine, TABLET, [need], "handed", "", now)
                for db, need in zip(pools, (first, second), strict=True)
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(r, list) for r in results) == 1
        (refused,) = [r for r in results if isinstance(r, BaseException)]
        assert isinstance(refused, StockError) and "库存不足" in str(refused)
        assert stock_of(deps, mine) == 0 and count(deps, aid_allocations) == 1

        await aid(deps).change_stock(me, mine, TABLET, 2, "arrival", "", now)
        (left,) = [n.followup_id for n in await aid(deps).open_needs(me, TABLET, now)]
        results = await asyncio.gather(
            *(aid(deps, db).allocate(me, mine, TABLET, [left], "handed", "", now) for db in pools),
            return_exceptions=True,
        )
    finally:
        for db in pools:
            db.close()
    assert sum(isinstance(r, list) for r in results) == 1
    (refused,) = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(refused, StockError) and "已经发放过物品" in str(refused)
    assert stock_of(deps, mine) == 1 and count(deps, aid_allocations) == 2
    assert len(messages(deps)) == 2  # one message an allocation


# ---------------------------------------------------------------------------- the console
async def post(web: ConsoleClient, path: str, data: dict[str, object]) -> tuple[int, str]:
    async with await web.post(path, data=data) as r:
        if r.status == 303:
            return 303, await web.text(r.headers["Location"])
        return r.status, await r.text()


async def test_console_allocates_and_records_delivery(web: ConsoleClient, deps: Deps) -> None:
    mine, now = school_id(deps), deps.clock.now()
    needs = add_needs(deps, 3)
    await aid(deps).change_stock(coordinator(deps), mine, TABLET, 2, "arrival", "", now)
    await web.sign_in("C001")
    csrf = await web.csrf()
    page = await web.text("/console/aid?item=" + TABLET)
    assert page.index(f'value="{needs[0]}"') < page.index(f'value="{needs[2]}"')  # 低保孤儿 first
    assert "平板电脑能解决、还没有发放的需求 3 项" in page

    form = {"csrf_token": csrf, "item": TABLET, "school": str(mine), "method": "handed"}
    status, _ = await post(web, "/console/aid/allocate", {**form, "csrf_token": "x"})
    assert status == 403
    status, page = await post(web, "/console/aid/allocate", {**form, "need": ["x"]})
    assert status == 400 and "请从列表中选择学生" in page
    status, page = await post(
        web, "/console/aid/allocate", {**form, "need": [str(n) for n in needs]}
    )
    assert status == 400 and "库存不足：平板电脑 现有 2，不能减少 3" in page
    assert count(deps, aid_allocations) == 0
    status, page = await post(
        web, "/console/aid/allocate", {**form, "need": [str(needs[0]), str(needs[1])]}
    )
    assert status == 303 and "已发放，已通知负责老师" in page
    assert "平板电脑能解决、还没有发放的需求 1 项" in page
    assert re.search(
        r"<th>平板电脑</th><td>3</td><td>0</td><td>1</td><td>2</td><td>0</td><td>0</td>", page
    )
    assert "<td>发放</td><td>-2</td><td>0</td><td>C001</td><td>发放给 2 名学生</td>" in page
    (first,) = re.findall(r'name="allocation" value="(\d+)"', page)[:1]
    status, page = await post(
        web, "/console/aid/deliver", {"csrf_token": csrf, "allocation": first}
    )
    assert status == 303 and "已登记送达" in page
    assert re.search(
        r"<th>平板电脑</th><td>3</td><td>0</td><td>1</td><td>2</td><td>1</td><td>0</td>", page
    )
    status, page = await post(
        web, "/console/aid/deliver", {"csrf_token": csrf, "allocation": first}
    )
    assert status == 400 and "已经登记送达" in page
    status, page = await post(
        web, "/console/aid/deliver", {"csrf_token": csrf, "allocation": "abc"}
    )
    assert status == 400 and "没有这条发放记录" in page

    # another school's coordinator cannot record its delivery
    add_school(deps.db)
    web.forget_cookies()
    await web.sign_in("C101")
    other_csrf = await web.csrf()
    assert "学生NEED" not in await web.text("/console/aid")
    (second,) = [a.id for a in await aid(deps).allocations(bureau()) if str(a.id) != first]
    status, page = await post(
        web, "/console/aid/deliver", {"csrf_token": other_csrf, "allocation": str(second)}
    )
    assert status == 400 and "没有这条发放记录" in page


# ---------------------------------------------------------------------------- the digests
async def test_digests_show_need_against_supply(world: World) -> None:  # noqa: F811
    deps = world.deps
    mon = date(2026, 3, 2)
    world.clock.current = local(mon, 10)
    store, me, now = aid(deps), coordinator(deps), world.clock.now()
    mine = me.school_id or 0
    add_needs(deps, 23)
    await store.change_stock(me, mine, TABLET, 17, "arrival", "", now)
    await store.change_stock(bureau(), POOL, "4G流量卡", 40, "arrival", "", now)
    chosen = [n.followup_id for n in (await store.open_needs(me, TABLET, now))[:17]]
    ids = await store.allocate(me, mine, TABLET, chosen, "courier", "SF1", now)
    for allocation in ids[:15]:
        await store.deliver(me, allocation, now)

    await world.at(local(mon, 17), "digest")
    [school] = world.wecom.to("coord")
    tablets = "平板电脑：需求 23 · 已发放 17 · 已送达 15 · 在用 0 · 缺口 6"
    assert f"物资需求与发放：\n· {tablets}" in school
    assert "4G流量卡" not in school  # the pool's stock is the bureau's
    [district] = world.dingtalk.to("bureau")
    assert "全区物资需求与发放（库存含教育局统筹）：" in district
    assert f"· {tablets}" in district
    assert "· 4G流量卡：需求 0 · 已发放 0 · 已送达 0 · 在用 0 · 库存 40 · 缺口 0" in district
    [group] = [t for _, t in world.group.got]
    assert "缺口" not in group and "平板" not in group  # no kind of need in the group chat


# ---------------------------------------------------------------------------- the next visit
async def test_the_next_visit_asks_whether_it_arrived_and_is_in_use(
    world: World,  # noqa: F811
    settings: Settings,
) -> None:
    """The whole story in chat: 周小禾's tablet need found on a visit and 22 more; 17 tablets,
    allocated by urgency, 15 delivered; the next visits find one in use (the need closes) and
    周小禾's unusable (the need stays open, the coordinator is told); the digest: 缺口 6."""
    deps = world.deps
    chat = ChatDriver(build_dispatcher(replace(settings, wecom=WECOM), deps), "wecom")

    async def say(text: str) -> str:
        return await chat.say(text, user="zhanglaoshi")

    world.clock.current = local(date(2026, 3, 2), 10)
    await say("家访")
    await say("周小禾")
    for answer in TABLET_VISIT:
        await say(answer)
    assert "已提交" in await say("提交")
    add_needs(deps, 22)
    store, me, now = aid(deps), coordinator(deps), world.clock.now()
    mine = me.school_id or 0
    await store.change_stock(me, mine, TABLET, 17, "arrival", "", now)
    needs = await store.open_needs(me, TABLET, now)
    assert len(needs) == 23
    zhou = next(n for n in needs[:17] if n.student_name == "周小禾")  # 残疾: among the first
    ids = await store.allocate(
        me, mine, TABLET, [n.followup_id for n in needs[:17]], "handed", "", now
    )
    by_need = dict(zip([n.followup_id for n in needs[:17]], ids, strict=True))
    others = [n for n in needs[:17] if n is not zhou]
    delivered = [by_need[zhou.followup_id], *(by_need[n.followup_id] for n in others[:14])]
    for allocation in delivered:
        await store.deliver(me, allocation, now)
    told = [body for _, _, recipient, body in messages(deps) if recipient == "zhanglaoshi"]
    assert len(told) == 17
    mine_told = "【物资】学校为周小禾（三年级1班）安排了平板电脑，当面交付。"
    assert sum(t.startswith(mine_told) for t in told) == 1

    world.clock.current = local(date(2026, 3, 16), 10)
    await say("家访")
    started = await say("周小禾")
    assert started.endswith("学校已发放平板电脑：收到了吗？在用吗？\n1. 在用\n2. 没收到\n3. 用不了")
    assert (await say("4")).startswith("请回复 1（在用）、2（没收到）或 3（用不了）。")
    assert "怎么联系上" in await say("用不了")
    for answer in FINE_VISIT:
        await say(answer)
    assert "已同时告知学校的资助协调员" in await say("提交")

    first = others[0]  # a delivered one, in use
    await say("家访")
    assert "学校已发放平板电脑" in await say(first.student_name)
    await say("1")
    for answer in FINE_VISIT:
        await say(answer)
    await say("提交")

    with deps.db.begin() as conn:
        rows = {
            r.followup_id: (r.status, r.active_followup_id)
            for r in conn.execute(select(aid_allocations))
        }
        need_status = dict(conn.execute(select(followups.c.id, followups.c.status)).all())
        alerts = [
            r.body for r in conn.execute(select(outbox.c.body).where(outbox.c.kind == "alert"))
        ]
    assert rows[zhou.followup_id] == ("unusable", None)  # the need is free for another
    assert rows[first.followup_id] == ("in_use", first.followup_id)
    assert need_status[zhou.followup_id] == "open" and need_status[first.followup_id] == "done"
    assert alerts == [
        "【物资】张示例老师家访 周小禾（三年级1班） 时反馈：学校发放的平板电脑收到了但用不了，"
        "这项需求仍未解决，请跟进。"
    ]
    again = await store.open_needs(me, TABLET, world.clock.now())
    assert zhou.followup_id in {n.followup_id for n in again} and len(again) == 7
    # a third visit does not ask again about the one in use
    await say("家访")
    assert "学校已发放" not in await say(first.student_name)
    await say("取消")

    await world.at(local(date(2026, 3, 16), 17), "digest")
    [school] = [t for t in world.wecom.to("coord") if t.startswith("【家访日报】")]
    assert "· 平板电脑：需求 23 · 已发放 17 · 已送达 15 · 在用 1 · 缺口 6" in school


def test_an_aid_check_survives_the_store_boundary_and_old_sessions_load() -> None:
    draft = OpenDraft(7, StudentRef(3, "周小禾", "三年级1班"), states.freeze({}), 2)
    checks = (Check(5, "device", "平板", None, "", "平板电脑", 12), Check(6, "psych", "谈心"))
    conv = states.Conversation(Checking(draft, checks))
    assert states.load(*states.dump(conv)) == conv
    name, data, listing = states.dump(conv)
    old = [entry[:5] for entry in data["checks"]]  # saved before allocations were asked about
    loaded = states.load(name, {**data, "checks": old}, listing).state
    assert isinstance(loaded, Checking) and loaded.checks[0] == Check(5, "device", "平板")


# ---------------------------------------------------------------------------- in chat
async def test_stock_allocation_and_delivery_in_chat(
    world: World,  # noqa: F811
    settings: Settings,
) -> None:
    deps = world.deps
    world.clock.current = local(date(2026, 3, 2), 10)
    dispatcher = build_dispatcher(replace(settings, wecom=WECOM), deps)
    chat, console = ChatDriver(dispatcher, "wecom"), ChatDriver(dispatcher, "console")
    needs = add_needs(deps, 3)

    async def coord(text: str) -> str:
        return await chat.say(text, user="coord")

    async def teacher(text: str) -> str:
        return await chat.say(text, user="zhanglaoshi")

    assert (await coord("入库 电视机 3")).startswith(
        "没有这种物品：电视机。可以入库的有：平板电脑、"
    )
    assert await coord("入库 平板电脑 0") == "数量应为 1 到 100000 的整数。"
    assert await coord("入库") == "请写物品和数量，例如：入库 平板电脑 17。"
    assert await coord("入库 平板电脑 1") == "已入库 平板电脑 1，本校现有 1。"
    assert (await coord("发放 1")).startswith(
        "请先发送“库存”看待发放的需求，再用序号：\n本校物资库存"
    )

    listed = await coord("库存")
    assert listed.startswith(
        "本校物资库存与待发放的需求（最急的在前）：\n【平板电脑】库存 1，待发放的需求 3 项\n"
    )
    assert (
        "\n1. 学生NEED0（六年级1班） · 平板/电脑：缺平板 · 孤儿、低保 · 已等0天 · 负责：张示例\n"
        in listed
    )
    assert "\n2. 学生NEED2（六年级1班） · 平板/电脑：缺平板 · 无资助类别 · 已等2天" in listed
    assert "【牛奶】库存 0（不对应跟进需求，按资助类别统一发放）" in listed
    assert "【4G流量卡】库存 0，待发放的需求 0 项" in listed
    assert (await coord("1")) == "要发放请回复“发放 1”，送到了请回复“送达 1”。"
    assert (await coord("发放 9")).startswith("当前列表里没有第9项。列表已更新：\n本校物资库存")
    assert await coord("发放 1 快递") == "快递请写上单号，例如：发放 1 快递 SF123456。"
    assert (await coord("发放 1 飞机")).startswith("请写发放方式")
    assert count(deps, aid_allocations) == 0 and stock_of(deps, school_id(deps)) == 1

    done = await coord("发放 1 快递 SF9")
    assert done == (
        "已发放第1项：学生NEED0（六年级1班） · 平板电脑，快递（单号 SF9）。平板电脑还剩 0。"
        "已告知负责老师张示例。"
    )
    ((key, channel, recipient, body),) = messages(deps)
    assert (channel, recipient) == ("wecom", "zhanglaoshi") and key.startswith("aid-allocated:")
    assert body.startswith("【物资】学校为学生NEED0（六年级1班）安排了平板电脑，快递（单号 SF9）。")
    assert await coord("发放 2") == "库存不足：平板电脑现有 0，没有发放。请先“入库 平板电脑 数量”。"
    stale = await coord("发放 1")
    assert stale.startswith("第1项已经发放过、已经办结或已不在你的范围内。列表已更新：")
    assert "学生NEED0" not in stale and "待发放的需求 2 项" in stale
    assert count(deps, aid_allocations) == 1 and len(messages(deps)) == 1

    # teachers deliver from their 待跟进 list; 库存 and 发放 are not theirs
    assert (await teacher("库存")).startswith("“库存”是学校资助协调员和教育局用的指令。")
    assert (await teacher("发放 1")).startswith("“发放”是学校资助协调员")
    assert await teacher("送达 1") == "请先发送“待跟进”（协调员：“库存”）看列表，再用“送达 序号”。"
    todo = await teacher("待跟进")
    assert "学生NEED0" in todo and "学生NEED1" in todo
    first = next(line.split(".")[0] for line in todo.splitlines() if "学生NEED0" in line)
    other = next(line.split(".")[0] for line in todo.splitlines() if "学生NEED1" in line)
    assert (
        await teacher(f"送达 {first}")
        == f"已登记第{first}项的平板电脑送达。下次家访时会问一下是否在用。"
    )
    assert await teacher(f"送达 {first}") == f"第{first}项的物品已经登记送达了。"
    assert await teacher(f"送达 {other}") == f"第{other}项还没有发放物品，或不在你负责的范围内。"
    assert await teacher("送达 99") == "当前列表里没有第99项。"
    with deps.db.begin() as conn:
        row = conn.execute(select(aid_allocations)).one()
    assert (row.status, row.delivered_by, row.followup_id) == ("delivered", "T001", needs[0])

    # two coordinators' sessions take the last tablet at once: one gets it, the other is told
    await coord("入库 平板电脑 1")
    await coord("库存")
    await console.say("库存", user="C001")
    a, b = await asyncio.gather(coord("发放 1"), console.say("发放 2", user="C001"))
    assert sorted([a.startswith("已发放第"), b.startswith("已发放第")]) == [False, True]
    assert "库存不足" in (b if a.startswith("已发放") else a)
    assert stock_of(deps, school_id(deps)) == 0 and count(deps, aid_allocations) == 2

    # the bureau records in its pool and sees every school's needs
    add_school(deps.db)
    add_needs(deps, 1, school="第二实验小学", owner="T101", prefix="OTH")
    assert (
        await console.say("入库 平板电脑 5", user="B001") == "已入库 平板电脑 5，教育局统筹现有 5。"
    )
    district = await console.say("库存", user="B001")
    assert "学生OTH0（六年级1班）（第二实验小学）" in district
    assert stock_of(deps, POOL) == 5
    # ... while the school's coordinator never sees another school's
    assert "学生OTH0" not in await coord("库存")


async def test_the_teacher_is_not_woken_in_quiet_hours(deps: Deps) -> None:
    me, now = coordinator(deps), deps.clock.now()
    morning = now + timedelta(hours=9)
    items = load_aid_items(DEFAULT_AID, deps.form.followup_kinds)
    store = SqlAid(deps.db, items, ("wecom",), lambda moment: morning)
    (need,) = add_needs(deps, 1)
    await store.change_stock(me, me.school_id or 0, TABLET, 1, "arrival", "", now)
    await store.allocate(me, me.school_id or 0, TABLET, [need], "handed", "", now)
    with deps.db.begin() as conn:
        (row,) = conn.execute(select(outbox).where(outbox.c.kind == "aid")).all()
    assert (row.next_attempt_at, row.created_at) == (morning, now)


async def test_a_need_now_of_another_school_is_refused_in_chat(
    world: World,  # noqa: F811
    settings: Settings,
) -> None:
    deps = world.deps
    chat = ChatDriver(build_dispatcher(replace(settings, wecom=WECOM), deps), "wecom")
    (need,) = add_needs(deps, 1)
    other = add_school(deps.db)["school"]
    assert await chat.say("入库 平板电脑 2", user="coord") == "已入库 平板电脑 2，本校现有 2。"
    assert "1. 学生NEED0" in await chat.say("库存", user="coord")
    with deps.db.begin() as conn:  # the student moved school since the list was shown
        student = conn.execute(select(followups.c.student_id).where(followups.c.id == need))
        conn.execute(
            students.update().where(students.c.id == student.scalar_one()).values(school_id=other)
        )
    refused = await chat.say("发放 1", user="coord")
    assert refused.startswith("第1项已经发放过、已经办结或已不在你的范围内。列表已更新：")
    assert "学生NEED0" not in refused
    assert stock_of(deps, school_id(deps)) == 2 and count(deps, aid_allocations) == 0
    assert messages(deps) == []
