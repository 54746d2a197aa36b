"""The conversation engine: one turn = one inbound message, inside one store transaction.

The engine does the mechanics every turn shares: find who is talking, load their session (the
caller holds the in-process lock; the store locks the row), notice an expired session, hand the
turn to the conversation, save the session and remember the message id. A message id seen before
is a retried delivery: the turn raises DuplicateMessage, the caller rolls it back and answers
with the replies stored the first time. What to *say* belongs to the
conversation (`handlers`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.core.ports import Clock, Store
from bot.core.types import InboundMessage, Session, Staff


@dataclass(slots=True)
class Turn:
    store: Store
    message: InboundMessage
    staff: Staff | None
    session: Session
    now: datetime
    expired: bool = False  # the session had expired: the conversation starts over from idle


Conversation = Callable[[Turn], list[str]]


# Who a platform user is changes only with a roster import: remember it for a minute rather than
# asking the database on every message (a deactivated teacher is refused within that minute).
STAFF_CACHE_SECONDS = 60.0


class Engine:
    def __init__(self, conversation: Conversation, clock: Clock, session_ttl: timedelta) -> None:
        self.conversation = conversation
        self.clock = clock
        self.session_ttl = session_ttl
        self._staff: dict[tuple[str, str], tuple[float, Staff]] = {}

    def _find_staff(self, store: Store, message: InboundMessage) -> Staff | None:
        key = (message.channel, message.user_id)
        hit = self._staff.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        staff = store.find_staff(message.channel, message.user_id)
        if staff is None:
            self._staff.pop(key, None)
        else:
            self._staff[key] = (now + STAFF_CACHE_SECONDS, staff)
        return staff

    def process(self, store: Store, message: InboundMessage) -> list[str]:
        """Handle one message; the caller commits (or rolls back on an exception)."""
        now = self.clock.now()
        staff = self._find_staff(store, message)
        key = message.key  # (built once: a new ConversationKey per use)
        session = store.load_session(key) if staff else None  # locks the row
        expired = bool(session and session.expires_at and session.expires_at <= now)
        turn = Turn(store, message, staff, session or Session(), now, expired)
        replies = self.conversation(turn)
        if staff is not None:
            turn.session.expires_at = now + self.session_ttl
            store.save_session(key, turn.session, now)
        # A retried delivery is found here rather than with a read up front (one statement less
        # per message): the store raises DuplicateMessage, the turn is rolled back and the first
        # reply is given again.
        if message.message_id is not None:
            store.remember_message(
                message.channel, message.user_id, message.message_id, replies, now
            )
        return replies
