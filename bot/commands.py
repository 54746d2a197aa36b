"""What each CLI command does, on top of the composition root."""

from __future__ import annotations

import asyncio
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from aiohttp import web

from bot.app import JOBS, build_dispatcher, create_app
from bot.channels import console
from bot.core.errors import HomevisitError
from bot.deps import Deps, SystemClock, build_deps
from bot.dispatcher import Dispatcher
from bot.jobs import JobReport
from bot.web import DELIVERY
from config.settings import Settings
from storage.db import Database


def _open(settings: Settings) -> Deps:
    deps = build_deps(settings)
    deps.db.upgrade()
    return deps


def _server_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): the event loop's own work per request is a
    good part of a message's CPU, and uvloop does it in C (measured: ~10% more messages/s)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(settings: Settings, host: str, port: int) -> int:
    deps = _open(settings)
    try:
        app = create_app(settings, deps, scheduler=True)
        # No access log: it costs ~5% of a message's CPU and says nothing the metrics don't.
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            print=lambda text: print(text, file=sys.stderr),
            loop=_server_loop(),
        )
    finally:
        deps.db.close()
    return 0


def demo(settings: Settings) -> int:
    from storage.demo import load_demo

    deps = _open(settings)
    try:
        with deps.db.begin() as conn:
            report = load_demo(conn, now=SystemClock().now())
    finally:
        deps.db.close()
    print(report.summary())
    print("演示名单已就绪 / demo roster ready. Try: homevisit chat --user T001")
    return 0


def chat(settings: Settings, staff_no: str) -> int:
    deps = _open(settings)
    try:
        dispatcher = build_dispatcher(settings, deps)
        asyncio.run(_chat(dispatcher, staff_no))
    finally:
        deps.db.close()
    return 0


async def _chat(dispatcher: Dispatcher, staff_no: str) -> None:
    staff = await dispatcher.turns.run(lambda store: store.find_staff(console.CHANNEL, staff_no))
    if staff is None:
        raise HomevisitError(
            f"工号 {staff_no} 不存在或已停用 / staff number {staff_no!r} not found "
            "(load a roster first: homevisit demo, or homevisit roster import FILE)"
        )
    await console.run(dispatcher, staff_no, sys.stdin, sys.stdout)


def roster_import(settings: Settings, files: list[Path], *, dry_run: bool) -> int:
    from storage.roster import import_files

    db = Database(settings.database_url)
    try:
        db.upgrade()
        report = import_files(db, files, now=SystemClock().now(), dry_run=dry_run)
    finally:
        db.close()
    prefix = "[dry run, nothing written] " if dry_run else ""
    print(prefix + report.summary())
    return 0


def screen_import(settings: Settings, files: list[Path], source: str, *, apply: bool) -> int:
    """Report (and with `apply` write) what a screening list changes. Students appear by 学籍号
    and class, rows by file and row number: the terminal may be shared, names stay out."""
    from storage.screening import screen_files

    db = Database(settings.database_url)
    try:
        db.upgrade()
        report = screen_files(db, files, source, now=SystemClock().now(), apply=apply)
    finally:
        db.close()
    for c in report.changes:
        print(f"+ {c.student_no} {c.school} {c.class_name}: {'、'.join(c.added)}")
    for m in report.ambiguous:
        print(f"? {m.where} ({m.school} {m.class_name}): 同班有 {m.candidates} 名同名学生，未匹配")
    for m in report.unmatched:
        print(f"- {m.where} ({m.school} {m.class_name}): 名单中找不到 / not in the roster")
    print(report.summary() + ("" if apply else "；加 --apply 写入 / add --apply to write"))
    return 0


def export(settings: Settings, out: Path, fmt: Literal["csv", "xlsx"], since: date | None) -> int:
    from storage.export import export_visits

    deps = _open(settings)
    columns = [(q.key, q.label) for q in deps.form.questions]
    try:
        with deps.db.begin() as conn:
            report = export_visits(
                conn, out, fmt, columns, deps.form.followup_kinds, settings.tz, since=since
            )
    finally:
        deps.db.close()
    print(
        f"exported {report.visits} visits and {report.followups} follow-ups to "
        + ", ".join(str(f) for f in report.files)
    )
    return 0


def run_job(settings: Settings, job: str, at: datetime | None) -> int:
    """Run one job as if at `at` (a naive time is read in HOMEVISIT_TZ); deliver what is due."""
    deps = _open(settings)
    moment = SystemClock().now() if at is None else at
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=settings.tz)
    try:
        report, sent = asyncio.run(_job_then_deliver(settings, deps, job, moment))
    finally:
        deps.db.close()
    print(report.summary())
    print(f"delivery: {sent} due messages attempted now; the rest wait in the outbox for serve")
    return 0


async def _job_then_deliver(
    settings: Settings, deps: Deps, job: str, at: datetime
) -> tuple[JobReport, int]:
    app = create_app(settings, deps, serving=False)
    runner = web.AppRunner(app)
    await runner.setup()  # opens the channels' HTTP sessions; no port, no background tasks
    try:
        report = await app[JOBS].run(job, at)
        return report, await app[DELIVERY].run_once()
    finally:
        await runner.cleanup()


def console_link(settings: Settings, staff_no: str) -> int:
    """Print a one-time console sign-in URL for a coordinator or bureau member (last line)."""
    from bot.core.signin import TOKEN_TTL, login_url
    from storage.console import issue_console_token

    db = Database(settings.database_url)
    try:
        db.upgrade()
        with db.begin() as conn:
            token = issue_console_token(conn, staff_no, SystemClock().now())
    finally:
        db.close()
    minutes = int(TOKEN_TTL.total_seconds() // 60)
    print(f"一次性登录链接，{minutes}分钟内有效 / one-time sign-in link, valid {minutes} minutes:")
    print(login_url(settings.public_url, token))
    return 0


def db_upgrade(settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        db.upgrade()
    finally:
        db.close()
    print("database is up to date")
    return 0
