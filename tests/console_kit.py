"""The real app on a loopback port with a browser-like client, for the console's behaviour tests.

`ConsoleClient` keeps cookies like a browser (including for 127.0.0.1), never follows redirects
by itself, and knows how to get a one-time link the way `homevisit console link` does.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import select, update

from bot.app import create_app
from bot.deps import Deps
from config.settings import Settings
from storage.console import issue_console_token
from storage.db import Database
from storage.schema import schools, staff, students

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def issue_link(db: Database, staff_no: str, deps: Deps) -> str:
    with db.begin() as conn:
        return issue_console_token(conn, staff_no, deps.clock.now())


@dataclass
class ConsoleClient:
    server: TestServer
    http: aiohttp.ClientSession
    deps: Deps

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def get(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.http.get(self.base + path, allow_redirects=False, **kw)

    async def post(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.base + path, allow_redirects=False, **kw)

    async def text(self, path: str, status: int = 200) -> str:
        async with await self.get(path) as r:
            body = await r.text()
            assert r.status == status, (r.status, body[:500])
            return body

    async def sign_in(self, staff_no: str) -> None:
        token = issue_link(self.deps.db, staff_no, self.deps)
        async with await self.get(f"/console/login?token={token}") as r:
            assert r.status == 303 and r.headers["Location"] == "/console/", r.status

    async def csrf(self) -> str:
        m = CSRF.search(await self.text("/console/roster"))
        assert m
        return m.group(1)

    def forget_cookies(self) -> None:
        self.http.cookie_jar.clear()


async def start_console(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    app = create_app(settings, deps, serving=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        yield ConsoleClient(server, http, deps)
    finally:
        await http.close()
        await server.close()


def add_school(db: Database, name: str = "第二实验小学") -> dict[str, int]:
    """A second school with a coordinator C101, a teacher T101 and a student OTHER001."""
    from bot.core.types import StaffRole
    from storage.roster import Origin, Roster, StaffEntry, StudentEntry, import_roster

    roster = Roster(
        students=(
            StudentEntry(
                Origin("t", 2), "OTHER001", "外校生", name, "一年级1班", ("低保",), "T101"
            ),
        ),
        staff=(
            StaffEntry(Origin("t", 2), "C101", "乙协调", name, StaffRole.COORDINATOR),
            StaffEntry(Origin("t", 3), "T101", "外校师", name, StaffRole.TEACHER),
        ),
    )
    from datetime import UTC, datetime

    with db.begin() as conn:
        import_roster(conn, roster, now=datetime(2026, 3, 1, tzinfo=UTC))
        sid = conn.execute(select(schools.c.id).where(schools.c.name == name)).scalar_one()
        other = conn.execute(
            select(students.c.id).where(students.c.student_no == "OTHER001")
        ).scalar_one()
    return {"school": sid, "student": other}


def set_staff(db: Database, staff_no: str, **values: Any) -> None:
    with db.begin() as conn:
        conn.execute(update(staff).where(staff.c.staff_no == staff_no).values(**values))
