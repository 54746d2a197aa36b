"""The check-in conversation's states: frozen values, serialized only at the store boundary.

    Idle ──a number or a name──▶ Answering ⇄ Reviewing ──提交──▶ Idle
      ▲   ╲──a near miss──▶ ConfirmStudent        │
      │                                           ├──放弃──▶ ConfirmDiscard ──确定删除──▶ Idle
      └──────────────────────取消 / 稍后───────────┘  (an over-long text: ConfirmCut)

`Answering` and `Reviewing` work on an `OpenDraft`: the session's copy of the draft visit (the
durable draft is the visit row, written after every answer; the copy saves a read per turn and
its `revision` tells the store when it is stale).

Besides its state a conversation keeps the *current list*: the last numbered list the teacher
was shown (their students, their follow-ups, a reminder's items, their drafts). A bare number or
`完成 N` always refers to it, so one number never means two things. A reminder sets it when it is
delivered (the outbox copies the list onto the session), which is why it is stored in a column of
its own (`Session.listing`), not inside the state. And `last` remembers the last 完成 or
submission, which `撤销` can take back for a while.

A session row stores `state` (a `StateName`), `data` (JSON) and `listing` (JSON). `load` reads
the current shape (`"v": 2`) and the shape sessions had before it (flat keys, a label for the
student), so a teacher in the middle of a visit during an upgrade goes on where they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from bot.core.types import StudentRef

FORMAT = 2


class StateName(StrEnum):
    IDLE = "idle"
    CHOOSING = "choosing"  # (sessions saved before the current list existed)
    ANSWERING = "question"  # a question of the form is waiting for its answer
    REVIEWING = "summary"  # every question is answered; the summary waits for 提交
    CONFIRM_STUDENT = "confirm_student"  # "你是说 李浩然（五年级3班）吗？"
    CONFIRM_DISCARD = "confirm_discard"  # "确定删除已填的4题吗？"
    CONFIRM_CUT = "confirm_cut"  # a text over its limit: keep the first N characters?
    CHECKING = "checking"  # a new visit first asks about the student's earlier follow-ups


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
class Answering:
    draft: OpenDraft
    question: str  # the key of the question asked
    name = StateName.ANSWERING


@dataclass(frozen=True, slots=True)
class Reviewing:
    draft: OpenDraft
    name = StateName.REVIEWING


@dataclass(frozen=True, slots=True)
class ConfirmStudent:
    student: StudentRef
    name = StateName.CONFIRM_STUDENT


@dataclass(frozen=True, slots=True)
class ConfirmDiscard:
    draft: OpenDraft
    question: str | None  # where to go back to: this question, or the summary when None
    name = StateName.CONFIRM_DISCARD


@dataclass(frozen=True, slots=True)
class ConfirmCut:
    """A text over its limit: `确定` keeps `text` (already cut to the limit).

    For an answer, `draft` and `question` say where it goes; for a 完成 note, `followup` (the
    id) and `number` (as the teacher wrote it)."""

    text: str
    length: int  # how long the teacher's text was
    draft: OpenDraft | None = None
    question: str = ""
    followup: int = 0
    number: int = 0
    name = StateName.CONFIRM_CUT


@dataclass(frozen=True, slots=True)
class Check:
    """An earlier follow-up to ask about: its kind, detail, and the local date it was done on
    (None: still open) with the note."""

    followup: int
    kind: str
    detail: str
    done_on: date | None = None
    note: str = ""
    item: str = ""  # an aid item allocated against it (#15): asked whether it is in use
    allocation: int = 0


@dataclass(frozen=True, slots=True)
class Checking:
    """Before the form's first question: `checks[0]` waits for 已解决 or 仍需帮助."""

    draft: OpenDraft
    checks: tuple[Check, ...]
    name = StateName.CHECKING


State = Idle | Answering | Reviewing | ConfirmStudent | ConfirmDiscard | ConfirmCut | Checking
InVisit = Answering | Reviewing


class ListKind(StrEnum):
    STUDENTS = "students"
    FOLLOWUPS = "followups"
    REMINDER = "reminder"
    DRAFTS = "drafts"
    ESCALATIONS = "escalations"  # a coordinator's 上报 / 逾期 list, or an escalation message
    AID = "aid"  # 库存: the open needs each aid item can meet (#15)
    REVIEWS = "reviews"  # a coordinator's 待认定 list


class ItemKind(StrEnum):
    STUDENT = "student"
    FOLLOWUP = "followup"
    AID_NEED = "aid_need"  # id: follow-up id * AID_SLOT + the item's place in the aid items
    REVIEW = "review"


AID_SLOT = 100  # config.aid refuses more than 99 item kinds


# `StateName(x)` is a Python-level call through EnumMeta; a dict lookup is what every turn needs.
_STATE_NAMES = {s.value: s for s in StateName}
_LIST_KINDS = {k.value: k for k in ListKind}
_ITEM_KINDS = {k.value: k for k in ItemKind}


@dataclass(frozen=True, slots=True)
class Item:
    kind: ItemKind
    id: int


@dataclass(frozen=True, slots=True)
class Listing:
    """The current list: every item in the order it is numbered, and how many were shown so far
    (a long list is shown a page at a time: `更多`)."""

    kind: ListKind
    items: tuple[Item, ...]
    shown: int = 0
    # The session column this listing was loaded from: saved as it was when the turn left the
    # listing alone (most turns). Not an init field, so a `replace` never carries it over.
    raw: dict[str, Any] | None = field(default=None, init=False, compare=False, repr=False)

    def item(self, number: int) -> Item | None:
        """Item `number` (1-based) if it was shown to the teacher."""
        return self.items[number - 1] if 1 <= number <= min(self.shown, len(self.items)) else None


@dataclass(frozen=True, slots=True)
class LastAction:
    """The last 完成 or submission, for `撤销`."""

    kind: ItemKind  # FOLLOWUP: a 完成; STUDENT: a submitted visit
    id: int  # the follow-up or the visit
    at: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    state: State = field(default_factory=Idle)
    listing: Listing | None = None
    last: LastAction | None = None


def freeze(answers: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a copy: a state's answers cannot change behind the store's back."""
    return MappingProxyType(dict(answers))


# ---------------------------------------------------------------------------- the store boundary
def dump(conversation: Conversation) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """The session row's `state`, `data` and `listing` for this conversation."""
    state = conversation.state
    data: dict[str, Any] = {"v": FORMAT}
    if conversation.last is not None:
        last = conversation.last
        data["last"] = {"kind": last.kind.value, "id": last.id, "at": last.at.isoformat()}
    match state:
        case Answering(draft=draft, question=question):
            data["draft"] = _dump_draft(draft)
            data["question"] = question
        case Reviewing(draft=draft):
            data["draft"] = _dump_draft(draft)
        case ConfirmStudent(student=s):
            data["student"] = {"id": s.id, "name": s.name, "class": s.class_name}
        case ConfirmDiscard(draft=draft, question=question):
            data["draft"] = _dump_draft(draft)
            data["question"] = question
        case Checking(draft=draft, checks=checks):
            data["draft"] = _dump_draft(draft)
            data["checks"] = [
                [
                    k.followup,
                    k.kind,
                    k.detail,
                    k.done_on.isoformat() if k.done_on else None,
                    k.note,
                    k.item,
                    k.allocation,
                ]
                for k in checks
            ]
        case ConfirmCut():
            data["cut"] = {
                "text": state.text,
                "length": state.length,
                "question": state.question,
                "followup": state.followup,
                "number": state.number,
            }
            if state.draft is not None:
                data["draft"] = _dump_draft(state.draft)
    listing = dump_listing(conversation.listing) if conversation.listing else None
    return state.name.value, data, listing


def dump_listing(listing: Listing) -> dict[str, Any]:
    if listing.raw is not None:
        return listing.raw
    return {
        "kind": listing.kind.value,
        "items": [[i.kind.value, i.id] for i in listing.items],
        "shown": listing.shown,
    }


def _dump_draft(d: OpenDraft) -> dict[str, Any]:
    return {
        "visit": d.visit_id,
        "student": {"id": d.student.id, "name": d.student.name, "class": d.student.class_name},
        "answers": dict(d.answers),
        "revision": d.revision,
        "history": list(d.history),
    }


def load(
    state: str, data: Mapping[str, Any], listing: Mapping[str, Any] | None = None
) -> Conversation:
    """The conversation a session row holds; what this code cannot read starts over idle."""
    try:
        current = _load_listing(listing) if listing else None
    except (KeyError, TypeError, ValueError):
        current = None
    try:
        if data.get("v") == FORMAT:
            return Conversation(_load_state(_STATE_NAMES[state], data), current, _load_last(data))
        old = _load_before_v2(_STATE_NAMES[state], data)
        # (a session the outbox created to hold a delivered list has no data yet: its list is
        # the `listing` column's)
        return old if old.listing is not None else replace(old, listing=current)
    except (KeyError, TypeError, ValueError):
        return Conversation(Idle(), current)


def _load_listing(raw: Mapping[str, Any]) -> Listing:
    kinds = _ITEM_KINDS
    items = tuple([Item(kinds[kind], int(i)) for kind, i in raw["items"]])
    listing = Listing(_LIST_KINDS[raw["kind"]], items, int(raw.get("shown", len(items))))
    if isinstance(raw, dict):
        object.__setattr__(listing, "raw", raw)  # (frozen)
    return listing


def _load_last(data: Mapping[str, Any]) -> LastAction | None:
    raw = data.get("last")
    if not raw:
        return None
    return LastAction(_ITEM_KINDS[raw["kind"]], int(raw["id"]), datetime.fromisoformat(raw["at"]))


def _load_state(name: StateName, data: Mapping[str, Any]) -> State:
    match name:
        case StateName.ANSWERING:
            return Answering(_load_draft(data["draft"]), str(data["question"]))
        case StateName.REVIEWING:
            return Reviewing(_load_draft(data["draft"]))
        case StateName.CONFIRM_STUDENT:
            return ConfirmStudent(_load_student(data["student"]))
        case StateName.CONFIRM_DISCARD:
            question = data.get("question")
            return ConfirmDiscard(_load_draft(data["draft"]), str(question) if question else None)
        case StateName.CHECKING:
            checks = tuple(
                Check(
                    int(i),
                    str(k),
                    str(d),
                    date.fromisoformat(on) if on else None,
                    str(n),
                    str(aid[0]) if aid else "",
                    int(aid[1]) if aid else 0,
                )
                for i, k, d, on, n, *aid in data["checks"]
            )
            return Checking(_load_draft(data["draft"]), checks) if checks else Idle()
        case StateName.CONFIRM_CUT:
            cut = data["cut"]
            draft = _load_draft(data["draft"]) if "draft" in data else None
            return ConfirmCut(
                str(cut["text"]),
                int(cut["length"]),
                draft,
                str(cut["question"]),
                int(cut["followup"]),
                int(cut["number"]),
            )
    return Idle()


def _load_student(raw: Mapping[str, Any]) -> StudentRef:
    return StudentRef(int(raw["id"]), str(raw["name"]), str(raw["class"]))


def _load_draft(raw: Mapping[str, Any]) -> OpenDraft:
    return OpenDraft(
        int(raw["visit"]),
        _load_student(raw["student"]),
        freeze(raw["answers"]),
        int(raw["revision"]),
        tuple(map(str, raw["history"])),
    )


def _load_before_v2(name: StateName, data: Mapping[str, Any]) -> Conversation:
    """Sessions saved before typed states: flat keys (`visit`, `student` as the label
    "name（class）", `answers`, `hist`, `q`, `choices`, `fu`, and `rev` from the release that
    added draft revisions). Its numbered lists become the current list."""
    listing = None
    if name is StateName.CHOOSING and data.get("choices"):
        ids = tuple(Item(ItemKind.STUDENT, int(i)) for i in data["choices"])
        listing = Listing(ListKind.STUDENTS, ids, len(ids))
    elif data.get("fu"):
        ids = tuple(Item(ItemKind.FOLLOWUP, int(i)) for i in data["fu"])
        listing = Listing(ListKind.FOLLOWUPS, ids, len(ids))
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
            return Conversation(Answering(draft, str(data["q"])), listing)
        return Conversation(Reviewing(draft), listing)
    return Conversation(Idle(), listing)
