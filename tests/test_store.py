"""`SqlStore` holding the writes that end a turn (PostgreSQL) and sending them as one statement.

The conversation tests run every turn through this path; these check its edges directly: what a
held write answers, when held writes go out, and what `flush` raises when one did not apply.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from bot.core.errors import ConcurrentUpdate, DuplicateMessage
from bot.core.types import ConversationKey, Session
from bot.deps import Deps
from storage.fastsql import Prepared
from storage.schema import conversations, inbound_messages, students, visits
from storage.store import HeldWriteMissed, SqlStore
from tests.conftest import FakeClock

KEY = ConversationKey("api", "T001")


def _draft(deps: Deps, now: datetime, pick: Callable[[list[int]], int] = min) -> int:
    """A new draft visit by T001 of one of their students (`pick` of the ids); its id."""
    with deps.db.begin() as conn:
        store = SqlStore(conn)
        staff = store.find_staff("api", "T001")
        assert staff is not None
        student = pick([s.id for s in store.my_students(staff.id)])
        return store.start_visit(staff.id, student, "home_visit", "1", now)


def _setup(deps: Deps, now: datetime) -> int:
    """A draft visit of T001's first student and a saved session; returns the visit id."""
    visit_id = _draft(deps, now)
    with deps.db.begin() as conn:
        SqlStore(conn).save_session(KEY, Session(state="question", data={"visit": visit_id}), now)
    return visit_id


def _visit_answers(deps: Deps, visit_id: int) -> object:
    with deps.db.begin() as conn:
        return conn.execute(select(visits.c.answers).where(visits.c.id == visit_id)).scalar_one()


@contextmanager
def round_trips(conn: Connection) -> Iterator[list[int]]:
    """Count the round trips to PostgreSQL in libpq's own protocol trace (read on exit)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    counted: list[int] = []
    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        try:
            yield counted
        finally:
            raw.pgconn.untrace()  # flushes libpq's buffer
            trace.seek(0)
            counted.append(sum(1 for line in trace if "ReadyForQuery" in line))


ONLY_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@ONLY_POSTGRESQL  # (SQLite holds nothing)
async def test_held_writes_apply_and_reads_see_them(deps: Deps, clock: FakeClock) -> None:
    now = clock.now()
    visit_id = _setup(deps, now)
    with deps.db.begin() as conn:
        store = SqlStore(conn, hold_writes=True)
        session = store.load_session(KEY)
        assert session is not None
        assert store.save_answers(visit_id, {"method": "电话"}, 0, now) is True
        # a read in the same turn comes after the write, as it would without holding
        staff = store.find_staff("api", "T001")
        assert staff is not None
        draft = store.find_draft(staff.id)
        assert draft is not None and draft.answers == {"method": "电话"}
        store.save_session(KEY, session, now)
        store.remember_message("api", "T001", "m-1", ["ok"], now)
        store.flush()
    assert _visit_answers(deps, visit_id) == {"method": "电话"}
    with deps.db.begin() as conn:
        assert conn.execute(select(conversations.c.version)).scalar_one() == 2
        assert SqlStore(conn).seen_message("api", "T001", "m-1") == ["ok"]


@ONLY_POSTGRESQL
async def test_two_writes_of_one_kind_are_not_merged(deps: Deps, clock: FakeClock) -> None:
    now = clock.now()
    first, second = _draft(deps, now, min), _draft(deps, now, max)
    with deps.db.begin() as conn:
        store = SqlStore(conn, hold_writes=True)
        with round_trips(conn) as trips:
            store.save_answers(first, {"method": "电话"}, 0, now)
            store.save_answers(second, {"method": "微信视频"}, 0, now)  # sends the first
            store.flush()
    assert trips == [3]  # BEGIN, then each write in its own statement
    assert _visit_answers(deps, first) == {"method": "电话"}
    assert _visit_answers(deps, second) == {"method": "微信视频"}


@ONLY_POSTGRESQL
async def test_an_answer_turn_sends_its_three_writes_in_one_round_trip(
    deps: Deps, clock: FakeClock
) -> None:
    now = clock.now()
    visit_id = _setup(deps, now)
    with deps.db.begin() as conn:
        store = SqlStore(conn, hold_writes=True)
        session = store.load_session(KEY)
        assert session is not None
        with round_trips(conn) as holding:
            store.save_answers(visit_id, {"method": "电话"}, 0, now)
            store.save_session(KEY, session, now)
            store.remember_message("api", "T001", "m-1", ["ok"], now)
        with round_trips(conn) as flushing:
            store.flush()
    assert holding == [0] and flushing == [1]
    assert _visit_answers(deps, visit_id) == {"method": "电话"}


async def test_flush_raises_when_the_draft_was_closed_meanwhile(
    deps: Deps, clock: FakeClock, db_url: str
) -> None:
    now = clock.now()
    visit_id = _setup(deps, now)
    with deps.db.begin() as conn:
        SqlStore(conn).discard_visit(visit_id, now)
    with deps.db.begin() as conn:
        store = SqlStore(conn, hold_writes=True)
        if db_url.startswith("postgresql"):
            assert store.save_answers(visit_id, {"method": "电话"}, 0, now) is True  # optimistic
            with pytest.raises(HeldWriteMissed):
                store.flush()
        else:  # SQLite holds nothing: the answer is exact at once
            assert store.save_answers(visit_id, {"method": "电话"}, 0, now) is False
    with deps.db.begin() as conn:
        assert SqlStore(conn).save_answers(visit_id, {"method": "电话"}, 0, now) is False


async def test_flush_raises_on_a_known_message_id(deps: Deps, clock: FakeClock) -> None:
    now = clock.now()
    _setup(deps, now)
    with deps.db.begin() as conn:
        SqlStore(conn).remember_message("api", "T001", "m-1", ["first"], now)
    with pytest.raises(DuplicateMessage), deps.db.begin() as conn:
        store = SqlStore(conn, hold_writes=True)
        store.remember_message("api", "T001", "m-1", ["second"], now)  # SQLite: raises here
        store.flush()  # PostgreSQL: here
    with deps.db.begin() as conn:
        assert conn.execute(select(inbound_messages.c.replies)).scalar_one() == ["first"]


async def test_flush_raises_on_a_stale_session_version(deps: Deps, clock: FakeClock) -> None:
    now = clock.now()
    _setup(deps, now)
    with pytest.raises(ConcurrentUpdate), deps.db.begin() as conn:
        store = SqlStore(conn, hold_writes=True)
        store.save_session(KEY, Session(state="idle", version=7), now)
        store.flush()
    with deps.db.begin() as conn:
        assert conn.execute(select(conversations.c.state)).scalar_one() == "question"


def test_a_statement_sqlalchemy_completes_late_is_refused(deps: Deps) -> None:
    prepared = Prepared(select(students.c.id).where(students.c.id.in_([1, 2])))
    with pytest.raises(ValueError, match="cannot prepare"), deps.db.begin() as conn:
        prepared.execute(conn, {})
