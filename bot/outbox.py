"""Delivering the outbox: claim due rows, hand each to its channel's sender, record the outcome.

Transient failures are retried with exponential backoff (30 s doubling, at most 10 minutes apart)
for up to a day, so a platform outage of an hour delays messages but loses none; a permanent
failure is recorded at once and never retried. Job bodies never let an exception escape.

Fallback across channels: a proactive message carries the other channels its recipient can be
reached on (`OutboxItem.fallbacks`, the one they wrote from last first). When its channel
rejects it for good, or it has kept failing there for `fallback_after`, the same row moves to the
next configured channel (`Outbox.reroute`): one row, so the message is never out on two
channels at once, and a platform that comes back later never gets it. A send whose outcome was
unknown (a timeout after the platform took it) may still have arrived before the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from bot.core.errors import SendError, StorageUnavailable
from bot.core.ports import Clock, KeyedSender, Outbox, Sender
from bot.core.types import OutboxItem
from bot.logsafe import log_failure
from bot.metrics import Metrics

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
GIVE_UP_AFTER = timedelta(days=1)
BATCH = 50
# Answers to a teacher's own message: sent whatever the hour.
PROMPT_KINDS = frozenset({"reply"})


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 600))


class OutboxDelivery:
    def __init__(
        self,
        outbox: Outbox,
        senders: Mapping[str, Sender],
        clock: Clock,
        *,
        poll_seconds: float = 5.0,
        quiet: Callable[[datetime], datetime | None] | None = None,
        metrics: Metrics | None = None,
        fallback_after: timedelta = timedelta(minutes=60),
    ) -> None:
        self.outbox = outbox
        self.senders = senders
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.quiet = quiet  # when a moment is in quiet hours, when they end
        self.metrics = metrics
        self.fallback_after = fallback_after
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Something was just enqueued: look now rather than at the next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """Deliver every row that is due now; returns how many were attempted."""
        attempted = 0
        while True:
            items = await self.outbox.claim(self.clock.now(), LEASE, BATCH)
            if not items:
                return attempted
            for item in items:
                await self._deliver(item)
            attempted += len(items)

    async def _deliver(self, item: OutboxItem) -> None:
        sender = self.senders.get(item.channel)
        try:
            if sender is None:
                raise SendError(f"channel {item.channel!r} is not configured", permanent=True)
            proactive = item.kind not in PROMPT_KINDS
            if isinstance(sender, KeyedSender):
                await sender.send_keyed(item.key, item.recipient, item.body, proactive=proactive)
            else:
                await sender.send(item.recipient, item.body, proactive=proactive)
        except SendError as exc:
            await self._failed(item, exc)
        except Exception as exc:  # a bug in a sender must not stop delivery of the rest
            log_failure(
                log, "sender crashed outbox_id=%s channel=%s", item.id, item.channel, exc=exc
            )
            await self._failed(item, SendError(type(exc).__name__))
        else:
            await self.outbox.mark_sent(item.id, self.clock.now())

    async def _failed(self, item: OutboxItem, exc: SendError) -> None:
        now = self.clock.now()
        if await self._fell_back(item, exc, now):
            if self.metrics is not None:
                self.metrics.delivery_failed(item.channel, exc.reason, final=False)
            return
        final = exc.permanent or now - item.created_at > GIVE_UP_AFTER
        if self.metrics is not None:
            self.metrics.delivery_failed(item.channel, exc.reason, final=final)
        if final:
            log.warning("outbox_id=%s kind=%s failed for good: %s", item.id, item.kind, exc.reason)
            await self.outbox.mark_failed(item.id, exc.reason)
            return
        delay = backoff(item.attempts)
        if exc.retry_after is not None:
            delay = max(delay, timedelta(seconds=exc.retry_after))
        retry_at = now + delay
        # A retried reminder or digest still keeps out of quiet hours; a reply to a teacher's
        # own message does not wait.
        if self.quiet is not None and item.kind not in PROMPT_KINDS:
            retry_at = self.quiet(retry_at) or retry_at
        log.info(
            "outbox_id=%s attempt %s failed (%s); retry in %s",
            item.id,
            item.attempts,
            exc.reason,
            delay,
        )
        await self.outbox.mark_retry(item.id, exc.reason, retry_at)

    async def _fell_back(self, item: OutboxItem, exc: SendError, now: datetime) -> bool:
        """Move the item to its next configured channel if it is time to; whether it moved."""
        since = item.channel_since or item.created_at
        if not exc.permanent and now - since < self.fallback_after:
            return False
        rest = [f for f in item.fallbacks if f[0] in self.senders and f[0] != item.channel]
        if not rest:
            return False
        (channel, recipient), *later = rest
        log.warning(
            "outbox_id=%s kind=%s gave up on %s (%s); falling back to %s",
            item.id,
            item.kind,
            item.channel,
            exc.reason,
            channel,
        )
        due = now  # a reminder moved inside quiet hours still waits for them to end
        if self.quiet is not None and item.kind not in PROMPT_KINDS:
            due = self.quiet(now) or now
        await self.outbox.reroute(
            item.id, channel, recipient, later, f"{item.channel}: {exc.reason}", due
        )
        self.poke()
        return True

    async def run_forever(self) -> None:
        """Background task: deliver, then sleep until poked or the next poll."""
        while True:
            try:
                await self.run_once()
            except StorageUnavailable as exc:
                log.warning("outbox delivery paused: database unavailable (%s)", exc)
            except Exception as exc:
                log_failure(log, "outbox delivery round failed", exc=exc)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as the wait ends (a poke at shutdown), and the app then never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
