"""The `homevisit` command line (also `python -m bot`).

Exit status 0 on success; on bad input one line per problem on stderr naming the file, row,
column or variable, a non-zero status, and nothing half-written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from bot.core.errors import ConfigError, HomevisitError, RosterError, StorageUnavailable
from bot.logsafe import configure_logging
from config.settings import Settings, load_settings

log = logging.getLogger("homevisit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homevisit", description="家访助手 homevisit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP server (all configured channels)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)

    sub.add_parser("demo", help="create the database if needed and load a demo roster")

    chat = sub.add_parser("chat", help="talk to the bot in the terminal as a staff member")
    chat.add_argument("--user", required=True, metavar="STAFF_NO", help="工号 staff number")

    roster = sub.add_parser("roster", help="roster files")
    roster_sub = roster.add_subparsers(dest="roster_command", required=True, metavar="ACTION")
    imp = roster_sub.add_parser("import", help="import .xlsx or CSV roster files, all or nothing")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument("--dry-run", action="store_true", help="check and report, change nothing")

    screen = sub.add_parser("screen", help="screening lists of other departments (民政, 残联)")
    screen_sub = screen.add_subparsers(dest="screen_command", required=True, metavar="ACTION")
    scr = screen_sub.add_parser("import", help="match a list against the roster; report only")
    scr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    scr.add_argument("--source", required=True, metavar="NAME", help="the list's department")
    scr.add_argument("--apply", action="store_true", help="add the matched categories")

    export = sub.add_parser("export", help="export visits and follow-ups")
    export.add_argument("--out", required=True, type=Path, metavar="FILE")
    export.add_argument("--format", choices=("csv", "xlsx"), default=None)
    export.add_argument("--since", type=_parse_date, default=None, metavar="YYYY-MM-DD")
    export.add_argument(
        "--include-sensitive",
        action="store_true",
        help="include sensitive answers and notes (audited; needs --user and --reason)",
    )
    export.add_argument("--reason", default="", metavar="TEXT", help="why sensitive data is needed")
    export.add_argument(
        "--user",
        default=None,
        metavar="STAFF_NO",
        help="工号 of the coordinator or bureau member exporting (limits it to their scope)",
    )

    for name, text in (
        ("remind", "run the teacher-reminder job once"),
        ("digest", "run the coordinator-digest job once"),
    ):
        job = sub.add_parser(name, help=f"{text}, as if at --at (default now)")
        job.add_argument("--at", type=_parse_time, default=None, metavar="ISO8601")

    console = sub.add_parser("console", help="the coordinators' web console")
    console_sub = console.add_subparsers(dest="console_command", required=True, metavar="ACTION")
    link = console_sub.add_parser("link", help="print a one-time sign-in URL (valid 15 minutes)")
    link.add_argument("--user", required=True, metavar="STAFF_NO", help="工号 of a coordinator")

    student = sub.add_parser("student", help="one student's data (access request, erasure)")
    student_sub = student.add_subparsers(dest="student_command", required=True, metavar="ACTION")
    s_export = student_sub.add_parser("export", help="write everything held about one student")
    s_export.add_argument("student_no", metavar="STUDENT_NO", help="学籍号")
    s_export.add_argument("--out", required=True, type=Path, metavar="FILE")
    s_erase = student_sub.add_parser("erase", help="remove everything about one student")
    s_erase.add_argument("student_no", metavar="STUDENT_NO", help="学籍号")
    s_erase.add_argument("--reason", required=True, metavar="TEXT")

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_sub.add_parser("verify", help="check the hash chain; non-zero exit when broken")

    bind = sub.add_parser("bind", help="binding chat identities to staff members")
    bind_sub = bind.add_subparsers(dest="bind_command", required=True, metavar="ACTION")
    bind_code = bind_sub.add_parser("code", help="print a one-time binding code (valid 72 hours)")
    bind_code.add_argument("--user", required=True, metavar="STAFF_NO", help="工号 of the teacher")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply database migrations")
    backup = db_sub.add_parser("backup", help="a consistent copy of the live SQLite database")
    backup.add_argument("--out", required=True, type=Path, metavar="FILE")
    restore = db_sub.add_parser("restore", help="replace a SQLite database not in use by a backup")
    restore.add_argument("file", type=Path, metavar="FILE")
    return parser


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.command == "serve" else logging.WARNING
    configure_logging(level)  # text until the settings say otherwise
    try:
        settings = load_settings()
        configure_logging(level, settings.log_format)
        return _run(args, settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"homevisit: configuration error: {problem}", file=sys.stderr)
        return 2
    except RosterError as exc:
        for problem in exc.problems:
            print(f"homevisit: {problem}", file=sys.stderr)
        return 1
    except StorageUnavailable as exc:
        print(f"homevisit: the database does not answer ({exc})", file=sys.stderr)
        return 1
    except HomevisitError as exc:
        print(f"homevisit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`homevisit export ... | head`): stop quietly, and keep Python
        # from failing again when it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        # Nobody expected this: one line with the error's type and where it was raised, never
        # its message (it may quote a student's data) nor a traceback on an operator's screen.
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(
            f"homevisit: unexpected error {type(exc).__name__} "
            f"({Path(where.filename).name}:{where.lineno}); nothing more was done",
            file=sys.stderr,
        )
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot import commands

    match args.command:
        case "serve":
            return commands.serve(settings, args.host, args.port)
        case "demo":
            return commands.demo(settings)
        case "chat":
            return commands.chat(settings, args.user)
        case "roster":
            return commands.roster_import(settings, args.files, dry_run=args.dry_run)
        case "screen":
            return commands.screen_import(settings, args.files, args.source, apply=args.apply)
        case "export":
            fmt: Literal["csv", "xlsx"] = args.format or (
                "xlsx" if args.out.suffix.lower() == ".xlsx" else "csv"
            )
            return commands.export(
                settings,
                args.out,
                fmt,
                args.since,
                include_sensitive=args.include_sensitive,
                reason=args.reason.strip(),
                user=args.user,
            )
        case "remind" | "digest":
            return commands.run_job(settings, args.command, args.at)
        case "console":
            return commands.console_link(settings, args.user)
        case "student" if args.student_command == "export":
            return commands.student_export(settings, args.student_no, args.out)
        case "student":
            return commands.student_erase(settings, args.student_no, args.reason)
        case "audit":
            return commands.audit_verify(settings)
        case "db" if args.db_command == "backup":
            return commands.db_backup(settings, args.out)
        case "db" if args.db_command == "restore":
            return commands.db_restore(settings, args.file)
        case "bind":
            return commands.bind_code(settings, args.user)
        case "db":
            return commands.db_upgrade(settings)
    raise AssertionError(args.command)
