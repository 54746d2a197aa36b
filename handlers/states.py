"""The check-in conversation's states: frozen values, serialized only at the store boundary.

    Idle ──家访──▶ Choosing ──a number or a name──▶ Answering ⇄ Reviewing ──提交/放弃──▶ Idle

`Answering` and `Reviewing` work on an `OpenDraft`: the session's copy of the draft visit (the
durable draft is the visit row, written after every answer; the copy saves a read per turn and
its `revision` tells the store when it is stale). `Conversation` adds what outlives any one
state: the numbering of the last 待跟进 list, which `完成 N` refers to.

A session row stores `state` (a `StateName`) and `data` (JSON). `load` reads the current shape
(`"v": 2`) and the shape sessions had before it (flat keys, a label for the student), so a
teacher in the middle of a visit during an upgrade goes on where they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from bot.core.types import StudentRef

FORMAT = 2


class StateName(StrEnum):
    IDLE = "idle"
    CHOOSING = "choosing"  # a numbered list of students was shown
    ANSWERING = "question"  # a question of the form is waiting for its answer
    REVIEWING = "summary"  # every question is answered; the summary waits for 提交


@dataclass(frozen=True, slots=True)
class OpenDraft:
    visit_id: int
    student: StudentRef
    answers: Mapping[str, Any]
    revision: int = 0
    history: tuple[str, ...] = ()  # questions answered in this session, for 上一题

    def with_answers(self, answers: Mapping[str, Any], revision: int) -> OpenDraft:
        return OpenDraft(self.visit_id, self.student, freeze(answers), revision, self.history)


@dataclass(frozen=True, slots=True)
class Idle:
    name = StateName.IDLE


@dataclass(frozen=True, slots=True)
class Choosing:
    choices: tuple[int, ...]  # student ids, in the order they were numbered
    name = StateName.CHOOSING


@dataclass(frozen=True, slots=True)
class Answering:
    draft: OpenDraft
    question: str  # the key of the question asked
    name = StateName.ANSWERING


@dataclass(frozen=True, slots=True)
class Reviewing:
    draft: OpenDraft
    name = StateName.REVIEWING


State = Idle | Choosing | Answering | Reviewing
InVisit = Answering | Reviewing


@dataclass(frozen=True, slots=True)
class Conversation:
    state: State = field(default_factory=Idle)
    followups: tuple[int, ...] = ()  # follow-up ids as the last 待跟进 list numbered them


def freeze(answers: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a copy: a state's answers cannot change behind the store's back."""
    return MappingProxyType(dict(answers))


# ---------------------------------------------------------------------------- the store boundary
def dump(conversation: Conversation) -> tuple[str, dict[str, Any]]:
    """The session row's `state` and `data` for this conversation."""
    state = conversation.state
    data: dict[str, Any] = {"v": FORMAT}
    if conversation.followups:
        data["followups"] = list(conversation.followups)
    match state:
        case Choosing(choices=choices):
            data["choices"] = list(choices)
        case Answering(draft=draft, question=question):
            data["draft"] = _dump_draft(draft)
            data["question"] = question
        case Reviewing(draft=draft):
            data["draft"] = _dump_draft(draft)
    return state.name.value, data


def _dump_draft(d: OpenDraft) -> dict[str, Any]:
    return {
        "visit": d.visit_id,
        "student": {"id": d.student.id, "name": d.student.name, "class": d.student.class_name},
        "answers": dict(d.answers),
        "revision": d.revision,
        "history": list(d.history),
    }


def load(state: str, data: Mapping[str, Any]) -> Conversation:
    """The conversation a session row holds; a row this code cannot read starts over idle."""
    try:
        if data.get("v") == FORMAT:
            return _load_current(StateName(state), data)
        return _load_before_v2(StateName(state), data)
    except (KeyError, TypeError, ValueError):
        return Conversation()


def _load_current(name: StateName, data: Mapping[str, Any]) -> Conversation:
    followups = tuple(int(i) for i in data.get("followups", ()))
    match name:
        case StateName.CHOOSING:
            return Conversation(Choosing(tuple(int(i) for i in data["choices"])), followups)
        case StateName.ANSWERING:
            draft = _load_draft(data["draft"])
            return Conversation(Answering(draft, str(data["question"])), followups)
        case StateName.REVIEWING:
            return Conversation(Reviewing(_load_draft(data["draft"])), followups)
    return Conversation(Idle(), followups)


def _load_draft(raw: Mapping[str, Any]) -> OpenDraft:
    student = raw["student"]
    return OpenDraft(
        int(raw["visit"]),
        StudentRef(int(student["id"]), str(student["name"]), str(student["class"])),
        freeze(raw["answers"]),
        int(raw["revision"]),
        tuple(str(k) for k in raw["history"]),
    )


def _load_before_v2(name: StateName, data: Mapping[str, Any]) -> Conversation:
    """Sessions saved before typed states: flat keys (`visit`, `student` as the label
    "name（class）", `answers`, `hist`, `q`, `choices`, `fu`, and `rev` from the release that
    added draft revisions)."""
    followups = tuple(int(i) for i in data.get("fu", ()))
    if name is StateName.CHOOSING:
        return Conversation(Choosing(tuple(int(i) for i in data.get("choices", ()))), followups)
    if name in (StateName.ANSWERING, StateName.REVIEWING):
        label = str(data["student"])
        student_name, _, rest = label.partition("（")
        draft = OpenDraft(
            int(data["visit"]),
            StudentRef(0, student_name, rest.removesuffix("）")),  # (its id was not kept)
            freeze(data["answers"]),
            int(data.get("rev", 0)),
            tuple(str(k) for k in data.get("hist", ())),
        )
        if name is StateName.ANSWERING:
            return Conversation(Answering(draft, str(data["q"])), followups)
        return Conversation(Reviewing(draft), followups)
    return Conversation(Idle(), followups)
