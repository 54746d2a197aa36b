"""Each prepared statement of the per-message path returns exactly what SQLAlchemy returns.

`storage.fastsql` runs SQLAlchemy-compiled statements on the driver's cursor, reaching into
compiler attributes that are not public API; this is the test that says when a SQLAlchemy upgrade
changed them (pyproject bounds the version for the same reason).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import select

from bot.core.types import ConversationKey, NewFollowUp, Session
from bot.deps import Deps
from storage import store as sql
from storage.fastsql import Prepared
from storage.schema import staff, students, visits
from storage.store import SqlStore
from tests.conftest import FakeClock


@pytest.fixture
def ids(deps: Deps, clock: FakeClock) -> dict[str, int]:
    """T001: a submitted visit of 周小禾 (two follow-ups), an open draft of 陈小树, a session."""
    now = clock.now()
    with deps.db.begin() as conn:
        t001 = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        by_name = {r.name: r.id for r in conn.execute(select(students.c.name, students.c.id))}
        store = SqlStore(conn)
        done = store.start_visit(t001, by_name["周小禾"], "home_visit", "1", now)
        needs = [
            NewFollowUp("device", "平板", date(2026, 3, 9)),
            NewFollowUp("food", "米面", date(2026, 3, 5)),
        ]
        store.submit_visit(done, 0, {"method": "电话"}, "电话", True, needs, now)
        draft = store.start_visit(t001, by_name["陈小树"], "home_visit", "1", now)
        store.save_answers(draft, {"method": "微信视频", "study": "好"}, 0, now)
        store.save_session(ConversationKey("api", "T001"), Session("question", {"v": 2}), now)
    return {"staff_id": t001, "student_id": by_name["陈小树"], "visit_id": draft}


def both(conn: Any, prepared: Prepared, params: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    fast, _ = prepared.execute(conn, params)
    slow = conn.execute(prepared.stmt, params).all()
    return fast, slow


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("_FAST_SESSION", {"channel": "api", "user_id": "T001"}),
        ("_FAST_MY_STUDENTS", {}),
        ("_FAST_LATEST_DRAFT", {}),
        ("_FAST_STUDENT_AND_DRAFT", {}),
    ],
)
def test_a_prepared_read_returns_what_sqlalchemy_returns(
    deps: Deps, ids: dict[str, int], name: str, params: dict[str, Any]
) -> None:
    prepared: Prepared = getattr(sql, name)
    with deps.db.begin() as conn:
        fast, slow = both(conn, prepared, {**ids, **params})
    assert fast and [tuple(r) for r in fast] == [tuple(r) for r in slow]
    for f, s in zip(fast, slow, strict=True):  # named like SQLAlchemy's rows
        assert f._asdict() == s._asdict()


def test_the_next_visits_follow_ups_read_prepared_as_sqlalchemy_reads_them(
    deps: Deps, ids: dict[str, int]
) -> None:
    with deps.db.begin() as conn:
        zhou = conn.execute(select(students.c.id).where(students.c.name == "周小禾")).scalar_one()
        fast, slow = both(conn, sql._FAST_FOLLOWUPS_TO_CHECK, {"student_id": zhou})
    assert len(fast) == 2 and [tuple(r) for r in fast] == [tuple(r) for r in slow]
    assert [f._asdict() for f in fast] == [s._asdict() for s in slow]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("_FAST_SAVE_ANSWERS", {"answers": {"study": "差"}, "revision": 1}),
        ("_FAST_SUBMIT", {"answers": {}, "revision": 1, "method": "电话", "reached": True}),
        ("_FAST_START_VISIT", {"form_id": "f", "form_version": "1", "answers": {}}),
    ],
)
def test_a_prepared_write_changes_and_returns_what_sqlalchemy_does(
    deps: Deps, ids: dict[str, int], clock: FakeClock, name: str, params: dict[str, Any]
) -> None:
    prepared: Prepared = getattr(sql, name)
    values = {**ids, **params, "now": clock.now()}
    outcomes = []
    for run in ("fast", "slow"):
        conn = deps.db.engine.connect()
        try:
            with conn.begin() as tx:
                if run == "fast":
                    rows, count = prepared.execute(conn, values)
                else:
                    result = conn.execute(prepared.stmt, values)  # type: ignore[call-overload]
                    rows = result.all() if result.returns_rows else []
                    count = len(rows) if result.returns_rows else result.rowcount
                # (pysqlite counts an UPDATE ... RETURNING only once its rows are read)
                after = conn.execute(
                    select(visits.c.status, visits.c.answers, visits.c.revision).where(
                        visits.c.id == ids["visit_id"]
                    )
                ).one()
                outcomes.append(([tuple(r) for r in rows], count, tuple(after)))
                tx.rollback()
        finally:
            conn.close()
    fast, slow = outcomes
    assert fast[1] == 1
    if name == "_FAST_START_VISIT":  # a new id each time: compare the shape only
        assert len(fast[0]) == len(slow[0]) == 1
    else:
        assert fast == slow
