"""The aid pages in a real headless Chromium (SQLite), at 375 px like a chat app's browser: a
coordinator screens a 民政 list (an error first, then preview and apply), then records tablets
arriving and a correction, and reads need against supply; then allocates a tablet to a need
by courier and records its delivery."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from bot.deps import Deps
from config.settings import Settings
from tests.browser_kit import chromium
from tests.conftest import ChatDriver, make_db_url
from tests.console_kit import ConsoleClient, issue_link, start_console
from tests.test_console_pages import visit_zhou
from tests.test_screening import ID_CARD, LIST_CSV, categories


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:  # (one database is enough for the browser)
    yield from make_db_url("sqlite", tmp_path)


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


@pytest.fixture
async def page(web: ConsoleClient) -> AsyncIterator[Page]:
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 375, "height": 812}, locale="zh-CN")
        tab = await context.new_page()
        tab.set_default_timeout(15_000)
        yield tab
        await context.close()


async def test_screening_and_stock_in_the_browser(
    web: ConsoleClient, page: Page, bot: ChatDriver, deps: Deps, tmp_path: Path
) -> None:
    await visit_zhou(bot)  # one open device need
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{web.base}/console/login?token={issue_link(deps.db, 'C001', deps)}")
    await expect(page).to_have_url(f"{web.base}/console/")

    # a list without its class column: named, nothing written
    await page.click("nav >> text=筛查名单")
    bad = tmp_path / "bad.csv"
    bad.write_text("姓名,学校,资助类别\n甲,乙,低保\n", encoding="utf-8")
    await page.set_input_files("#files", [str(bad)])
    await page.click("#preview-button")
    await expect(page.locator("#error-summary")).to_contain_text("班级(class)")

    good = tmp_path / "minzheng.csv"
    good.write_text(LIST_CSV, encoding="utf-8")
    await page.fill("#source", "民政")
    await page.set_input_files("#files", [str(good)])
    await page.click("#preview-button")
    await expect(page.locator("#preview")).to_contain_text("共 5 行")
    await expect(page.locator("#changes tbody tr")).to_have_count(3)
    await expect(page.locator("#unmatched")).to_contain_text("minzheng.csv 第5行")
    assert ID_CARD not in await page.content()
    assert categories(deps, "DEMO0002") == {"低保": "roster", "留守": "roster"}
    await page.click("#apply")
    await expect(page.locator("#applied")).to_contain_text("已写入（来源：民政）")
    assert categories(deps, "DEMO0002")["特困"] == "民政"

    # stock: 17 tablets arrive, then a correction; need against supply
    await page.click("nav >> text=物资")
    await expect(page.locator("#supply")).to_contain_text("平板电脑")
    await page.select_option("#item", "平板电脑")
    await page.fill("#change", "17")
    await page.fill("#note", "第一批")
    await page.click("#record")
    await expect(page.locator("#recorded")).to_be_visible()
    row = page.locator("#supply tr", has_text="平板电脑")
    await expect(row).to_have_text(re.compile(r"平板电脑\s*1\s*17\s*0"))
    await page.select_option("#item", "平板电脑")
    await page.select_option("#reason", "correction")
    await page.fill("#change", "-20")
    await page.click("#record")
    await expect(page.locator("#error-summary")).to_contain_text("库存不足")
    await expect(page.locator("#ledger tbody tr")).to_have_count(1)
    await expect(page.locator("#ledger")).to_contain_text("第一批")
    wide = await page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376"
        " && !e.closest('.scroll')).map(e => e.tagName + '.' + e.className).slice(0, 5)"
    )
    assert wide == []
    assert [e for e in errors if "status of 400" not in e] == []  # (the refusals above)


async def test_allocation_and_delivery_in_the_browser(
    web: ConsoleClient, page: Page, bot: ChatDriver, deps: Deps
) -> None:
    """17 tablets, 周小禾's need ticked and couriered, then its delivery recorded."""
    await visit_zhou(bot)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{web.base}/console/login?token={issue_link(deps.db, 'C001', deps)}")
    await page.click("nav >> text=物资")
    await page.select_option("#item", "平板电脑")
    await page.fill("#change", "17")
    await page.click("#record")
    await expect(page.locator("#recorded")).to_be_visible()

    need = page.locator("#needs tbody tr", has_text="周小禾")
    await expect(need).to_contain_text("残疾")
    await need.locator("input[type=checkbox]").check()
    await page.select_option("#method", "courier")
    await page.click("#allocate-button")  # no tracking number: refused, nothing given
    await expect(page.locator("#error-summary")).to_contain_text("快递请填写快递单号")
    await page.locator("#needs tbody tr", has_text="周小禾").locator("input").check()
    await page.select_option("#method", "courier")
    await page.fill("#tracking", "SF123456")
    await page.click("#allocate-button")
    await expect(page.locator("#recorded")).to_contain_text("已发放，已通知负责老师")
    await expect(page.locator("#needs")).to_contain_text("没有待发放的需求")
    given = page.locator("#allocation-list tbody tr", has_text="周小禾")
    await expect(given).to_contain_text("SF123456")
    await expect(given).to_contain_text("已发放，未送达")
    await given.locator("button", has_text="登记送达").click()
    await expect(page.locator("#recorded")).to_contain_text("已登记送达")
    await expect(page.locator("#allocation-list tbody tr", has_text="周小禾")).to_contain_text(
        "已送达"
    )
    row = page.locator("#supply tr", has_text="平板电脑")
    await expect(row).to_have_text(re.compile(r"平板电脑\s*1\s*16\s*0\s*1\s*1\s*0"))
    wide = await page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376"
        " && !e.closest('.scroll')).map(e => e.tagName + '.' + e.className).slice(0, 5)"
    )
    assert wide == []
    assert [e for e in errors if "status of 400" not in e] == []
