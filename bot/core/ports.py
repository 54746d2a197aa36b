"""Ports: what the engine and handlers need from the outside, as small interfaces.

The store is synchronous on purpose: a whole conversation turn runs inside one short database
transaction on a worker thread (see `storage.db.Database.run`), so the event loop pays one thread
hop per message instead of one per statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, Protocol

from bot.core.types import (
    ConversationKey,
    Coverage,
    Draft,
    FollowUpListing,
    NewFollowUp,
    Session,
    Staff,
    StudentListing,
)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class Store(Protocol):
    """Everything one conversation turn reads and writes; all calls share one transaction.

    A store may hold writes back and send them together, answering their calls optimistically;
    `flush` sends them and raises if one did not apply (the turn is then rolled back). A held
    write reads its values when it is sent: a value given to a write is not changed afterwards.
    """

    def flush(self) -> None: ...

    # -- who is talking, and the conversation state (loaded after the per-key lock is held)
    def find_staff(self, channel: str, user_id: str) -> Staff | None: ...
    def load_session(self, key: ConversationKey) -> Session | None: ...
    def save_session(self, key: ConversationKey, session: Session, now: datetime) -> None: ...

    # -- inbound de-duplication
    def seen_message(self, channel: str, user_id: str, message_id: str) -> list[str] | None:
        """The replies given when this sender's id was first handled (empty once they have been
        pruned); None if it is new."""
        ...

    def remember_message(
        self, channel: str, user_id: str, message_id: str, replies: Sequence[str], now: datetime
    ) -> bool:
        """Store the replies under this sender's id; False (nothing stored) if it is known."""
        ...

    # -- students and visits of one teacher
    def my_students(self, staff_id: int) -> list[StudentListing]: ...
    def find_student(self, staff_id: int, student_id: int) -> tuple[str, Draft | None] | None:
        """An active student assigned to the teacher: their label "name（class）" and the
        teacher's open draft for them, if any. None if the student is not the teacher's."""
        ...

    def find_draft(self, staff_id: int) -> Draft | None:
        """The teacher's most recently changed open draft of a student still theirs."""
        ...

    def load_draft(self, staff_id: int, visit_id: int) -> Draft | None:
        """This open draft as stored now, if it is the teacher's, of a student still theirs."""
        ...

    def start_visit(
        self, staff_id: int, student_id: int, form_id: str, form_version: str, now: datetime
    ) -> int: ...
    def save_answers(
        self, visit_id: int, answers: dict[str, Any], revision: int, now: datetime
    ) -> bool:
        """Replace the draft's answers if it is still at `revision` (the revision then goes up
        by one). False, and nothing written, when it is not: submitted or discarded elsewhere,
        changed from another channel, or its student is no longer the teacher's (`load_draft`
        tells which)."""
        ...

    def submit_visit(
        self,
        visit_id: int,
        revision: int,
        answers: dict[str, Any],
        method: str | None,
        reached: bool,
        followups: Sequence[NewFollowUp],
        now: datetime,
    ) -> bool:
        """Submit the draft with its follow-ups; False, as for `save_answers`, when it is not
        writable at `revision`."""
        ...

    def discard_visit(self, visit_id: int, now: datetime) -> None: ...

    # -- follow-ups
    def open_followups(self, staff_id: int) -> list[FollowUpListing]: ...
    def close_followup(
        self, staff_id: int, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None: ...
    def coverage(self, staff_id: int, since: datetime, today: date) -> Coverage: ...


class Sender(Protocol):
    """Delivers one proactive text to one platform user; raises SendError when it cannot."""

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        """`proactive`: a reminder or digest (one per recipient and day), not a reply to a
        message the teacher just sent; a platform may then suppress an identical resend."""
        ...
