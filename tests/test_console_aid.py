"""The console's aid pages over the real app and both databases: a screening upload (preview,
then apply; scope; CSRF; no identity card kept) and aid stock (arrivals, corrections, scope, the
count never below zero, even with two writers at once)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from bot.core.aid import POOL, StockError
from bot.core.console_ports import Principal
from bot.core.types import StaffRole
from bot.deps import Deps
from config.aid import DEFAULT_AID, load_aid_items
from config.settings import Settings
from storage.aid import SqlAid
from storage.db import Database
from storage.schema import aid_ledger, aid_stock, audit_log, console_uploads, schools
from tests.conftest import ChatDriver
from tests.console_kit import ConsoleClient, add_school, start_console
from tests.test_console_pages import visit_zhou
from tests.test_screening import ID_CARD, LIST_CSV, categories, with_twin

SCHOOL = "示例区实验小学"


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


def _form(csrf: str | None, files: dict[str, str], **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    for key, value in fields.items():
        form.add_field(key, value)
    for name, content in files.items():
        form.add_field("files", content.encode(), filename=name, content_type="text/csv")
    return form


async def post_screen(web: ConsoleClient, csrf: str | None, **fields: Any) -> tuple[int, str]:
    files = fields.pop("files", {})
    async with await web.post("/console/screen", data=_form(csrf, files, **fields)) as r:
        return r.status, await r.text()


def school_id(deps: Deps, name: str = SCHOOL) -> int:
    with deps.db.begin() as conn:
        return int(conn.execute(select(schools.c.id).where(schools.c.name == name)).scalar_one())


# ---------------------------------------------------------------------------- screening
async def test_screen_upload_preview_then_apply(web: ConsoleClient, deps: Deps) -> None:
    with_twin(deps)
    await web.sign_in("C001")
    csrf = await web.csrf()
    status, page = await post_screen(web, csrf, files={"mz.csv": LIST_CSV}, source="民政")
    assert status == 200 and "预览（来源：民政）：共 5 行" in page
    assert re.search(r"<td>DEMO0002</td><td><a [^>]+>陈小树</a></td>.*?<td>特困</td>", page)
    assert "<td>mz.csv 第4行</td>" in page  # ambiguous (two 王小雨 in 三年级1班)
    assert ID_CARD not in page
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster"}
    with deps.db.begin() as conn:
        stashed = str(conn.execute(select(console_uploads.c.files)).scalar_one())
    assert ID_CARD not in stashed and "身份证" not in stashed  # not even in the stash
    upload_id = re.search(r'name="upload_id" value="([^"]+)"', page)
    assert upload_id

    status, page = await post_screen(web, csrf, action="apply", upload_id=upload_id.group(1))
    assert status == 200 and "已写入（来源：民政）" in page
    assert categories(deps, "DEMO0002")["特困"] == "民政"
    with deps.db.begin() as conn:
        assert conn.execute(select(func.count()).select_from(console_uploads)).scalar_one() == 0
        audited = conn.execute(
            select(audit_log.c.actor, audit_log.c.school_id).where(
                audit_log.c.action == "screen_import"
            )
        ).one()
    assert audited == ("C001", school_id(deps))
    # the stash is gone: applying twice is refused, nothing is written again
    status, page = await post_screen(web, csrf, action="apply", upload_id=upload_id.group(1))
    assert status == 400 and "上传已过期" in page


async def test_screen_upload_errors(web: ConsoleClient, deps: Deps) -> None:
    add_school(deps.db)
    await web.sign_in("C001")
    csrf = await web.csrf()
    other = LIST_CSV + f",外校生,{ID_CARD},第二实验小学,一年级1班,特困,\n"
    status, page = await post_screen(web, csrf, files={"mz.csv": other}, source="民政")
    assert status == 400 and "什么都没有写入" in page
    assert "<td>mz.csv</td><td>7</td><td>学校(school)</td>" in page
    bad = "姓名,学校,资助类别\n甲,乙,低保\n"
    status, page = await post_screen(web, csrf, files={"x.csv": bad}, source="民政")
    assert status == 400 and "<td>班级(class)</td><td>缺少此列 / missing column</td>" in page
    status, page = await post_screen(web, csrf, source="民政")
    assert status == 400 and "没有选择文件" in page
    status, page = await post_screen(web, csrf, files={"mz.csv": LIST_CSV}, source=" ")
    assert status == 400 and "来源（--source）不能为空" in page
    status, _ = await post_screen(web, None, files={"mz.csv": LIST_CSV}, source="民政")
    assert status == 403
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster"}

    # the bureau may screen every school's rows
    web.forget_cookies()
    await web.sign_in("B001")
    status, page = await post_screen(web, await web.csrf(), files={"mz.csv": other}, source="民政")
    assert status == 200 and "<td>OTHER001</td>" in page


async def test_pages_without_a_session_show_nothing(web: ConsoleClient) -> None:
    for path in ("/console/screen", "/console/aid"):
        async with await web.get(path) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/signin"


# ---------------------------------------------------------------------------- stock
async def record(web: ConsoleClient, csrf: str | None, **fields: str) -> tuple[int, str]:
    data = {k: v for k, v in fields.items()}
    if csrf is not None:
        data["csrf_token"] = csrf
    async with await web.post("/console/aid", data=data) as r:
        if r.status == 303:
            assert r.headers["Location"] == "/console/aid?done=1"
            return 303, await web.text("/console/aid?done=1")
        return r.status, await r.text()


def quantity(deps: Deps, school: int, item: str) -> int | None:
    with deps.db.begin() as conn:
        return conn.execute(
            select(aid_stock.c.quantity).where(
                aid_stock.c.school_id == school, aid_stock.c.item == item
            )
        ).scalar()


async def test_arrivals_corrections_and_need_against_supply(
    web: ConsoleClient, deps: Deps, bot: ChatDriver
) -> None:
    await visit_zhou(bot)  # one open device need
    mine = str(school_id(deps))
    await web.sign_in("C001")
    csrf = await web.csrf()
    page = await web.text("/console/aid")
    assert re.search(r"<th>平板电脑</th><td>1</td><td>0</td><td>1</td><td>0</td>", page)
    assert re.search(r"<th>牛奶</th><td>—</td><td>0</td><td>—</td><td>—</td>", page)

    web.forget_cookies()
    await web.sign_in("B001")  # the bureau sees the need school by school
    page = await web.text("/console/aid")
    zeros = "<td>0</td><td>0</td><td>0</td></tr>"
    assert f"<tr><td>{SCHOOL}</td><td>平板电脑</td><td>1</td><td>0</td><td>1</td>{zeros}" in page
    web.forget_cookies()
    await web.sign_in("C001")
    csrf = await web.csrf()
    assert "supply-by-school" not in await web.text("/console/aid")
    status, page = await record(
        web, csrf, school=mine, item="平板电脑", reason="arrival", change="17", note="第一批"
    )
    assert status == 303 and "已登记" in page
    assert re.search(r"<th>平板电脑</th><td>1</td><td>17</td><td>0</td><td>0</td>", page)
    status, page = await record(
        web, csrf, school=mine, item="平板电脑", reason="correction", change="-2", note="点错"
    )
    assert status == 303 and quantity(deps, school_id(deps), "平板电脑") == 15
    assert re.search(r"<td>更正</td><td>-2</td><td>15</td><td>C001</td><td>点错</td>", page)
    assert re.search(r"<td>入库</td><td>\+17</td><td>17</td><td>C001</td><td>第一批</td>", page)

    for fields, text in (
        ({"change": "-16", "reason": "correction"}, "库存不足：平板电脑 现有 15，不能减少 16"),
        ({"change": "-1", "reason": "arrival"}, "入库数量必须大于 0"),
        ({"change": "abc", "reason": "arrival"}, "整数"),
        ({"change": "0", "reason": "arrival"}, "1 到 100000"),
        ({"change": "1", "reason": "arrival", "item": "电视机"}, "没有这种物品"),
        ({"change": "1", "reason": "arrival", "school": str(POOL)}, "只能登记本校的库存"),
    ):
        form = {"school": mine, "item": "平板电脑", **fields}
        status, page = await record(web, csrf, **form)
        assert status == 400 and text in page, (fields, page[:300])
    assert quantity(deps, school_id(deps), "平板电脑") == 15
    status, _ = await record(web, None, school=mine, item="平板电脑", reason="arrival", change="1")
    assert status == 403
    with deps.db.begin() as conn:
        assert conn.execute(select(func.count()).select_from(aid_ledger)).scalar_one() == 2
        assert (
            conn.execute(
                select(func.count()).select_from(audit_log).where(audit_log.c.action == "aid_stock")
            ).scalar_one()
            == 2
        )


async def test_the_bureau_keeps_a_pool_and_sees_every_school(
    web: ConsoleClient, deps: Deps
) -> None:
    other = add_school(deps.db)["school"]
    await web.sign_in("C101")
    status, _ = await record(
        web, await web.csrf(), school=str(other), item="4G流量卡", reason="arrival", change="5"
    )
    assert status == 303
    web.forget_cookies()
    await web.sign_in("C001")
    page = await web.text("/console/aid")
    assert "4G流量卡</td><td>5" not in page and "第二实验小学" not in page  # not their school
    web.forget_cookies()
    await web.sign_in("B001")
    csrf = await web.csrf()
    status, page = await record(
        web, csrf, school=str(POOL), item="4G流量卡", reason="arrival", change="40"
    )
    assert status == 303
    assert "<tr><td>教育局统筹</td><td>4G流量卡</td><td>40</td></tr>" in page
    assert "<tr><td>第二实验小学</td><td>4G流量卡</td><td>5</td></tr>" in page
    assert re.search(r"<th>4G流量卡</th><td>0</td><td>45</td><td>0</td><td>0</td>", page)
    zeros = "<td>0</td><td>0</td><td>0</td></tr>"
    assert f"<td>第二实验小学</td><td>4G流量卡</td><td>0</td><td>5</td><td>0</td>{zeros}" in page
    status, page = await record(
        web, csrf, school="99999", item="牛奶", reason="arrival", change="1"
    )
    assert status == 400 and "没有这个学校" in page
    assert quantity(deps, POOL, "4G流量卡") == 40 and quantity(deps, other, "4G流量卡") == 5


def coordinator(deps: Deps) -> Principal:
    return Principal(1, "C001", "甲协调", StaffRole.COORDINATOR, school_id(deps), SCHOOL, "c", "s")


async def test_two_writers_at_once_never_take_more_than_the_stock(deps: Deps, db_url: str) -> None:
    """Three coordinators, each on their own connection pool, take one of the last two tablets
    at the same moment: two get one, the third is told there is none left; the count is 0."""
    items = load_aid_items(DEFAULT_AID, deps.form.followup_kinds)
    me, now = coordinator(deps), deps.clock.now()
    await SqlAid(deps.db, items).change_stock(
        me, me.school_id or 0, "平板电脑", 2, "arrival", "", now
    )
    others = [Database(db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(
                SqlAid(db, items).change_stock(
                    me, me.school_id or 0, "平板电脑", -1, "correction", "发放", now
                )
                for db in others
            ),
            return_exceptions=True,
        )
    finally:
        for db in others:
            db.close()
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1]
    (refused,) = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(refused, StockError) and "库存不足" in str(refused)
    assert quantity(deps, me.school_id or 0, "平板电脑") == 0
    with deps.db.begin() as conn:
        balances = conn.execute(select(aid_ledger.c.balance).order_by(aid_ledger.c.id)).scalars()
        assert list(balances) == [2, 1, 0]


def test_the_database_refuses_a_negative_count(deps: Deps) -> None:
    with deps.db.begin() as conn:
        conn.execute(
            aid_stock.insert().values(
                school_id=POOL, item="牛奶", quantity=1, updated_at=deps.clock.now()
            )
        )
    with pytest.raises(IntegrityError), deps.db.begin() as conn:
        conn.execute(update(aid_stock).values(quantity=aid_stock.c.quantity - 2))
    assert quantity(deps, POOL, "牛奶") == 1
