"""Regenerate the README's screenshot of the console dashboard from the demo data.

    .venv/bin/python tests/ensure_browser.py   # as root: chromium and fonts-noto-cjk
    .venv/bin/python scripts/console_screenshot.py [--out docs/console-dashboard.png]

Builds a throw-away SQLite database with the demo roster, lets three demo teachers submit a few
visits through the real conversation, signs the demo coordinator C001 in with a one-time link
and photographs the dashboard in headless Chromium (Debian's, as the browser tests use).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestServer  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from bot.app import build_dispatcher, create_app  # noqa: E402
from bot.core.types import InboundMessage  # noqa: E402
from bot.deps import SystemClock, build_deps  # noqa: E402
from config.settings import load_settings  # noqa: E402
from storage.console import issue_console_token  # noqa: E402
from storage.demo import load_demo  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
# (teacher, student, answers): a phone visit finding a missing tablet; a video visit, all well;
# a family not reached
VISITS = [
    ("T001", "周小禾", ["3", "1", "2", "1", "2", "1", "1", "无"]),
    ("T001", "陈小树", ["1", "1", "1", "2", "1", "1", "无"]),
    ("T002", "孙小川", ["3", "2", "2", "3", "1", "2", "家里缺米面油", "3", "2", "无"]),
    ("T003", "冯小苗", ["5", "无"]),
]


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = replace(load_settings({}, env_file=None), database_url=f"sqlite:///{tmp}/d.db")
        deps = build_deps(settings)
        deps.db.upgrade()
        with deps.db.begin() as conn:
            load_demo(conn, now=SystemClock().now())
        dispatcher = build_dispatcher(settings, deps)
        for teacher, student, answers in VISITS:
            for text in ["家访", student, *answers, "提交"]:
                await dispatcher.handle(InboundMessage("console", teacher, text))
        server = TestServer(create_app(settings, deps, serving=False), host="127.0.0.1")
        await server.start_server()
        with deps.db.begin() as conn:
            token = issue_console_token(conn, "C001", SystemClock().now())
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = await browser.new_page(viewport={"width": 1000, "height": 900})
                await page.goto(str(server.make_url(f"/console/login?token={token}")))
                await page.screenshot(path=str(out), full_page=True)
                await browser.close()
        finally:
            await server.close()
            deps.db.close()
    print(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console-dashboard.png")
    asyncio.run(main(parser.parse_args().out))
