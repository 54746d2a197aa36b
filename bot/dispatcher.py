"""The async edge of the engine: one message per conversation at a time, one transaction each.

Order of operations per message (aiogram's lesson): take the conversation's lock, *then* load
its state (inside the turn's transaction), so two quick messages from one teacher never read the
same state. The in-process lock orders messages within one process; across processes the store
locks the session row and its version catches anything that still slips through (the turn
runner then runs the turn once more: see `bot.core.ports.Turns`).
"""

from __future__ import annotations

import logging
from time import perf_counter

from bot.core.engine import Engine
from bot.core.errors import ConcurrentUpdate, DuplicateMessage, StorageUnavailable
from bot.core.ports import Turns
from bot.core.types import InboundMessage
from bot.locks import KeyedLocks
from bot.logsafe import log_failure
from bot.metrics import Metrics
from handlers import texts

log = logging.getLogger(__name__)

# A turn is a few milliseconds of database work; past this the teacher is told to try again
# rather than kept waiting (a stalled database connection is cut: see `Database.run`).
TURN_DEADLINE = 5.0


class Dispatcher:
    def __init__(self, turns: Turns, engine: Engine, metrics: Metrics | None = None) -> None:
        self.turns = turns
        self.engine = engine
        self.metrics = metrics
        self._locks = KeyedLocks()

    async def handle(self, message: InboundMessage) -> list[str]:
        """The replies to `message`. Never raises: failures become an apology."""
        started = perf_counter()
        async with self._locks.hold(message.key):
            replies, outcome = await self._process(message)
        if self.metrics is not None:
            self.metrics.turn(message.channel, outcome, started)
        return replies

    async def _process(self, message: InboundMessage) -> tuple[list[str], str]:
        """The replies, and the outcome the metrics count them under."""
        try:
            replies = await self.turns.run(
                lambda store: self.engine.process(store, message), deadline=TURN_DEADLINE
            )
            return replies, "answered"
        except DuplicateMessage as dup:
            return await self._earlier_replies(dup), "duplicate"
        except ConcurrentUpdate:
            log.error("conversation changed concurrently twice channel=%s", message.channel)
            return [texts.APOLOGY], "conflict"
        except StorageUnavailable as exc:
            log.warning("database unavailable (%s) channel=%s", exc, message.channel)
            return [texts.UNAVAILABLE], "unavailable"
        except Exception as exc:
            # Neither the message text nor the error's own message: both may hold a student's
            # details. The client's message id, escaped (%r): it may carry newlines or NUL.
            log_failure(
                log,
                "turn failed channel=%s message_id=%r",
                message.channel,
                (message.message_id or "")[:64],
                exc=exc,
            )
            return [texts.APOLOGY], "error"

    async def _earlier_replies(self, dup: DuplicateMessage) -> list[str]:
        """What the first delivery of a retried message was answered."""
        try:
            earlier = await self.turns.run(
                lambda store: store.seen_message(dup.channel, dup.user_id, dup.message_id),
                deadline=TURN_DEADLINE,
            )
        except StorageUnavailable:
            return [texts.UNAVAILABLE]
        # (the replies are cleared after a day: a very late retry is only told it was handled)
        return earlier or [texts.ALREADY_HANDLED]
