"""Console sign-in and session security, over the real app and both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.deps import Deps
from config.settings import Settings
from tests.console_kit import ConsoleClient, issue_link, start_console


@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def test_a_link_signs_a_coordinator_in_once(web: ConsoleClient) -> None:
    token = issue_link(web.deps.db, "C001", web.deps)
    async with await web.get(f"/console/login?token={token}") as r:
        assert r.status == 303 and r.headers["Location"] == "/console/"
        cookie = r.cookies["hv_console"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    page = await web.text("/console/")
    assert "示例区实验小学" in page and "家访概况" in page
