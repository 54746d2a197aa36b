"""Batch distributions over the real app and both databases: a milk distribution to the aid
categories, recipients marked delivered (once), progress, the printable 发放台账, scope, CSRF,
and bad input (an empty category, unknown 学籍号, no title) that creates nothing."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from datetime import date

import openpyxl
import pytest
from sqlalchemy import func, select

from bot.core.console_ports import Principal
from bot.core.types import StaffRole
from bot.deps import Deps
from config.settings import Settings
from storage.distributions import LEDGER_COLUMNS, SqlDistributions
from storage.schema import audit_log, distribution_recipients, distributions, staff, students
from tests.conftest import FakeClock
from tests.console_kit import ConsoleClient, add_school, start_console
from tests.test_schedule import World, local, world

AID_CATEGORIES = ("建档立卡", "孤儿", "低保", "大病", "残疾")
MILK_TO = {"DEMO0001", "DEMO0002", "DEMO0003", "DEMO0005", "DEMO0006", "DEMO0007"}
MILK_TO |= {"DEMO0008", "DEMO0009", "DEMO0012"}
__all__ = ["world"]  # the fixture, used by name


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def create(
    web: ConsoleClient, csrf: str | None, categories: tuple[str, ...] = (), **fields: str
) -> tuple[int, str, str]:
    data: list[tuple[str, str]] = [("category", c) for c in categories]
    if csrf is not None:
        data.append(("csrf_token", csrf))
    data += list(fields.items())
    async with await web.post("/console/distributions", data=data) as r:
        return r.status, r.headers.get("Location", ""), await r.text()


async def deliver(web: ConsoleClient, csrf: str, did: int, ids: list[int]) -> tuple[int, str]:
    data = [("csrf_token", csrf), *(("student", str(i)) for i in ids)]
    async with await web.post(f"/console/distributions/{did}/deliver", data=data) as r:
        return r.status, r.headers.get("Location", "")


def ids_of(deps: Deps, *nos: str) -> list[int]:
    with deps.db.begin() as conn:
        rows = conn.execute(select(students.c.id).where(students.c.student_no.in_(nos)))
        return sorted(rows.scalars())


def counts(deps: Deps) -> tuple[int, int]:
    with deps.db.begin() as conn:
        made = conn.execute(select(func.count()).select_from(distributions)).scalar_one()
        rows = conn.execute(select(func.count()).select_from(distribution_recipients))
        return int(made), int(rows.scalar_one())


async def test_milk_to_the_aid_categories_with_progress_and_ledger(
    web: ConsoleClient, deps: Deps, clock: FakeClock
) -> None:
    await web.sign_in("C001")
    csrf = await web.csrf()
    status, location, _ = await create(web, csrf, AID_CATEGORIES, title="每人两箱牛奶")
    assert status == 303, status
    did = int(re.fullmatch(r"/console/distributions/(\d+)\?created=1", location).group(1))  # type: ignore[union-attr]
    page = await web.text(location)
    assert "已创建：共 9 人" in page and "已送达 0 / 9（0%）" in page
    with deps.db.begin() as conn:
        got = conn.execute(
            select(students.c.student_no)
            .join(distribution_recipients, distribution_recipients.c.student_id == students.c.id)
            .where(distribution_recipients.c.distribution_id == did)
        ).scalars()
        assert set(got) == MILK_TO  # 沈小云 (留守 only) and 蒋小峰 (特困) are not in it

    first = ids_of(deps, "DEMO0001", "DEMO0002")
    status, location = await deliver(web, csrf, did, first)
    assert (status, location) == (303, f"/console/distributions/{did}?marked=2")
    page = await web.text(location)
    assert "已登记送达 2 人" in page and "已送达 2 / 9（22%）" in page
    clock.advance(minutes=5)
    status, location = await deliver(web, csrf, did, ids_of(deps, "DEMO0002", "DEMO0003"))
    assert location.endswith("?marked=1")  # 陈小树 already had hers: her first mark is kept
    with deps.db.begin() as conn:
        marks = dict(
            conn.execute(
                select(
                    distribution_recipients.c.student_id, distribution_recipients.c.delivered_at
                ).where(distribution_recipients.c.delivered_at.is_not(None))
            ).all()
        )
    assert len(marks) == 3 and marks[first[1]] < marks[ids_of(deps, "DEMO0003")[0]]
    status, _ = await deliver(web, csrf, did, [])
    assert status == 400
    assert "3 / 9（33%）" in await web.text("/console/distributions")

    async with await web.get(f"/console/distributions/{did}/ledger.xlsx") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/vnd.openxmlformats")
        assert f'filename="ledger-{did}.xlsx"' in r.headers["Content-Disposition"]
        data = await r.read()
    book = openpyxl.load_workbook(io.BytesIO(data))
    sheet = book["发放台账"]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][0] == "发放台账：每人两箱牛奶"
    assert "共 9 人" in str(rows[1][0])
    assert rows[2] == tuple(h for h, _ in LEDGER_COLUMNS)
    body = rows[3:]
    assert len(body) == 9 and [r[0] for r in body] == list(range(1, 10))
    by_no = {r[3]: r for r in body}
    assert by_no["DEMO0001"][4] == "王小雨" and by_no["DEMO0001"][6] == "每人两箱牛奶"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", by_no["DEMO0001"][7])  # marked delivered
    assert by_no["DEMO0005"][7] is None and by_no["DEMO0005"][8] is None  # to be signed
    assert set(by_no["DEMO0006"][5].split("、")) == {"大病", "低保"}
    # ready to print: header repeated, fitted to the width, borders, widths set
    assert sheet.print_title_rows == "$3:$3"
    assert sheet.page_setup.fitToWidth == 1 and sheet.page_setup.fitToHeight == 0
    assert sheet.sheet_properties.pageSetUpPr.fitToPage is True
    assert sheet.page_setup.orientation == "landscape"
    assert sheet.cell(row=12, column=9).border.left.style == "thin"
    assert sheet.column_dimensions["I"].width == 16
    with deps.db.begin() as conn:
        actions = list(conn.execute(select(audit_log.c.action, audit_log.c.detail)).all())
    assert [a for a, _ in actions if a.startswith("distribution")] == [
        "distribution_create",
        "distribution_deliver",
        "distribution_deliver",
        "distribution_ledger",
    ]
    assert not any("王小雨" in str(d) for _, d in actions)  # no names in the audit


async def test_bad_input_creates_nothing(web: ConsoleClient, deps: Deps) -> None:
    await web.sign_in("C001")
    csrf = await web.csrf()
    cases = [
        ((), {"title": "每人一袋米"}, "请选择资助类别，或填写学籍号"),
        (("孤儿",), {"title": "  "}, "请填写发放内容"),
        (("孤儿",), {"title": "米" * 101}, "请填写发放内容"),
        (
            ("不存在的类别",),
            {"title": "每人一袋米"},
            "所选类别（不存在的类别）在本范围内没有在册学生",
        ),
        ((), {"title": "每人一袋米", "student_nos": "DEMO0001\nNOPE99"}, "NOPE99"),
        ((), {"title": "每人一袋米", "student_nos": "OTHER001"}, "OTHER001"),  # another school's
    ]
    add_school(deps.db)
    for cats, fields, message in cases:
        status, _, page = await create(web, csrf, cats, **fields)
        assert status == 400 and message in page, (cats, fields, page[-800:])
        assert 'id="error-summary"' in page and "没有创建" in page
    assert counts(deps) == (0, 0)
    status, _, _ = await create(web, None, ("孤儿",), title="每人一袋米")
    assert status == 403 and counts(deps) == (0, 0)

    # a chosen list, with separators a coordinator might paste
    status, location, _ = await create(
        web, csrf, (), title="每人一袋米", student_nos="DEMO0010，DEMO0011 DEMO0010"
    )
    assert status == 303 and counts(deps) == (1, 2)
    assert "指定名单" in await web.text(location)
    async with await web.get("/console/distributions/999") as r:
        assert r.status == 404
    async with await web.get("/console/distributions/x/ledger.xlsx") as r:
        assert r.status == 404


async def test_scope_school_and_bureau(web: ConsoleClient, deps: Deps) -> None:
    other = add_school(deps.db)
    await web.sign_in("B001")
    csrf = await web.csrf()
    status, all_location, _ = await create(web, csrf, ("低保",), title="全区每人一箱牛奶")
    assert status == 303
    page = await web.text(all_location)
    assert "全区" in page and "已送达 0 / 4" in page and "外校生" in page
    status, one_location, _ = await create(
        web, csrf, ("低保",), title="二校每人一袋米", school=str(other["school"])
    )
    assert status == 303 and "已送达 0 / 1" in await web.text(one_location)
    status, _, page = await create(web, csrf, ("低保",), title="米", school="99999")
    assert status == 400 and "没有这个学校" in page

    # the first school's coordinator sees its part of the bureau's distribution, not the other's
    web.forget_cookies()
    await web.sign_in("C001")
    csrf = await web.csrf()
    listing = await web.text("/console/distributions")
    assert "全区每人一箱牛奶" in listing and "二校每人一袋米" not in listing
    page = await web.text(all_location)
    assert "已送达 0 / 3" in page and "外校生" not in page
    async with await web.get(one_location) as r:
        assert r.status == 404
    did = int(all_location.split("/")[-1].split("?")[0])
    status, location = await deliver(web, csrf, did, [other["student"], *ids_of(deps, "DEMO0008")])
    assert location.endswith("?marked=1")  # only the one of its own school
    async with await web.get(f"{one_location.split('?')[0]}/ledger.xlsx") as r:
        assert r.status == 404
    status, _ = await deliver(web, csrf, int(one_location.split("/")[-1].split("?")[0]), [1])
    assert status == 404

    web.forget_cookies()
    await web.sign_in("B001")
    assert "已送达 1 / 4" in await web.text(all_location)


async def test_pages_without_a_session_show_nothing(web: ConsoleClient) -> None:
    for path in ("/console/distributions", "/console/distributions/1/ledger.xlsx"):
        async with await web.get(path) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/signin"


async def test_teachers_reminders_list_what_is_still_to_deliver(
    world: World, deps: Deps, settings: Settings
) -> None:
    with deps.db.begin() as conn:
        coord = conn.execute(select(staff).where(staff.c.staff_no == "C001")).one()
    me = Principal(
        coord.id, "C001", coord.name, StaffRole.COORDINATOR, coord.school_id, "", "x", "y"
    )
    store = SqlDistributions(deps.db, settings.tz)
    did = await store.create(me, "每人两箱牛奶", ["孤儿", "建档立卡"], [], None, deps.clock.now())
    monday, tuesday = date(2026, 3, 2), date(2026, 3, 3)
    await world.at(local(monday, 9), "remind")
    [first] = world.wecom.to("zhanglaoshi")  # T001: 王小雨 (建档立卡) is theirs
    assert "待送达的发放" in first and "· 每人两箱牛奶：王小雨（三年级1班）" in first
    assert "孙小川" not in first  # T002's student
    [li] = world.wecom.to("li")  # T002: 孙小川 (孤儿), and as carer of 郑小石 (建档立卡)
    assert "孙小川（四年级2班）" in li and "郑小石（五年级1班）" in li

    await store.deliver(me, did, ids_of(deps, "DEMO0001"), deps.clock.now())
    await world.at(local(tuesday, 9), "remind")
    second = world.wecom.to("zhanglaoshi")[-1]
    assert second != first and "每人两箱牛奶" not in second
