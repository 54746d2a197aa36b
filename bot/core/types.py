"""Values that cross a boundary: frozen, small and free of any platform detail."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from bot.core.text import md


class MessageKind(StrEnum):
    TEXT = "text"
    EVENT = "event"  # the user opened the app / followed the bot
    UNSUPPORTED = "unsupported"  # picture, voice, file, location ...


class StaffRole(StrEnum):
    TEACHER = "teacher"
    COORDINATOR = "coordinator"
    BUREAU = "bureau"


class VisitStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    DISCARDED = "discarded"


class FollowUpStatus(StrEnum):
    OPEN = "open"
    DONE = "done"
    ESCALATED = "escalated"


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One conversation: a platform user on one channel."""

    channel: str
    user_id: str


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# What a chat message loses at the boundary, before anything matches or stores it:
# - control characters but tab and line breaks (NUL is refused by PostgreSQL, and no control
#   character can be written to XML: a WeCom reply or an xlsx export would break on it);
# - U+FFFE and U+FFFF, which XML 1.0 cannot carry either;
# - invisible format characters (Unicode category Cf: zero-width space, BOM, the bidirectional
#   overrides that make text read backwards), so that "\u202e家访\u200b" is the command 家访
#   and a note cannot hide or reorder what a coordinator reads. The zero-width joiner (U+200D)
#   stays: emoji are built with it.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200c"
    "\u200e-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def clean_input(value: str) -> str:
    """Text as it enters from a platform: half an emoji (a lone surrogate, which JSON's \\ud83d
    escapes allow and no database driver can encode) becomes U+FFFD; see `_INVISIBLE` for what
    is dropped."""
    if value.isascii():
        # (printable ASCII holds nothing to drop: ids, numbers, most commands; saves a regex)
        return value if value.isprintable() else _INVISIBLE.sub("", value)
    value = _LONE_SURROGATE.sub("\ufffd", value)
    return _INVISIBLE.sub("", value)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message from a teacher, already verified and parsed by its channel."""

    channel: str
    user_id: str
    text: str = ""
    kind: MessageKind = MessageKind.TEXT
    message_id: str | None = None  # the platform's id, used to drop retried deliveries

    def __post_init__(self) -> None:
        # The last line of defence: each channel refuses ids with control characters itself.
        # (spelt out, not a loop over getattr: every message passes here)
        if self.user_id is not None:  # (typed str; kept as the loop had it)
            object.__setattr__(self, "user_id", clean_input(self.user_id))
        if self.text is not None:
            object.__setattr__(self, "text", clean_input(self.text))
        if self.message_id is not None:
            object.__setattr__(self, "message_id", clean_input(self.message_id))

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(self.channel, self.user_id)


@dataclass(frozen=True, slots=True)
class Staff:
    id: int
    staff_no: str
    name: str
    role: StaffRole
    school_id: int | None


@dataclass(frozen=True, slots=True)
class StudentListing:
    """A student as listed to their teacher, most overdue first."""

    id: int
    student_no: str
    name: str
    class_name: str
    categories: tuple[str, ...]
    last_visit_at: datetime | None  # the last visit that reached the family
    open_followups: int
    last_unreached_at: datetime | None = None  # a later attempt that did not reach the family
    draft_at: datetime | None = None  # when the teacher's open draft for them last changed


@dataclass(frozen=True, slots=True)
class StudentRef:
    """Who a visit is about: enough to name the student to their teacher."""

    id: int
    name: str
    class_name: str


@dataclass(frozen=True, slots=True)
class Draft:
    """An open (unsubmitted) visit as stored."""

    visit_id: int
    student: StudentRef
    answers: dict[str, Any]
    updated_at: datetime
    revision: int = 0  # bumped by every write of the answers (see Store.save_answers)


@dataclass(frozen=True, slots=True)
class NewFollowUp:
    kind: str
    detail: str
    due_date: date
    reopens: int | None = None  # the earlier follow-up a next visit found still unmet


@dataclass(frozen=True, slots=True)
class FollowUpCheck:
    """An earlier follow-up the next visit asks about: still open, or done since the last
    visit that reached the family."""

    id: int
    kind: str
    detail: str
    status: FollowUpStatus
    closed_at: datetime | None
    note: str | None
    # An aid item allocated against this need and not yet checked (#15): the visit asks whether
    # it arrived and is in use instead.
    aid_item: str = ""
    allocation_id: int = 0


@dataclass(frozen=True, slots=True)
class FollowUpListing:
    id: int
    kind: str
    detail: str
    student_name: str
    class_name: str
    due_date: date
    status: FollowUpStatus


@dataclass(frozen=True, slots=True)
class ScopedFollowUp:
    """A follow-up as a coordinator or bureau member sees it (their school, or every school)."""

    id: int
    student_name: str
    class_name: str
    school_id: int
    kind: str
    detail: str
    due_date: date
    status: FollowUpStatus
    owner_id: int
    owner_name: str
    owner_no: str
    holder_name: str | None = None  # who acknowledged the escalation, if anyone
    climbed: bool = False  # unacknowledged, it went on to the bureau


@dataclass(frozen=True, slots=True)
class GroupCoverage:
    """Students of one class (a coordinator's view) or one school (the bureau's) reached on a
    visit since the cycle began, of all active ones."""

    label: str
    visited: int
    total: int


@dataclass(frozen=True, slots=True)
class NeedCount:
    kind: str
    found: int  # since the cycle began
    still_open: int  # open or escalated, whenever found


@dataclass(frozen=True, slots=True)
class Unvisited:
    """A student in scope not reached since the cycle began, with their head teacher."""

    teacher_name: str
    teacher_no: str
    student_name: str
    class_name: str
    last_reached: datetime | None


@dataclass(frozen=True, slots=True)
class Coverage:
    visited: int
    total: int
    open_followups: int
    overdue_followups: int


@dataclass(slots=True)
class Session:
    """Where one teacher is in the conversation. Mutable inside one turn, saved after it."""

    state: str = "idle"
    data: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    version: int = 0
    # The last numbered list shown to this user (JSON the conversation reads; a reminder's
    # delivery sets it too, see `storage.outbox.mark_sent`).
    listing: dict[str, Any] | None = None


# ------------------------------------------------------------ the picture scheduled jobs work on


@dataclass(frozen=True, slots=True)
class RosterStudent:
    id: int
    name: str
    class_name: str
    school_id: int
    categories: tuple[str, ...]
    staff_ids: tuple[int, ...]  # head teacher and carer
    last_reached: datetime | None
    last_unreached: datetime | None


@dataclass(frozen=True, slots=True)
class RosterStaff:
    id: int
    staff_no: str
    name: str
    role: StaffRole
    school_id: int | None
    identities: dict[str, str]  # channel -> platform user id
    # channel -> when the person last wrote from that identity (what the database still knows)
    last_seen: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrackedFollowUp:
    id: int
    student_id: int
    owner_staff_id: int
    kind: str
    detail: str
    due_date: date
    status: FollowUpStatus
    created_at: datetime
    escalated_at: datetime | None
    acknowledged_by: int | None = None  # the coordinator or bureau member who holds it
    climbed_at: datetime | None = None  # unacknowledged, it went on to the bureau
    reassigned_by: int | None = None  # who handed it to its owner (转交), if anyone

    @property
    def holder(self) -> int:
        """Who answers for it now: whoever acknowledged the escalation, else its owner."""
        return self.acknowledged_by if self.acknowledged_by is not None else self.owner_staff_id


class FollowUpEvent(StrEnum):
    """The steps of a follow-up's life, each stored with its time and person."""

    ESCALATED = "escalated"
    NOTIFIED = "notified"
    ACKNOWLEDGED = "acknowledged"
    CLIMBED = "climbed"
    REASSIGNED = "reassigned"
    DONE = "done"


# what each step is called wherever a follow-up's history is shown (digest, export, console)
FOLLOWUP_EVENT_LABELS = {
    FollowUpEvent.ESCALATED.value: "上报学校",
    FollowUpEvent.NOTIFIED.value: "已通知",
    FollowUpEvent.ACKNOWLEDGED.value: "确认负责",
    FollowUpEvent.CLIMBED.value: "上报教育局",
    FollowUpEvent.REASSIGNED.value: "转交给",
    FollowUpEvent.DONE.value: "完成",
}


def followup_step(
    event: str, day: date, person: str | None, *, by: str | None = None, note: str | None = None
) -> str:
    """One step of a follow-up's history as the export, the console and the digest show it:
    "3月11日 甲协调 转交给 李示例（备注）" (`by`, who did it, is named for a handover only: the
    step's `person` is whom it went to)."""
    text = f"{md(day)} "
    text += f"{by} " if by and event == FollowUpEvent.REASSIGNED.value else ""
    text += FOLLOWUP_EVENT_LABELS.get(event, event)
    text += f" {person}" if person else ""
    return text + (f"（{note}）" if note else "")


@dataclass(frozen=True, slots=True)
class FollowUpStep:
    """One step of a follow-up's history: what, when, and the person it names (if any)."""

    event: str
    at: datetime
    staff_id: int | None


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    staff_id: int
    channel: str
    error: str


@dataclass(frozen=True, slots=True)
class FallbackReach:
    """A staff member a message reached only on a later channel (the first one refused it)."""

    staff_id: int
    channel: str  # where it arrived
    first: str  # the channel tried first


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a reminder or digest run needs, loaded with a handful of set-based queries."""

    schools: dict[int, str]
    students: list[RosterStudent]
    staff: dict[int, RosterStaff]
    followups: list[TrackedFollowUp]  # open or escalated, plus any created since `since`
    failures: list[DeliveryFailure]  # reminders/digests a platform refused for good, recently
    fell_back: list[FallbackReach] = field(default_factory=list)  # reached only by fallback
    # the history of each escalated follow-up of `followups`, oldest step first
    steps: dict[int, list[FollowUpStep]] = field(default_factory=dict)
    # Batch distributions not yet marked delivered: (student id, what is given), for reminders.
    undelivered: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class JobGap:
    """A chunk of a job run that failed for good: the schools whose teachers (reminders) or
    coordinators (digests) it left out, for the operators' digest."""

    job: str
    schools: int
    names: tuple[str, ...]  # the first few school names of the chunk
    error: str  # the exception's type and place, never its message


# ------------------------------------------------------------ the outbox (see `ports.Outbox`)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to store in the outbox; `key` makes writing it twice store it once."""

    key: str
    channel: str
    recipient: str
    kind: str  # "reply" (an answer to a teacher's own message), "reminder", "digest" ...
    body: str
    # A numbered list the message shows (a reminder's): once it is delivered, it becomes the
    # recipient's current list (see `bot.core.types.Session.listing`).
    listing: dict[str, Any] | None = None
    # (channel, recipient) pairs to try in turn if this channel cannot deliver (fallback)
    fallbacks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A row claimed for delivery; `attempts` counts this one."""

    id: int
    key: str
    channel: str
    recipient: str
    kind: str
    body: str
    attempts: int
    created_at: datetime
    fallbacks: tuple[tuple[str, str], ...] = ()
    channel_since: datetime | None = None  # since when it has been tried on this channel
