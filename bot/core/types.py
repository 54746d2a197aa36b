"""Values that cross a boundary: frozen, small and free of any platform detail."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any


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


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message from a teacher, already verified and parsed by its channel."""

    channel: str
    user_id: str
    text: str = ""
    kind: MessageKind = MessageKind.TEXT
    message_id: str | None = None  # the platform's id, used to drop retried deliveries

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(self.channel, self.user_id)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What the bot says back: one or more separate chat messages."""

    texts: tuple[str, ...]


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
    last_visit_at: datetime | None
    open_followups: int


@dataclass(frozen=True, slots=True)
class Draft:
    visit_id: int
    student_id: int
    student_label: str
    answers: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewFollowUp:
    kind: str
    detail: str
    due_date: date


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
