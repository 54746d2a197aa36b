"""The console in a real headless Chromium, as a coordinator would use it (SQLite).

Sign in through a one-time link, read the dashboard's numbers and charts, follow a number to its
list, open a student, upload a roster with an error and then a good one, download an export and
sign out. At 375 px wide, like the chat apps' built-in browsers.
"""

from __future__ import annotations

import re
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
from tests.test_console_pages import visit_zhou
from tests.test_console_roster import STAFF_CSV, STUDENTS_CSV

SCHOOL = "示例区实验小学"


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
        context = await browser.new_context(
            viewport={"width": 375, "height": 812}, accept_downloads=True, locale="zh-CN"
        )
        tab = await context.new_page()
        tab.set_default_timeout(15_000)
        yield tab
        await context.close()


async def test_a_coordinators_morning_in_the_browser(
    web: ConsoleClient, page: Page, bot: ChatDriver, deps: Deps, tmp_path: Path
) -> None:
    await visit_zhou(bot)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # sign in through a link: the token leaves the address bar
    await page.goto(f"{web.base}/console/login?token={issue_link(deps.db, 'C001', deps)}")
    await expect(page).to_have_url(f"{web.base}/console/")
    await expect(page.locator("h1")).to_contain_text(SCHOOL)

    # the numbers, and the charts with their numbers in text
    await expect(page.locator("#n-visited .big")).to_have_text("1/12")
    await expect(page.locator("#n-unvisited .big")).to_have_text("11")
    assert await page.locator("svg.chart").count() == 4
    await expect(page.locator("svg.chart").first).to_be_visible()
    wide = await page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376"
        " && !e.closest('.scroll')).map(e => e.tagName + '.' + e.className).slice(0, 5)"
    )
    assert wide == []  # nothing sticks out sideways (wide tables scroll inside their box)

    # follow a number to its list, then open a student
    await page.click("#n-unvisited")
    await expect(page).to_have_url(re.compile(r"/console/students\?state=unvisited$"))
    await expect(page.locator("#result-count")).to_contain_text("11")
    await page.click("text=陈小树")
    await expect(page.locator("h1")).to_have_text("陈小树")
    await expect(page.locator("dl.facts")).to_contain_text("低保、留守")

    # upload a roster with an error, then a good one
    await page.goto(f"{web.base}/console/roster")
    bad = tmp_path / "bad" / "students.csv"
    bad.parent.mkdir()
    bad.write_text(STUDENTS_CSV.format(s=SCHOOL) + "NEW0002,,示例区实验小学,一年级1班,,T001\n")
    await page.set_input_files("#files", [str(bad)])
    await page.click("#preview-button")
    await expect(page.locator(".error-summary")).to_contain_text("什么都没有导入")
    await expect(page.locator("#problems")).to_contain_text("姓名(name)")
    await page.click(".error-summary a")  # the summary links to the row
    assert page.url.endswith("#problem-1")
    good_students, good_staff = tmp_path / "students.csv", tmp_path / "staff.csv"
    good_students.write_text(STUDENTS_CSV.format(s=SCHOOL), encoding="utf-8")
    good_staff.write_text(STAFF_CSV.format(s=SCHOOL), encoding="utf-8")
    await page.set_input_files("#files", [str(good_students), str(good_staff)])
    await page.click("#preview-button")
    await expect(page.locator("#preview")).to_contain_text("学生新增")
    await page.click("#apply")
    await expect(page.locator("#applied")).to_contain_text("名单已导入")
    await page.goto(f"{web.base}/console/")
    await expect(page.locator("#n-visited .big")).to_have_text("0/3")

    # download an export
    await page.goto(f"{web.base}/console/export")
    async with page.expect_download() as info:
        await page.click("#export-xlsx")
    download = await info.value
    assert (
        download.suggested_filename.endswith(".xlsx") and "家访记录" in download.suggested_filename
    )
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    rows = list(openpyxl.load_workbook(saved)["家访记录"].iter_rows(values_only=True))
    # 周小禾's visit (the export keeps submitted visits of students the new roster deactivated)
    assert rows[0][0] == "学籍号" and [r[0] for r in rows[1:]] == ["DEMO0003"]

    # sign out
    await page.click("button:has-text('退出登录')")
    await expect(page.locator("main")).to_contain_text("你已退出登录")
    await page.goto(f"{web.base}/console/students")
    await expect(page).to_have_url(f"{web.base}/console/signin")
    assert "陈小树" not in await page.content()
    # no CSP violation, no broken resource (a 400 answer to the bad upload is the page itself)
    assert [e for e in errors if "status of 400" not in e] == []
