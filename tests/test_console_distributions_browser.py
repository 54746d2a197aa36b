"""The distribution and review pages in a real headless Chromium (SQLite), at 375 px like a
chat app's browser: a coordinator tries a distribution to an empty category (refused), creates
one to the aid categories, marks two families delivered, downloads the 发放台账, and reads the
aid reviews page."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openpyxl
import pytest
from playwright.async_api import Page, expect

from bot.deps import Deps
from config.settings import Settings
from tests.browser_kit import chromium
from tests.conftest import ChatDriver, make_db_url
from tests.console_kit import ConsoleClient, issue_link, start_console


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


async def test_a_milk_distribution_and_the_reviews_in_the_browser(
    web: ConsoleClient, page: Page, bot: ChatDriver, deps: Deps, tmp_path: Path
) -> None:
    await bot.say("新增学生 李小花 三年级2班 父母都没能返岗")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{web.base}/console/login?token={issue_link(deps.db, 'C001', deps)}")
    await expect(page).to_have_url(f"{web.base}/console/")

    await page.click("nav >> text=发放")
    await expect(page.locator("#distributions")).to_contain_text("还没有发放")
    # a list of one unknown 学籍号: named, nothing created
    await page.fill("#title", "每人两箱牛奶")
    await page.fill("#student_nos", "NOPE1")
    await page.click("#create-button")
    await expect(page.locator("#error-summary")).to_contain_text("NOPE1")
    await expect(page.locator("#distributions")).to_contain_text("还没有发放")

    await page.fill("#student_nos", "")
    for category in ("建档立卡", "孤儿", "低保", "大病", "残疾"):
        await page.check(f"#categories input[value='{category}']")
    await page.click("#create-button")
    await expect(page.locator("#created")).to_contain_text("已创建：共 9 人")
    await expect(page.locator("#recipients tbody tr")).to_have_count(9)
    await page.check("input[aria-label='周小禾 已送达']")
    await page.check("input[aria-label='孙小川 已送达']")
    await page.click("#deliver-button")
    await expect(page.locator("#marked")).to_contain_text("已登记送达 2 人")
    await expect(page.locator("#progress")).to_contain_text("已送达 2 / 9（22%）")

    async with page.expect_download() as info:
        await page.click("#ledger-link")
    download = await info.value
    saved = tmp_path / "ledger.xlsx"
    await download.save_as(saved)
    sheet = openpyxl.load_workbook(io.BytesIO(saved.read_bytes()))["发放台账"]
    assert sheet.max_row == 3 + 9 and sheet["I3"].value == "领取人签字"

    wide = await page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376"
        " && !e.closest('.scroll')).map(e => e.tagName + '.' + e.className).slice(0, 5)"
    )
    assert wide == []

    await page.click("nav >> text=资助认定")
    await expect(page.locator("#waiting")).to_contain_text("李小花")
    await expect(page.locator("#waiting")).to_contain_text("老师上报的新增学生")
    await page.click("#waiting button.decline")  # no reason: refused, nothing decided
    await expect(page.locator("#error-summary")).to_contain_text("不予认定请写明原因")
    await page.select_option("#waiting select[name=category]", "低保")
    await page.click("#waiting button.approve")
    await expect(page.locator("#decided-note")).to_contain_text("已认定")
    await expect(page.locator("#decided")).to_contain_text("李小花")
    await expect(page.locator("#waiting")).to_contain_text("没有待认定的学生")
    assert [e for e in errors if "status of 400" not in e] == []  # (the refusals above)
