"""Ports: what the engine and handlers need from the outside, as small interfaces.

The store is synchronous on purpose: a whole conversation turn runs inside one short database
transaction on a worker thread (see `storage.db.Database.run`), so the event loop pays one thread
hop per message instead of one per statement. `Turns` is the asynchronous door to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from bot.core.aid import OpenNeed, Taken
from bot.core.binding import BindOutcome
from bot.core.reviews import AidReview
from bot.core.types import (
    ConversationKey,
    Coverage,
    Draft,
    FollowUpCheck,
    FollowUpListing,
    GroupCoverage,
    InboundMessage,
    NeedCount,
    NewFollowUp,
    OutboxItem,
    OutboxMessage,
    RosterStaff,
    ScopedFollowUp,
    Session,
    Staff,
    StudentListing,
    StudentRef,
    Unvisited,
)

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class Store(Protocol):
    """Everything one conversation turn reads and writes; all calls share one transaction.

    A store is only ever used inside `Turns.run`, which begins the transaction, commits it when
    the turn returns and rolls it back when the turn raises. Writes take effect in the order they
    are made and every read sees the writes before it. The same contract holds on every backend
    (`tests/test_store_contract.py` runs it over memory, SQLite and PostgreSQL).
    """

    # -- who is talking, and the conversation state (loaded after the per-key lock is held)
    def find_staff(self, channel: str, user_id: str) -> Staff | None:
        """An active staff member with this identity (on `console` and `api`: this 工号)."""
        ...

    def load_session(self, key: ConversationKey) -> Session | None:
        """The conversation's stored state, locked for this turn; None if it has none yet."""
        ...

    def save_session(self, key: ConversationKey, session: Session, now: datetime) -> None:
        """Store the state and bump `session.version`; ConcurrentUpdate if another turn saved
        it since it was loaded."""
        ...

    # -- inbound de-duplication
    def seen_message(self, channel: str, user_id: str, message_id: str) -> list[str] | None:
        """The replies given when this sender's id was first handled (empty once they have been
        pruned); None if it is new."""
        ...

    def remember_message(
        self, channel: str, user_id: str, message_id: str, replies: Sequence[str], now: datetime
    ) -> None:
        """Store the replies under this sender's id. If the id is known, the turn fails with
        DuplicateMessage (here, or when the turn ends) and nothing of it is kept."""
        ...

    # -- students and visits of one teacher
    def my_students(self, staff_id: int) -> list[StudentListing]:
        """The teacher's active students, in no particular order."""
        ...

    def find_student(
        self, staff_id: int, student_id: int
    ) -> tuple[StudentRef, Draft | None] | None:
        """An active student assigned to the teacher, with the teacher's open draft for them
        (the most recently changed, if several). None if the student is not the teacher's."""
        ...

    def find_draft(self, staff_id: int) -> Draft | None:
        """The teacher's most recently changed open draft of a student still theirs."""
        ...

    def load_draft(self, staff_id: int, visit_id: int) -> Draft | None:
        """This open draft as stored now, if it is the teacher's, of a student still theirs."""
        ...

    def my_drafts(self, staff_id: int) -> list[Draft]:
        """The teacher's open drafts of students still theirs, the most recently changed first."""
        ...

    def start_visit(
        self, staff_id: int, student_id: int, form_id: str, form_version: str, now: datetime
    ) -> int:
        """A new empty draft (revision 0); its id."""
        ...

    def save_answers(
        self, visit_id: int, answers: dict[str, Any], revision: int, now: datetime
    ) -> bool:
        """Replace the draft's answers if it is still at `revision` (the revision then goes up
        by one). False, and nothing written, when it is not: submitted or discarded elsewhere,
        changed from another channel, or its student is no longer the teacher's (`load_draft`
        tells which). A caller must not change `answers` after passing it."""
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
        """Submit the draft with its follow-ups (owned by the visiting teacher); False, as for
        `save_answers`, when it is not writable at `revision`."""
        ...

    def discard_visit(self, visit_id: int, now: datetime) -> None:
        """Discard the draft, if it still is one."""
        ...

    def reopen_visit(self, staff_id: int, visit_id: int, now: datetime) -> Draft | None:
        """Take back the teacher's submission: the visit is a draft again (its revision goes up)
        and the follow-ups it opened are withdrawn. None, and nothing changed, when it is not
        their submitted visit of a student still theirs, or one of its follow-ups has been
        acted on since (closed, escalated)."""
        ...

    # -- follow-ups
    def followups_to_check(self, student_id: int) -> list[FollowUpCheck]:
        """The student's follow-ups still open, and those done since the last submitted visit
        that reached the family; oldest first."""
        ...

    def settle_allocation(self, allocation_id: int, outcome: str, now: datetime) -> bool:
        """What a visit found of an allocated aid item: `in_use`, `not_received` or
        `unusable` (the need is then free for another allocation). False when it was settled
        already or is gone."""
        ...

    # -- aid in chat (#15): a coordinator's school's stock, the bureau's pool
    def aid_stock(self, viewer: Staff) -> dict[str, int]:
        """Item counts where this person records: their school, or the pool (the bureau)."""
        ...

    def aid_needs(
        self,
        viewer: Staff,
        kinds: Sequence[str],
        now: datetime,
        limit: int,
        followup_id: int | None = None,
    ) -> list[OpenNeed]:
        """Open needs of `kinds` in scope with no standing allocation, most urgent first (more
        aid categories, then open longest); only `followup_id` when given."""
        ...

    def change_aid_stock(self, viewer: Staff, item: str, change: int, now: datetime) -> int | None:
        """Add `change` to the count where this person records (ledgered, audited); the new
        count, or None when it would go below zero (nothing changed)."""
        ...

    def allocate_aid(
        self, viewer: Staff, item: str, followup_id: int, method: str, tracking: str, now: datetime
    ) -> Taken:
        """One `item` from where this person records to a need `aid_needs` just gave: the
        stock down by one conditional UPDATE, the allocation recorded and audited."""
        ...

    def deliver_aid(self, viewer: Staff, followup_id: int, now: datetime) -> str | None:
        """Record the delivery of the standing allocation of this need (its owner, or a
        coordinator or bureau member in scope): the item; "" when recorded already; None when
        there is none in scope."""
        ...

    def open_followups(self, staff_id: int) -> list[FollowUpListing]:
        """The open and escalated follow-ups the teacher owns, earliest due first."""
        ...

    def close_followup(
        self, staff_id: int, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None:
        """Mark the teacher's open follow-up done with `note`; None if it is not theirs or not
        open."""
        ...

    def reopen_followup(self, staff_id: int, followup_id: int) -> FollowUpListing | None:
        """Take back the teacher's 完成: the follow-up is open again, its note cleared. None when
        it is not a follow-up they closed."""
        ...

    # -- telling the school: the family keeps being unreachable, an urgent need was found
    def unreached_attempts(self, student_id: int) -> list[datetime]:
        """When the submitted visits that did not reach the family were made, since the last
        one that did, oldest first."""
        ...

    def school_coordinators(self, student_id: int) -> list[RosterStaff]:
        """The active coordinators of the student's school, with their channel identities."""
        ...

    def coordinators_of(self, school_id: int) -> list[RosterStaff]:
        """The active coordinators of this school (as `school_coordinators`)."""
        ...

    def queue_message(self, message: OutboxMessage, not_before: datetime, now: datetime) -> bool:
        """Put a proactive message in the outbox unless its key is there; True if it was new."""
        ...

    def withdraw_messages(self, key_prefix: str) -> int:
        """Take back the queued messages whose key starts with `key_prefix` and that have not
        been sent (nor are being sent); how many."""
        ...

    def coverage(self, staff_id: int, since: datetime, today: date) -> Coverage:
        """The teacher's active students reached on a visit since `since`, and their open and
        overdue (due before `today`) follow-ups."""
        ...

    # -- coordinators and bureau in chat: follow-ups of their scope (a coordinator's school,
    #    every school for the bureau; a teacher's scope is empty)
    def scoped_followups(
        self, viewer: Staff, escalated_only: bool, today: date, limit: int | None = None
    ) -> list[ScopedFollowUp]:
        """Open and escalated follow-ups of active students in scope: the escalated ones, or
        those due before `today`; earliest due first; the first `limit` of them."""
        ...

    def scoped_followup(self, viewer: Staff, followup_id: int) -> ScopedFollowUp | None:
        """This follow-up, whatever its status, if it is in scope."""
        ...

    def acknowledge_followup(
        self, viewer: Staff, followup_id: int, note: str, now: datetime
    ) -> bool:
        """Take on an escalated follow-up in scope nobody has acknowledged (one conditional
        write: of two at once, one wins); records the event. False, nothing changed, else."""
        ...

    def close_scoped_followup(
        self, viewer: Staff, followup_id: int, note: str, now: datetime
    ) -> FollowUpListing | None:
        """Mark an open or escalated follow-up in scope done, as `close_followup`."""
        ...

    def reassign_followup(
        self, viewer: Staff, followup_id: int, to_staff_id: int, now: datetime
    ) -> bool:
        """Give an open or escalated follow-up in scope to an active staff member of the
        student's school (records the event); False, nothing changed, when not allowed."""
        ...

    def scoped_counts(self, viewer: Staff, today: date) -> tuple[int, int, int]:
        """In scope: follow-ups overdue (open or escalated, due before `today`), escalated, and
        escalated that nobody acknowledged; one aggregate."""
        ...

    def scoped_coverage(self, viewer: Staff, since: datetime) -> list[GroupCoverage]:
        """Per class (a coordinator) or per school (bureau): active students reached on a
        visit since `since`, of all; by label."""
        ...

    def scoped_needs(self, viewer: Staff, since: datetime) -> list[NeedCount]:
        """Per follow-up kind in scope: found since `since`, and still open; by kind."""
        ...

    def scoped_unvisited(self, viewer: Staff, since: datetime, limit: int) -> list[Unvisited]:
        """Active students in scope not reached since `since`, by head teacher (工号), never
        reached first, then the longest ago; at most `limit`."""
        ...

    def staff_member(self, staff_no: str) -> RosterStaff | None:
        """The active staff member with this 工号, with their channel identities."""
        ...

    # -- aid reviews (资助认定, #15)
    def open_review(
        self,
        reporter: Staff,
        student_id: int | None,
        name: str,
        class_name: str,
        note: str,
        now: datetime,
    ) -> AidReview | None:
        """Open a review for the student's school (a roster student), or for the reporter's
        school (a reported student: `name`, `class_name`); None when that student already has
        an open review, or a reported student's reporter has no school."""
        ...

    def scoped_reviews(self, viewer: Staff, limit: int) -> list[AidReview]:
        """Open reviews a coordinator (their school) or bureau member (all) decides, oldest
        first; none for a teacher."""
        ...

    def decide_review(
        self, viewer: Staff, review_id: int, category: str | None, reason: str, now: datetime
    ) -> AidReview | None:
        """Approve with `category` (the student gains it, source 家访发现, since `now`; a
        reported student is added with a provisional 学籍号, assigned to the reporter) or
        decline with `reason`; audited. None when not open or out of scope."""
        ...

    # -- the coordinators' console
    def add_console_token(
        self, staff_id: int, token_hash: str, expires_at: datetime, now: datetime
    ) -> None:
        """Store a one-time console sign-in token (its hash only) for this staff member."""
        ...

    # -- binding chat identities with one-time codes (`bot.core.binding`)
    def issue_binding_code(
        self,
        staff_no: str,
        school_id: int | None,
        code_hash: str,
        expires_at: datetime,
        now: datetime,
        actor: str,
    ) -> Staff | None:
        """Store a code (its hash) for the active staff member with this 工号 in `school_id`
        (None: any school), withdrawing their unused codes; audited. None, and nothing
        written, when there is no such staff member."""
        ...

    def bind_failures(self, subjects: Sequence[str], since: datetime) -> dict[str, int]:
        """How many wrong codes each subject (`bot.core.binding`) sent since `since`."""
        ...

    def record_bind_failure(
        self, subjects: Sequence[str], now: datetime, forget_before: datetime
    ) -> None:
        """Count one wrong code for each subject; forget those before `forget_before`."""
        ...

    def redeem_binding_code(
        self, channel: str, user_id: str, staff_no: str, code_hash: str, now: datetime
    ) -> tuple[BindOutcome, Staff | None]:
        """Bind this chat identity to the staff member if the code is theirs, unused and not
        expired: their earlier identity on the channel is replaced, the code used up, the
        binding audited. An identity bound to someone else is left alone (TAKEN)."""
        ...


class Turns(Protocol):
    """Runs conversation turns, each in one transaction of the store.

    `run(fn)` calls `fn(store)` and commits what it wrote when it returns. It may call `fn`
    more than once (a backend's optimistic shortcut missed, or another process wrote the same
    session meanwhile): only the last call's writes are kept, so `fn` must do nothing but read
    and write through the store. Raises only errors of `bot.core.errors`: DuplicateMessage,
    ConcurrentUpdate (twice in a row), StorageUnavailable (no answer within `deadline` seconds,
    and the turn is then rolled back), or whatever `fn` raised.
    """

    async def run(self, fn: Callable[[Store], T], *, deadline: float | None = None) -> T: ...


class Sender(Protocol):
    """Delivers one proactive text to one platform user; raises SendError when it cannot."""

    async def send(self, recipient: str, text: str, *, proactive: bool = True) -> None:
        """`proactive`: a reminder or digest (one per recipient and day), not a reply to a
        message the teacher just sent; a platform may then suppress an identical resend."""
        ...


@runtime_checkable
class KeyedSender(Protocol):
    """A Sender whose platform takes an idempotency key (Feishu's `uuid`): the outbox hands it
    the row's key, so a resend of one row is dropped by the platform instead of shown twice."""

    async def send_keyed(
        self, key: str, recipient: str, text: str, *, proactive: bool = True
    ) -> None: ...


class Conversations(Protocol):
    """Answers one inbound message (`bot.dispatcher.Dispatcher`): what a channel hands it to."""

    async def handle(self, message: InboundMessage) -> list[str]:
        """The replies, in order. Never raises: a failure is answered with an apology."""
        ...


class Outbox(Protocol):
    """The outbox: proactive messages and pushed replies, each a row under an idempotency key.

    Channels write their replies here and settle the ones they sent themselves; the delivery
    loop (`bot.outbox`) claims the rest and records each outcome. Every call is one short
    transaction of its own and may raise StorageUnavailable (or a database error).
    """

    async def enqueue(
        self, messages: Sequence[OutboxMessage], *, not_before: datetime, now: datetime
    ) -> list[str]:
        """Store each message whose key is new, due at `not_before`; the keys this call stored,
        in order (a key already present, or written concurrently elsewhere, is not one)."""
        ...

    async def contains(self, key: str) -> bool:
        """Whether a row with this key exists, whatever its status."""
        ...

    async def claim(self, now: datetime, lease: timedelta, limit: int) -> list[OutboxItem]:
        """Take up to `limit` pending rows due at `now`, earliest first, counting an attempt;
        nobody else gets them for `lease` (a worker that dies mid-send leaves them to retry)."""
        ...

    async def mark_sent(self, item_id: int, now: datetime) -> None: ...

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: datetime) -> None:
        """Still pending, due again at `next_attempt_at`; `error` is kept (cut to 500)."""
        ...

    async def mark_failed(self, item_id: int, error: str) -> None:
        """Failed for good: never sent again."""
        ...

    async def reroute(
        self,
        item_id: int,
        channel: str,
        recipient: str,
        fallbacks: Sequence[tuple[str, str]],
        error: str,
        now: datetime,
    ) -> None:
        """Move the row to another channel and recipient (fallback), due at `now` (attempts
        counted afresh from then); `error` says why the last one gave up."""
        ...

    async def settle(self, keys: Sequence[str], *, sent: bool, error: str, now: datetime) -> None:
        """A channel's own send of these rows (by key; unknown keys are skipped): `sent`, or
        failed with `error` and due for the delivery loop at `now`."""
        ...


class OneTimeSigns(Protocol):
    """DingTalk HTTP mode's (timestamp, sign) pairs: each is accepted once, on every instance."""

    async def first_use(
        self, sent_at_ms: int, sign: str, *, forget_before_ms: int, now: datetime
    ) -> bool:
        """Record the pair; True if it was not recorded before. Pairs whose timestamp is
        before `forget_before_ms` are forgotten first (they are refused as stale anyway)."""
        ...


class ChannelDeps(Protocol):
    """What a channel's `install` takes from the composition root (`bot.deps.Deps`)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def signs(self) -> OneTimeSigns: ...
