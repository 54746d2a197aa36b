"""Conversation states at the store boundary: every state survives a round trip, and a session
saved in the shape before typed states goes on where the teacher was."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from bot.core.types import StudentRef
from bot.deps import Deps
from handlers import states
from handlers.states import (
    Answering,
    ConfirmCut,
    ConfirmDiscard,
    ConfirmStudent,
    Conversation,
    Idle,
    Item,
    ItemKind,
    LastAction,
    Listing,
    ListKind,
    OpenDraft,
    Reviewing,
    StateName,
)
from storage.schema import conversations, staff, students, visits
from tests.conftest import ChatDriver, FakeClock

DRAFT = OpenDraft(
    7, StudentRef(3, "周小禾", "三年级1班"), states.freeze({"method": "电话"}), 2, ("method",)
)


STUDENTS = Listing(ListKind.STUDENTS, (Item(ItemKind.STUDENT, 5), Item(ItemKind.STUDENT, 1)), 1)
REMINDER = Listing(ListKind.REMINDER, (Item(ItemKind.STUDENT, 5), Item(ItemKind.FOLLOWUP, 9)), 2)
LAST = LastAction(ItemKind.FOLLOWUP, 9, datetime(2026, 3, 2, 1, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    "conversation",
    [
        Conversation(),
        Conversation(Idle(), STUDENTS),
        Conversation(Idle(), REMINDER, LAST),
        Conversation(Answering(DRAFT, "study"), None, LAST),
        Conversation(Reviewing(DRAFT), STUDENTS),
        Conversation(ConfirmStudent(StudentRef(3, "李浩然", "五年级3班"))),
        Conversation(ConfirmDiscard(DRAFT, "study")),
        Conversation(ConfirmDiscard(DRAFT, None)),
        Conversation(ConfirmCut("太长的备注", 620, DRAFT, "other")),
        Conversation(ConfirmCut("已送到", 700, followup=9, number=2), REMINDER),
    ],
)
def test_every_state_survives_the_store_boundary(conversation: Conversation) -> None:
    name, data, listing = states.dump(conversation)
    stored = json.loads(json.dumps(data, ensure_ascii=False))  # what the JSON column keeps
    shown = json.loads(json.dumps(listing)) if listing is not None else None
    assert states.load(name, stored, shown) == conversation
    assert name == conversation.state.name.value


def test_the_shape_before_typed_states_loads() -> None:
    old = {
        "visit": 7,
        "student": "周小禾（三年级1班）",
        "answers": {"method": "电话"},
        "hist": ["method"],
        "q": "study",
        "rev": 2,
        "fu": [2],
    }
    loaded = states.load("question", old)
    followups = Listing(ListKind.FOLLOWUPS, (Item(ItemKind.FOLLOWUP, 2),), 1)
    # (the student's id was never stored in that shape)
    assert loaded == Conversation(Answering(replace_id(DRAFT, 0), "study"), followups)
    chosen = states.load("choosing", {"choices": [5, 1], "fu": []})
    assert chosen == Conversation(Idle(), replace(STUDENTS, shown=2))
    assert states.load("summary", {**old, "q": None}).state == Reviewing(replace_id(DRAFT, 0))


@pytest.mark.parametrize(
    ("state", "data"),
    [("question", {"v": 2}), ("nonsense", {}), ("summary", {"visit": "x", "answers": []})],
)
def test_an_unreadable_session_starts_over_idle(state: str, data: dict[str, object]) -> None:
    assert states.load(state, data) == Conversation()


def replace_id(draft: OpenDraft, student_id: int) -> OpenDraft:
    s = draft.student
    return OpenDraft(
        draft.visit_id,
        StudentRef(student_id, s.name, s.class_name),
        draft.answers,
        draft.revision,
        draft.history,
    )


async def test_a_teacher_mid_visit_during_the_upgrade_goes_on(
    bot: ChatDriver, deps: Deps, clock: FakeClock
) -> None:
    """A session row written by the release before typed states, mid-visit, on a database."""
    now = clock.now()
    with deps.db.begin() as conn:
        zhou = conn.execute(select(students.c.id).where(students.c.name == "周小禾")).scalar_one()
        staff_id = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        visit = conn.execute(
            insert(visits)
            .values(
                student_id=zhou,
                staff_id=staff_id,
                form_id="home_visit",
                form_version="2026.1",
                status="draft",
                answers={"method": "电话"},
                started_at=now,
                updated_at=now,
            )
            .returning(visits.c.id)
        ).scalar_one()
        conn.execute(
            insert(conversations).values(
                channel="console",
                user_id="T001",
                state="question",
                data={
                    "visit": visit,
                    "student": "周小禾（三年级1班）",
                    "answers": {"method": "电话"},
                    "hist": ["method"],
                    "q": "study",
                },
                version=4,
                expires_at=None,
                updated_at=now,
            )
        )
    reply = await bot.say("1")  # study: 好
    assert "【第3题/共10题】周小禾（三年级1班）" in reply
    with deps.db.begin() as conn:
        answers = conn.execute(select(visits.c.answers)).scalar_one()
        row = conn.execute(select(conversations.c.state, conversations.c.data)).one()
    assert answers == {"method": "电话", "study": "好"}
    assert row.state == StateName.ANSWERING and row.data["v"] == 2
