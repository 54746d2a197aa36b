"""Screening: another department's list (民政, 残联 ...) matched against the roster.

A row matches the active student with its 学籍号, else the one active student of that name in
that school and class. Two students of one name in one class make the row ambiguous: it is
reported, never guessed. Applying adds the list's categories the matched students lack, with
the list's source and the time, in the caller's transaction (all or nothing), and one audit row.
Nothing is ever removed: a list says who is in a category, not who has left it.

No student name reaches a log line or an error message: problems quote only rows and columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from bot.core.aid import ScreenChange, ScreenMiss, ScreenReport
from bot.core.errors import RosterError
from storage import audit
from storage.db import Database
from storage.roster_files import COLUMN, ListRow, Origin, read_list
from storage.schema import schools, student_categories, students

MAX_SOURCE = 50
_OTHER_SCHOOL_ROW = "只能导入本校（{school}）的数据 / only rows of your own school ({school})"
_BAD_SOURCE = (
    "来源（--source）不能为空，最多 {n} 个字符，例如 民政 / "
    "the source (--source) must be 1 to {n} characters, e.g. 民政"
)


def check_source(source: str) -> str:
    source = source.strip()
    if not source or len(source) > MAX_SOURCE or source == "roster":
        raise RosterError([_BAD_SOURCE.format(n=MAX_SOURCE)])
    return source


def rows_to_json(rows: Sequence[ListRow]) -> list[dict[str, Any]]:
    """A preview's rows for the stash: the known columns only (never an identity card)."""
    return [
        {"source": r.origin.source, "row": r.origin.row, "values": dict(r.values)} for r in rows
    ]


def rows_from_json(data: Sequence[dict[str, Any]]) -> list[ListRow]:
    return [ListRow(Origin(d["source"], int(d["row"])), dict(d["values"])) for d in data]


def _where(origin: Origin) -> str:
    return f"{origin.source} 第{origin.row}行"


def screen_rows(
    conn: Connection,
    rows: Sequence[ListRow],
    source: str,
    *,
    now: datetime,
    apply: bool,
    actor: str = "cli",
    school: tuple[int, str] | None = None,
) -> ScreenReport:
    """Match `rows` (and, when `apply`, add the categories) inside the caller's transaction.

    `school` (id, name) limits a coordinator to their school: a row of another school, or one
    whose 学籍号 belongs to another school, raises `RosterError` naming it, before any write.
    """
    source = check_source(source)
    if school is not None:
        others = [
            f"{r.origin.at(COLUMN['school'].label)}: {_OTHER_SCHOOL_ROW.format(school=school[1])}"
            for r in rows
            if r.values.get("school") != school[1]
        ]
        if others:
            raise RosterError(others)
    found = conn.execute(
        select(
            students.c.id,
            students.c.student_no,
            students.c.name,
            students.c.class_name,
            students.c.school_id,
            schools.c.name.label("school"),
        )
        .join(schools, schools.c.id == students.c.school_id)
        .where(students.c.active.is_(True))
    ).all()
    by_no = {r.student_no: r for r in found}
    by_name: dict[tuple[str, str, str], list[Any]] = {}
    for r in found:
        by_name.setdefault((r.name, r.school, r.class_name), []).append(r)
    have: dict[int, set[str]] = {}
    for student_id, category in conn.execute(
        select(student_categories.c.student_id, student_categories.c.category)
    ):
        have.setdefault(student_id, set()).add(category)

    matched: dict[int, tuple[Any, list[str], list[str]]] = {}  # id -> (row, categories, where)
    ambiguous: list[ScreenMiss] = []
    unmatched: list[ScreenMiss] = []
    problems: list[str] = []
    for row in rows:
        v = row.values
        school_name, class_name = v.get("school") or "", v.get("class") or ""
        hit = by_no.get(v.get("student_no") or "")
        candidates = (
            [hit] if hit else by_name.get((v.get("name") or "", school_name, class_name), [])
        )
        if len(candidates) != 1:
            miss = ScreenMiss(_where(row.origin), school_name, class_name, len(candidates))
            (ambiguous if candidates else unmatched).append(miss)
            continue
        student = candidates[0]
        if school is not None and student.school_id != school[0]:
            problems.append(
                f"{row.origin.at(COLUMN['student_no'].label)}: "
                f"{_OTHER_SCHOOL_ROW.format(school=school[1])}"
            )
            continue
        _, cats, where = matched.setdefault(student.id, (student, [], []))
        cats.extend(c for c in row.categories() if c not in cats)
        where.append(_where(row.origin))
    if problems:
        raise RosterError(problems)

    changes: list[ScreenChange] = []
    unchanged = 0
    for student_id, (st, cats, where) in matched.items():
        current = have.get(student_id, set())
        added = tuple(c for c in cats if c not in current)
        if not added:
            unchanged += 1
            continue
        changes.append(
            ScreenChange(
                student_id,
                st.student_no,
                st.name,
                st.school,
                st.class_name,
                tuple(sorted(current)),
                added,
                tuple(where),
            )
        )
    changes.sort(key=lambda c: (c.school, c.class_name, c.student_no))
    report = ScreenReport(source, apply, len(rows), changes, unchanged, ambiguous, unmatched)
    if apply:
        _apply(conn, report, now, actor, school[0] if school else None)
    return report


def _apply(
    conn: Connection, report: ScreenReport, now: datetime, actor: str, school_id: int | None
) -> None:
    values = [
        {"student_id": c.student_id, "category": cat, "source": report.source, "since": now}
        for c in report.changes
        for cat in c.added
    ]
    if values:
        conn.execute(insert(student_categories), values)
    detail = {
        "source": report.source,
        "rows": report.rows,
        "students": len(report.changes),
        "categories": report.categories_added,
        "ambiguous": len(report.ambiguous),
        "unmatched": len(report.unmatched),
    }
    audit.record(
        conn,
        at=now,
        actor=actor,
        action="screen_import",
        detail=detail,
        school_id=school_id,
    )


def screen_files(
    db: Database, paths: Sequence[Path], source: str, *, now: datetime, apply: bool
) -> ScreenReport:
    """Read, check and match screening files (CLI); apply in one transaction. `RosterError`."""
    source = check_source(source)
    rows = read_list(paths)
    with db.begin() as conn:
        return screen_rows(conn, rows, source, now=now, apply=apply)
