"""The conversation engine: one turn = one inbound message, inside one store transaction.

The engine does the mechanics every turn shares: drop a retried delivery (answering it with the
reply it got the first time), find who is talking, load their session (the caller already holds
the per-conversation lock), notice an expired session, hand the turn to the conversation, save
the session and remember the message id. What to *say* belongs to the conversation (`handlers`).
"""

from __future__ import annotations

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


class Engine:
    def __init__(self, conversation: Conversation, clock: Clock, session_ttl: timedelta) -> None:
        self.conversation = conversation
        self.clock = clock
        self.session_ttl = session_ttl

    def process(self, store: Store, message: InboundMessage) -> list[str]:
        """Handle one message; the caller commits (or rolls back on an exception)."""
        now = self.clock.now()
        if message.message_id is not None:
            earlier = store.seen_message(message.channel, message.message_id)
            if earlier is not None:
                return earlier
        staff = store.find_staff(message.channel, message.user_id)
        session = store.load_session(message.key) if staff else None
        expired = bool(session and session.expires_at and session.expires_at <= now)
        turn = Turn(store, message, staff, session or Session(), now, expired)
        replies = self.conversation(turn)
        if staff is not None:
            turn.session.expires_at = now + self.session_ttl
            store.save_session(message.key, turn.session, now)
        if message.message_id is not None:
            store.remember_message(message.channel, message.message_id, replies, now)
        return replies
