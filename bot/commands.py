"""What each CLI command does, on top of the composition root."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from aiohttp import web

from bot.app import JOBS, build_dispatcher, create_app
from bot.channels import console
from bot.core.errors import HomevisitError
from bot.deps import Deps, SystemClock, build_deps, open_database
from bot.dispatcher import Dispatcher
from bot.jobs import JobReport
from bot.web import DELIVERY
from config.settings import Settings

log = logging.getLogger("homevisit")


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


@contextlib.contextmanager
def _in_use(settings: Settings) -> Iterator[None]:
    """For a long-running process on a SQLite file: `db restore` refuses it meanwhile."""
    from storage.backup import in_use, sqlite_path

    if not settings.database_url.startswith("sqlite"):
        yield
        return
    with in_use(sqlite_path(settings.database_url)):
        yield


def serve(settings: Settings, host: str, port: int) -> int:
    with _in_use(settings):
        return _serve(settings, host, port)


def _serve(settings: Settings, host: str, port: int) -> int:
    deps = _open(settings)
    try:
        app = create_app(settings, deps, scheduler=True)
        # No access log: it costs ~5% of a message's CPU and says nothing the metrics don't.
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            # (aiohttp's "Running on ..." as a log line: JSON too under HOMEVISIT_LOG_FORMAT=json)
            print=lambda text: log.info("%s", text.strip("= \n")),
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
    with _in_use(settings):
        return _chat_with(settings, staff_no)


def _chat_with(settings: Settings, staff_no: str) -> int:
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

    db = open_database(settings)
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

    db = open_database(settings)
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


def export(
    settings: Settings,
    out: Path,
    fmt: Literal["csv", "xlsx"],
    since: date | None,
    *,
    include_sensitive: bool = False,
    reason: str = "",
    user: str | None = None,
) -> int:
    """Sensitive answers only with `include_sensitive`, a reason and the `user` it is for (a
    coordinator gets their school's, the bureau everyone's); recorded in the audit log."""
    from storage.export import Sensitive, export_visits, exporter_scope

    if include_sensitive and not reason:
        raise HomevisitError("--include-sensitive needs --reason TEXT (it goes in the audit log)")
    if include_sensitive and not user:
        raise HomevisitError("--include-sensitive needs --user STAFF_NO (who the export is for)")
    deps = _open(settings)
    form = deps.form
    columns = [(q.key, q.label) for q in form.questions]
    policy = Sensitive(form.sensitive_keys, form.public_detail, include_sensitive, reason)
    try:
        with deps.db.begin() as conn:
            school_id = exporter_scope(conn, user) if user else None
            report = export_visits(
                conn,
                out,
                fmt,
                columns,
                form.followup_kinds,
                settings.tz,
                since=since,
                actor=user or "cli",
                school_id=school_id,
                sensitive=policy,
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

    db = open_database(settings)
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


def bind_code(settings: Settings, staff_no: str) -> int:
    """Print a one-time binding code for a staff member (the code alone on the last line)."""
    from bot.core.binding import CODE_TTL, code_hash, new_code
    from bot.core.errors import HomevisitError
    from storage.binding import issue_code

    code = new_code()
    now = SystemClock().now()
    db = open_database(settings)
    try:
        db.upgrade()
        with db.begin() as conn:
            target = issue_code(conn, staff_no, None, code_hash(code), now + CODE_TTL, now, "cli")
    finally:
        db.close()
    if target is None:
        raise HomevisitError(
            f"工号 {staff_no} 不存在或已停用 / staff number {staff_no!r} not found"
        )
    hours = int(CODE_TTL.total_seconds() // 3600)
    print(
        f"{target.name}（{target.staff_no}）的绑定码，{hours}小时内有效、只能用一次；"
        f"老师发送“绑定 {target.staff_no} 绑定码” / binding code, valid {hours} hours, once:"
    )
    print(code)
    return 0


def db_upgrade(settings: Settings) -> int:
    db = open_database(settings)
    try:
        db.upgrade()
    finally:
        db.close()
    print("database is up to date")
    return 0


def audit_verify(settings: Settings) -> int:
    """Check the audit log's hash chain; name the first entry changed or removed."""
    from storage.audit import verify_chain

    db = open_database(settings)
    try:
        db.upgrade()
        with db.begin() as conn:
            report = verify_chain(conn)
    finally:
        db.close()
    if not report.ok:
        raise HomevisitError(
            f"审计日志第 {report.broken_at} 条被改动或删除 / audit log broken at entry "
            f"{report.broken_at}: {report.reason} ({report.entries} entries before it intact)"
        )
    print(f"audit log intact: {report.entries} entries, last hash {report.last_hash}")
    return 0


def db_backup(settings: Settings, out: Path) -> int:
    from storage.backup import backup, sqlite_path

    report = backup(sqlite_path(settings.database_url), out)
    print(f"backup written to {report.path} ({report.size} bytes)")
    return 0


def db_restore(settings: Settings, file: Path) -> int:
    from storage.backup import restore, sqlite_path
    from storage.migrate import known_revisions

    database = sqlite_path(settings.database_url)
    revision = restore(file, database, known_revisions())
    print(f"restored {database} from {file} (migration {revision}); homevisit serve upgrades it")
    return 0


def student_export(settings: Settings, student_no: str, out: Path) -> int:
    """A guardian's access request: everything held about one student, as JSON (audited)."""
    from storage.erasure import export_student

    db = open_database(settings)
    try:
        db.upgrade()
        with db.begin() as conn:
            n = export_student(conn, student_no.strip(), out, SystemClock().now())
    finally:
        db.close()
    print(f"wrote student {student_no.strip()} ({n} visits) to {out}")
    return 0


def student_erase(settings: Settings, student_no: str, reason: str) -> int:
    """Erase one student on request; the audit log keeps the reason and a pseudonym."""
    from storage.erasure import erase_student

    db = open_database(settings)
    try:
        db.upgrade()
        with db.begin() as conn:
            erased = erase_student(conn, student_no.strip(), reason, SystemClock().now())
    finally:
        db.close()
    print(
        f"erased student {student_no.strip()}: {erased.visits} visits, {erased.followups} "
        f"follow-ups, {erased.sessions} open conversations, {erased.messages} stored messages"
    )
    return 0
