"""The outbox: stored once per key, sent once, retried on transient errors, never lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.core.errors import SendError
from bot.core.types import OutboxMessage
from bot.outbox import OutboxDelivery
from storage import outbox
from storage.db import Database
from storage.schema import outbox as outbox_table
from tests.conftest import FakeClock, open_db


class FakeSender:
    """Records deliveries; fails the next `fail` calls with the given error."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.errors: list[SendError] = []

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        await asyncio.sleep(0)
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append((recipient, text))


def put(db: Database, clock: FakeClock, key: str, recipient: str = "u1") -> bool:
    with db.begin() as conn:
        return outbox.enqueue(
            conn,
            key=key,
            channel="fake",
            recipient=recipient,
            kind="reminder",
            body=f"hello {key}",
            not_before=clock.now(),
            now=clock.now(),
        )


def statuses(db: Database) -> list[tuple[str, str, int]]:
    with db.begin() as conn:
        rows = conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all()
    return [(r.idempotency_key, r.status, r.attempts) for r in rows]


async def test_same_key_is_stored_and_sent_once(db: Database, clock: FakeClock) -> None:
    assert put(db, clock, "k1") is True
    assert put(db, clock, "k1") is False
    sender = FakeSender()
    delivery = OutboxDelivery(outbox.SqlOutbox(db), {"fake": sender}, clock)
    assert await delivery.run_once() == 1
    assert await delivery.run_once() == 0
    assert sender.sent == [("u1", "hello k1")]
    assert statuses(db) == [("k1", "sent", 1)]


async def test_transient_errors_back_off_then_deliver(db: Database, clock: FakeClock) -> None:
    put(db, clock, "k1")
    sender = FakeSender()
    sender.errors = [SendError("503"), SendError("timeout"), SendError("rate", retry_after=300)]
    delivery = OutboxDelivery(outbox.SqlOutbox(db), {"fake": sender}, clock)
    for wait in (30, 60, 300):
        await delivery.run_once()
        assert sender.sent == []
        clock.advance(seconds=wait - 1)
        assert await delivery.run_once() == 0  # not due yet
        clock.advance(seconds=1)
    await delivery.run_once()
    assert sender.sent == [("u1", "hello k1")]
    assert statuses(db) == [("k1", "sent", 4)]


async def test_an_hour_long_outage_delays_but_loses_nothing(db: Database, clock: FakeClock) -> None:
    for i in range(3):
        put(db, clock, f"k{i}", recipient=f"u{i}")
    sender = FakeSender()
    delivery = OutboxDelivery(outbox.SqlOutbox(db), {"fake": sender}, clock)
    outage_end = clock.now() + timedelta(hours=1)
    while clock.now() < outage_end:
        sender.errors = [SendError("down")] * 3
        await delivery.run_once()
        clock.advance(minutes=1)
    sender.errors = []
    clock.advance(minutes=10)
    await delivery.run_once()
    assert sorted(sender.sent) == [("u0", "hello k0"), ("u1", "hello k1"), ("u2", "hello k2")]
    assert {s for _, s, _ in statuses(db)} == {"sent"}


async def test_permanent_error_is_recorded_and_not_retried(db: Database, clock: FakeClock) -> None:
    put(db, clock, "k1")
    sender = FakeSender()
    sender.errors = [SendError("81013 no valid recipient", permanent=True)]
    delivery = OutboxDelivery(outbox.SqlOutbox(db), {"fake": sender}, clock)
    await delivery.run_once()
    clock.advance(days=1)
    assert await delivery.run_once() == 0
    assert statuses(db) == [("k1", "failed", 1)]
    with db.begin() as conn:
        assert "81013" in conn.execute(select(outbox_table.c.last_error)).scalar_one()


async def test_unknown_channel_fails_permanently(db: Database, clock: FakeClock) -> None:
    put(db, clock, "k1")
    await OutboxDelivery(outbox.SqlOutbox(db), {}, clock).run_once()
    assert statuses(db) == [("k1", "failed", 1)]


async def test_a_crashed_sender_lease_expires_and_the_row_is_retried(
    db: Database, clock: FakeClock
) -> None:
    put(db, clock, "k1")
    with db.begin() as conn:  # a worker claims it and dies before recording anything
        [item] = outbox.claim(conn, clock.now(), timedelta(minutes=2), 10)
    sender = FakeSender()
    delivery = OutboxDelivery(outbox.SqlOutbox(db), {"fake": sender}, clock)
    assert await delivery.run_once() == 0
    clock.advance(minutes=2)
    assert await delivery.run_once() == 1
    assert sender.sent == [("u1", "hello k1")] and item.attempts == 1


async def test_two_workers_send_each_row_once(db: Database, clock: FakeClock) -> None:
    for i in range(40):
        put(db, clock, f"k{i}", recipient=f"u{i}")
    sender = FakeSender()
    second_db = open_db(db.url)  # another instance: its own engine and pool
    try:
        a = OutboxDelivery(outbox.SqlOutbox(db), {"fake": sender}, clock)
        b = OutboxDelivery(outbox.SqlOutbox(second_db), {"fake": sender}, clock)
        await asyncio.gather(a.run_once(), b.run_once(), a.run_once(), b.run_once())
    finally:
        second_db.close()
    assert sorted(r for r, _ in sender.sent) == sorted(f"u{i}" for i in range(40))
    assert {s for _, s, _ in statuses(db)} == {"sent"}


async def test_the_database_thread_survives_a_job_that_raises(db: Database) -> None:
    def explode(conn: object) -> None:
        raise SystemExit("not even this may kill the database thread")

    for _ in range(2):
        with pytest.raises(SystemExit):
            await db.run(explode)
    assert await db.ping()


async def test_a_retried_reminder_waits_for_quiet_hours_to_end(
    db: Database, clock: FakeClock
) -> None:
    from config.settings import QuietHours

    tz = ZoneInfo("Asia/Shanghai")
    quiet = QuietHours(time(21), time(7))
    clock.current = datetime(2026, 3, 2, 20, 59, 50, tzinfo=tz).astimezone(UTC)
    put(db, clock, "k1")
    sender = FakeSender()
    sender.errors = [SendError("503")]
    delivery = OutboxDelivery(
        outbox.SqlOutbox(db),
        {"fake": sender},
        clock,
        quiet=lambda moment: quiet.release(moment, tz),
    )
    await delivery.run_once()  # fails at 20:59:50; the 30 s backoff lands inside quiet hours
    clock.advance(minutes=5)
    assert await delivery.run_once() == 0
    clock.current = datetime(2026, 3, 3, 7, 0, tzinfo=tz).astimezone(UTC)
    assert await delivery.run_once() == 1 and sender.sent == [("u1", "hello k1")]


def test_driver_errors_on_the_fast_path_hide_their_parameters(db: Database) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from storage.fastsql import Prepared
    from storage.schema import schools, students

    with db.begin() as conn:
        conn.execute(insert(schools).values(id=1, name="一小"))
    add = Prepared(insert(students))
    row = {"student_no": "S1", "school_id": 1, "class_name": "一班", "active": True}
    # (a prepared insert names all)
    row |= {"last_reached_at": None, "last_unreached_at": None, "deactivated_at": None}
    row |= {"categories": ""}
    with db.begin() as conn:
        add.execute(conn, {**row, "id": 1, "name": "王小雨"})
    with pytest.raises(IntegrityError) as info, db.begin() as conn:
        add.execute(conn, {**row, "id": 2, "name": "李小雪"})  # same 学籍号: unique violation
    assert "李小雪" not in str(info.value) and "parameters hidden" in str(info.value)


async def test_the_delivery_loop_stops_when_cancelled_as_it_is_poked(
    db: Database, clock: FakeClock
) -> None:
    # (a shutdown while a reply has just been queued: the app must still stop)
    delivery = OutboxDelivery(outbox.SqlOutbox(db), {}, clock, poll_seconds=3600)
    for _ in range(20):  # the race is in the event loop's ordering: try it many times
        task = asyncio.create_task(delivery.run_forever())
        await asyncio.sleep(0.05)  # waiting to be poked
        delivery.poke()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done and task.cancelled()


async def test_the_port_reports_new_keys_and_settles_by_key(db: Database, clock: FakeClock) -> None:
    port = outbox.SqlOutbox(db)
    rows = [OutboxMessage(k, "fake", "u1", "reply", f"hello {k}") for k in ("r0", "r1", "r2")]
    now = clock.now()
    assert await port.enqueue(rows[:1], not_before=now, now=now) == ["r0"]
    assert await port.enqueue(rows, not_before=now, now=now) == ["r1", "r2"]
    assert await port.contains("r1") and not await port.contains("r3")
    await port.settle(["r0", "r3"], sent=True, error="", now=now)
    await port.settle(["r1"], sent=False, error="sessionWebhook: 503", now=now)
    assert statuses(db) == [("r0", "sent", 0), ("r1", "pending", 0), ("r2", "pending", 0)]
    with db.begin() as conn:
        query = select(outbox_table.c.idempotency_key, outbox_table.c.last_error)
        errors = {key: error for key, error in conn.execute(query)}
    assert errors == {"r0": None, "r1": "sessionWebhook: 503", "r2": None}
    [first, second] = await port.claim(now, timedelta(minutes=2), 10)
    assert (first.key, first.attempts, second.key) == ("r1", 1, "r2")
    assert await port.claim(now, timedelta(minutes=2), 10) == []  # leased
