"""The default conversation: commands at any time, picking a student, the form, the summary.

The states are typed values (`handlers.states`): Idle → Answering (a draft visit is open) ⇄
Reviewing (the summary) → Idle, with short confirmation states in between (a near-miss name, a
draft about to be deleted, a text over its limit). The draft's answers live in the visit row
(written after every answer) and are copied into the state so a turn needs no extra read; the
copy's revision tells the store when another channel changed it.

Numbers mean one thing: a bare number (outside a question) or `完成 N` refers to the current list,
the last numbered list the teacher was shown, and every reply that acts on a number names what it
acted on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.aid import SETTLED, AidItem
from bot.core.channels import STAFF_NO_CHANNELS
from bot.core.engine import Turn
from bot.core.errors import InvalidAnswer
from bot.core.ports import Store
from bot.core.reviews import REVIEW_CATEGORIES
from bot.core.signin import TOKEN_TTL, login_url, new_secret, secret_hash
from bot.core.types import (
    Draft,
    FollowUpListing,
    MessageKind,
    NewFollowUp,
    OutboxMessage,
    Staff,
    StaffRole,
    StudentListing,
    StudentRef,
)
from config.forms import CHECK_RESOLVED, CHECK_STILL, CHECKS_KEY, Form, QType
from handlers import binding, coordinate, render, reviews, states, texts
from handlers.aid import AidDesk
from handlers.answers import clean_free_text, normalize, parse_answer, strip_edges
from handlers.cadence import Cadence, last_attempt_unreached
from handlers.commands import (
    Cmd,
    Command,
    ack_note,
    as_number,
    done_note,
    is_no,
    is_yes,
    parse_command,
    review_text,
)
from handlers.coordinate import Coordination
from handlers.reminders import reach_order
from handlers.reviews import Reviews
from handlers.states import (
    Answering,
    Check,
    Checking,
    ConfirmCut,
    ConfirmDiscard,
    ConfirmStudent,
    Conversation,
    Idle,
    InVisit,
    Item,
    ItemKind,
    LastAction,
    Listing,
    ListKind,
    OpenDraft,
    Reviewing,
    State,
)

MAX_MESSAGE = 2000  # characters; longer messages are refused before any parsing
MAX_NOTE = 500
UNDO_WINDOW = timedelta(minutes=10)
NOT_VISITED = ("未访", "没访", "待访")  # `家访 未访`: due or never visited


@dataclass(frozen=True, slots=True)
class Alerts:
    """Telling the school's coordinators at once (through the outbox): a family unreachable
    `unreached_after` times in a row, or a need of an urgent kind (`Form.urgent_kinds`)."""

    channels: tuple[str, ...] = ()  # the channels that reach a person, in order of preference
    quiet: Callable[[datetime], datetime | None] = lambda _moment: None  # QUIET_HOURS
    unreached_after: int = 2


@dataclass(slots=True)
class _Ctx:
    """One turn of the conversation: the engine's turn, who is talking, where they are."""

    t: Turn
    staff: Staff
    conv: Conversation

    @property
    def state(self) -> State:
        return self.conv.state

    # (explicit constructors: `dataclasses.replace` costs several times more, every turn)
    def go(self, state: State) -> None:
        self.conv = Conversation(state, self.conv.listing, self.conv.last)

    def show(self, listing: Listing | None) -> None:
        self.conv = Conversation(self.conv.state, listing, self.conv.last)


Handler = Callable[[_Ctx, Command, str], list[str] | None]


def _label(student: StudentRef) -> str:
    return render.student_label(student.name, student.class_name)


class CheckIn:
    """Callable conversation for `bot.core.engine.Engine`."""

    def __init__(
        self,
        form: Form,
        tz: ZoneInfo,
        cadence: Cadence | None = None,
        alerts: Alerts | None = None,
        public_url: str = "http://127.0.0.1:8080",
        aid_items: Sequence[AidItem] = (),
    ) -> None:
        self.form = form
        self.tz = tz
        self.cadence = cadence or Cadence()
        self.alerts = alerts or Alerts()
        self.public_url = public_url
        self._commands: dict[Cmd, Handler] = {
            Cmd.START: self._list,
            Cmd.LIST: self._list,
            Cmd.MORE: self._more,
            Cmd.HELP: self._help,
            Cmd.CANCEL: self._cancel,
            Cmd.DISCARD: self._discard,
            Cmd.CONFIRM_DISCARD: self._confirm_discard,
            Cmd.BACK: self._back,
            Cmd.SKIP: self._skip,
            Cmd.EDIT: self._edit,
            Cmd.LATER: self._later,
            Cmd.RESUME: self._resume,
            Cmd.TODO: self._todo,
            Cmd.DONE: self._done,
            Cmd.UNDO: self._undo,
            Cmd.PROGRESS: self._progress,
            Cmd.CONSOLE: self._console,
            Cmd.SUBMIT: self._submit,
            Cmd.OVERVIEW: self._coordinating,
            Cmd.UNVISITED: self._unvisited,
            Cmd.OVERDUE: self._coordinating,
            Cmd.ESCALATED: self._coordinating,
            Cmd.ACK: self._coordinating,
            Cmd.REASSIGN: self._coordinating,
            Cmd.NUDGE: self._coordinating,
            Cmd.STOCK: self._coordinating,
            Cmd.ALLOCATE: self._coordinating,
            Cmd.ARRIVAL: self._coordinating,
            Cmd.DELIVERED: self._delivered,
            Cmd.REPORT: self._reviewing,
            Cmd.REVIEWS: self._reviewing,
            Cmd.APPROVE: self._reviewing,
            Cmd.DECLINE: self._reviewing,
        }
        self.coordination = Coordination(
            form.followup_kinds,
            tz,
            self.alerts.channels,
            self.alerts.quiet,
            self.cadence.default_days,
        )
        self.aid = AidDesk(tuple(aid_items), form.followup_kinds, self.coordination)
        self.reviews = Reviews(self.coordination)

    # ------------------------------------------------------------------ entry
    def __call__(self, t: Turn) -> list[str]:
        if t.message.kind is MessageKind.TEXT:
            text = normalize(t.message.text[:MAX_MESSAGE])
            if binding.is_bind(text):
                return binding.bind(t, text)
            if t.staff is not None and binding.is_issue(text):
                return binding.issue(t, t.staff, text)
        if t.staff is None:
            if t.message.channel in STAFF_NO_CHANNELS:  # a binding code would not help here
                return [texts.UNKNOWN_STAFF_NO.format(user_id=t.message.user_id)]
            unknown = texts.NOT_REGISTERED.format(user_id=t.message.user_id)
            if t.message.kind is MessageKind.EVENT:  # following the account, not yet bound
                return [texts.WELCOME + "\n\n" + unknown]
            return [unknown]
        session = t.session
        c = _Ctx(t, t.staff, states.load(session.state, session.data, session.listing))
        replies = self._reply(c)
        session.state, session.data, session.listing = states.dump(c.conv)
        return replies

    def _reply(self, c: _Ctx) -> list[str]:
        msg = c.t.message
        if msg.kind is MessageKind.EVENT:
            return [
                texts.GREETING.format(name=c.staff.name)
                + "\n\n"
                + coordinate.help_for(c.staff.role)
            ]
        if msg.kind is MessageKind.UNSUPPORTED:
            return [self._with_prompt(c, texts.TEXT_ONLY)]
        if len(msg.text) > MAX_MESSAGE:
            reason = texts.TOO_LONG_MESSAGE.format(length=len(msg.text), limit=MAX_MESSAGE)
            return [self._with_prompt(c, reason)]
        text = normalize(msg.text)
        if not text:
            return [self._with_prompt(c, texts.EMPTY_ANSWER)]
        command = parse_command(text)
        if c.t.expired and command is None and isinstance(c.state, InVisit):
            # Days later a reply may not be meant for the question on screen: ask it again.
            head = texts.EXPIRED_DRAFT.format(student=_label(c.state.draft.student))
            return [f"{head}\n\n{self._prompt(c)}"]
        confirming = self._confirming(c, command, msg.text, text)
        if confirming is not None:
            return confirming
        if command is not None:
            replies = self._commands[command.cmd](c, command, msg.text)
            if replies is not None:
                return replies
        return self._by_state(c, msg.text, text, command)

    def _confirming(
        self, c: _Ctx, command: Command | None, raw: str, text: str
    ) -> list[str] | None:
        """The answer to a yes/no question the bot just asked; None to go on as usual."""
        match c.state:
            case ConfirmStudent(student=student):
                c.go(Idle())
                if command is None and is_yes(text):
                    found = c.t.store.find_student(c.staff.id, student.id)
                    return self._start(c, *found) if found else [texts.STUDENT_GONE]
                if command is None and is_no(text):
                    return [texts.NAME_AGAIN]
            case ConfirmDiscard(draft=draft, question=question):
                if command is not None and command.cmd is Cmd.CONFIRM_DISCARD:
                    return None  # (the command handler deletes it)
                if command is None and is_yes(text):
                    return self._drop_draft(c, draft)
                c.go(Answering(draft, question) if question else Reviewing(draft))
                if command is not None and command.cmd in (Cmd.CANCEL, Cmd.DISCARD):
                    return [f"{texts.DISCARD_KEPT}\n\n{self._prompt(c)}"]
                # anything else: the draft stays, and the reply is taken as it would have been
            case ConfirmCut() as cut:
                c.go(_resume(cut.draft, cut.question))
                if command is None and is_yes(text):
                    return self._apply_cut(c, cut)
                if command is None:  # a shorter text instead: it goes where the long one went
                    if cut.followup:
                        return self._close(c, cut.number, cut.followup, clean_free_text(raw))
                    assert cut.draft is not None
                    return self._answer(c, Answering(cut.draft, cut.question), raw)
        return None

    def _by_state(self, c: _Ctx, raw: str, text: str, command: Command | None) -> list[str]:
        match c.state:
            case Answering() as answering:
                if (
                    command is not None
                    and self.form.question(answering.question).type is QType.TEXT
                ):
                    # a command word that means nothing here (提交 before the summary) is not
                    # stored as the answer to a free-text question
                    word = texts.COMMAND_AS_ANSWER.format(word=text)
                    return [self._with_prompt(c, word)]
                return self._answer(c, answering, raw)
            case Reviewing():
                return [texts.SUMMARY_EXPECT]
            case Checking() as checking:
                return self._check_answer(c, checking, raw)
        number = as_number(text)
        if number is not None:
            return self._pick(c, number)
        if command is not None:  # a command word that means nothing now (提交 with no visit)
            return [texts.NOT_NOW.format(word=text[:10])]
        return self._pick_name(c, text)

    # ------------------------------------------------------------------ helpers
    def _due_students(
        self, store: Store, staff_id: int, today: date
    ) -> tuple[list[StudentListing], Callable[[StudentListing], date | None]]:
        """A teacher's students due a visit, most urgent first (what a 催办 lists)."""
        students = self._filtered(store.my_students(staff_id), NOT_VISITED[0], today)
        return self._by_urgency(students, today), self._due

    def _due(self, s: StudentListing) -> date | None:
        local = [
            None if v is None else v.astimezone(self.tz).date()
            for v in (s.last_visit_at, s.last_unreached_at)
        ]
        return self.cadence.due_date(s.categories, local[0], local[1])

    def _by_urgency(self, students: list[StudentListing], today: date) -> list[StudentListing]:
        """Families last found unreachable first (the most at risk), then overdue students of
        short-cycle categories (孤儿, 大病 …), then never visited, then other overdue ones, then
        everyone else; by 学号 within a group."""

        def key(s: StudentListing) -> tuple[int, int, str]:
            due = self._due(s)
            if last_attempt_unreached(s.last_visit_at, s.last_unreached_at):
                assert s.last_unreached_at is not None
                return (0, int(s.last_unreached_at.timestamp()), s.student_no)
            if due is None:
                return (2, 0, s.student_no)
            overdue = due <= today
            if overdue and self.cadence.is_short_cycle(s.categories):
                return (1, due.toordinal(), s.student_no)
            return (3, due.toordinal(), s.student_no) if overdue else (4, 0, s.student_no)

        return sorted(students, key=key)

    def today(self, c: _Ctx) -> date:
        return c.t.now.astimezone(self.tz).date()

    def _prompt(self, c: _Ctx) -> str | None:
        """What the teacher is being asked right now, to repeat after an interjection."""
        match c.state:
            case Answering(draft=d, question=key):
                q = self.form.question(key)
                return render.question(self.form, q, d.answers, _label(d.student))
            case Reviewing(draft=d):
                return render.summary(self.form, d.answers, _label(d.student))
            case Checking(checks=checks):
                return self._check_prompt(checks[0])
        return None

    def _with_prompt(self, c: _Ctx, text: str) -> str:
        prompt = self._prompt(c)
        return f"{text}\n\n{prompt}" if prompt else text

    def _advance(self, c: _Ctx, draft: OpenDraft, head: str | None = None) -> list[str]:
        """Ask the first unanswered question, or show the summary when none is left."""
        nxt = self.form.next_question(draft.answers)
        if nxt is None:
            c.go(Reviewing(draft))
            body = render.summary(self.form, draft.answers, _label(draft.student))
        else:
            c.go(Answering(draft, nxt.key))
            body = render.question(self.form, nxt, draft.answers, _label(draft.student))
        return [f"{head}\n\n{body}" if head else body]

    def _save(self, c: _Ctx, draft: OpenDraft, changes: Mapping[str, Any]) -> OpenDraft | None:
        """Store `changes` to the draft's answers; the draft as it now stands, or None when it
        is closed or its student is no longer the teacher's.

        The state's copy of the answers may be stale: the teacher may have answered other
        questions of the same draft on another channel since. The store then refuses the write
        (the revision moved on), and the changes are applied to the draft as stored instead.
        """
        answers = self.form.prune({**draft.answers, **changes})
        if not c.t.store.save_answers(draft.visit_id, answers, draft.revision, c.t.now):
            fresh = self._reload(c, draft)
            if fresh is None:
                return None
            draft = fresh
            answers = self.form.prune({**draft.answers, **changes})
            if not c.t.store.save_answers(draft.visit_id, answers, draft.revision, c.t.now):
                return None  # (nothing else writes within this transaction)
        return draft.with_answers(answers, draft.revision + 1)

    def _reload(self, c: _Ctx, draft: OpenDraft) -> OpenDraft | None:
        """The draft as stored now; None when it is gone."""
        stored = c.t.store.load_draft(c.staff.id, draft.visit_id)
        if stored is None:
            return None
        return draft.with_answers(self.form.prune(stored.answers), stored.revision)

    def _draft_gone(self, c: _Ctx, draft: OpenDraft) -> list[str]:
        c.go(Idle())
        return [texts.DRAFT_GONE.format(student=_label(draft.student))]

    # ------------------------------------------------------------------ the current list
    def _pick(self, c: _Ctx, n: int) -> list[str]:
        """A bare number: item `n` of the current list."""
        listing = c.conv.listing
        if listing is None:
            return [texts.NO_LIST]
        item = listing.item(n)
        if item is None:
            shown = min(listing.shown, len(listing.items))
            return [texts.NOT_IN_LIST.format(n=n, count=shown) + self._list_hint(listing)]
        if item.kind is ItemKind.AID_NEED:  # a 库存 list: numbers go with 发放 or 送达
            return [texts.AID_NUMBER.format(n=n)]
        if item.kind is ItemKind.REVIEW:
            return [reviews.FOOT.format(categories="、".join(REVIEW_CATEGORIES))]
        if item.kind is ItemKind.FOLLOWUP:
            found = self._followup(c, item.id)
            if found is None:  # (the list shows open ones: this one was done since)
                return [texts.FOLLOWUP_ALREADY_DONE.format(n=n)]
            line = render.followup_line(n, found, self.form.followup_kinds, self.today(c))
            return [texts.FOLLOWUP_SHOWN.format(n=n, line=line.split(". ", 1)[1])]
        picked = c.t.store.find_student(c.staff.id, item.id)
        if picked is None:  # no longer assigned since the list was shown
            return [texts.STUDENT_GONE]
        return self._start(c, *picked)

    def _list_hint(self, listing: Listing) -> str:
        if listing.kind is ListKind.FOLLOWUPS:
            return texts.FOLLOWUPS_FOOT
        return texts.LIST_FOOTER

    def _followup(self, c: _Ctx, followup_id: int) -> FollowUpListing | None:
        return next((f for f in c.t.store.open_followups(c.staff.id) if f.id == followup_id), None)

    # ------------------------------------------------------------------ choosing a student
    def _list(self, c: _Ctx, command: Command, _raw: str) -> list[str]:
        parked = self._park(c)
        mine = c.t.store.my_students(c.staff.id)
        if not mine:  # (a coordinator is not sent to the coordinator)
            teacher = c.staff.role is StaffRole.TEACHER
            return [*parked, texts.NO_STUDENTS if teacher else texts.NO_STUDENTS_COORDINATOR]
        today = self.today(c)
        students = self._by_urgency(self._filtered(mine, command.argument, today), today)
        if not students:
            if _match_name(mine, command.argument) != ([], []):  # `家访 王小雨`: a name
                return [*parked, *self._pick_name(c, command.argument)]
            return [*parked, texts.NO_FILTER_MATCH.format(filter=command.argument[:20])]
        if command.argument:
            head = texts.LIST_HEADER_FILTERED.format(filter=command.argument, count=len(students))
        else:
            head = texts.LIST_HEADER.format(count=len(students))
        items = tuple(Item(ItemKind.STUDENT, s.id) for s in students)
        shown = min(render.PAGE_SIZE, len(students))
        c.show(Listing(ListKind.STUDENTS, items, shown))
        lines = [head, *self._student_page(students, 0, shown, today)]
        drafted = [s for s in mine if s.draft_at is not None]
        if drafted:  # the draft 继续 resumes: the latest changed (as `Store.find_draft` orders)
            latest = max(drafted, key=lambda s: (s.draft_at, s.id))
            label = render.student_label(latest.name, latest.class_name)
            lines.append(texts.DRAFT_HINT.format(count=len(drafted), student=label))
        return [*parked, "\n".join(lines)]

    def _filtered(
        self, students: list[StudentListing], argument: str, today: date
    ) -> list[StudentListing]:
        if not argument:
            return students
        if argument in NOT_VISITED:
            return [s for s in students if s.last_visit_at is None or self._is_due(s, today)]
        by_class = [s for s in students if argument in s.class_name]  # 三年级1班, 三年级
        if by_class:
            return by_class
        return [s for s in students if argument in s.categories]

    def _is_due(self, s: StudentListing, today: date) -> bool:
        due = self._due(s)
        return due is None or due <= today

    def _student_page(
        self, students: Sequence[StudentListing], start: int, end: int, today: date
    ) -> list[str]:
        lines = render.student_lines(
            students[start:end], start + 1, today, self.tz, self._due,
            all_names=[s.name for s in students],
        )  # fmt: skip
        if end < len(students):
            lines.append(texts.LIST_PAGE.format(first=start + 1, last=end, count=len(students)))
        lines.append(texts.LIST_FOOTER)
        return lines

    def _more(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        listing = c.conv.listing
        if listing is None:
            return [texts.NO_LIST]
        if listing.kind is not ListKind.STUDENTS or listing.shown >= len(listing.items):
            return [texts.NO_MORE]
        by_id = {s.id: s for s in c.t.store.my_students(c.staff.id)}
        students = [by_id[i.id] for i in listing.items if i.id in by_id]
        if len(students) != len(listing.items):  # the roster changed meanwhile: list again
            return self._list(c, Command(Cmd.START), "")
        end = min(listing.shown + render.PAGE_SIZE, len(students))
        lines = self._student_page(students, listing.shown, end, self.today(c))
        c.show(replace(listing, shown=end))
        return ["\n".join(lines)]

    def _park(self, c: _Ctx) -> list[str]:
        """Leave a visit in progress as a draft (it is already saved) and say so."""
        if not isinstance(c.state, InVisit | ConfirmDiscard | Checking):
            return []
        draft = c.state.draft
        c.go(Idle())
        if not draft.answers:  # nothing answered yet: nothing to keep
            c.t.store.discard_visit(draft.visit_id, c.t.now)
            return [texts.LEFT_EMPTY.format(student=_label(draft.student))]
        return [texts.PARKED.format(student=_label(draft.student))]

    def _pick_name(self, c: _Ctx, text: str) -> list[str]:
        students = c.t.store.my_students(c.staff.id)
        exact, close = _match_name(students, text)
        if len(exact) == 1:
            found = c.t.store.find_student(c.staff.id, exact[0].id)
            return self._start(c, *found) if found else [texts.STUDENT_GONE]
        if len(close) == 1 and not exact:
            s = close[0]
            c.go(ConfirmStudent(StudentRef(s.id, s.name, s.class_name)))
            c.show(None)  # a number now would pick from a list that is no longer on screen
            label = render.student_label(s.name, s.class_name)
            if sum(1 for x in students if x.name == s.name) > 1:
                label += f" {texts.STUDENT_NO_TAIL.format(tail=s.student_no[-4:])}"
            return [texts.DID_YOU_MEAN.format(student=label)]
        matches = exact or close
        if not matches:
            return self._unplaced(c, text)
        today = self.today(c)
        if exact:
            head = texts.SAME_NAME.format(count=len(matches), name=matches[0].name)
        else:
            head = texts.SEVERAL_MATCHES.format(count=len(matches))
        matches = self._by_urgency(matches, today)
        c.show(
            Listing(
                ListKind.STUDENTS,
                tuple(Item(ItemKind.STUDENT, s.id) for s in matches),
                len(matches),
            )
        )
        lines = render.student_lines(matches, 1, today, self.tz, self._due)
        return ["\n".join([head, *lines])]

    def _unplaced(self, c: _Ctx, text: str) -> list[str]:
        """A reply the bot cannot place: with drafts waiting, list them and how to go on."""
        drafts = c.t.store.my_drafts(c.staff.id)
        if not drafts:
            if isinstance(c.state, Idle) and c.conv.listing is None:
                return [texts.UNKNOWN_IDLE]
            return [texts.NO_SUCH_NAME.format(name=text[:20])]
        items = tuple(Item(ItemKind.STUDENT, d.student.id) for d in drafts)
        c.show(Listing(ListKind.DRAFTS, items, len(items)))
        lines = [texts.UNKNOWN_WITH_DRAFTS.format(count=len(drafts))]
        lines += [
            f"{n}. {_label(d.student)} · {render.md(d.updated_at.astimezone(self.tz).date())}改过"
            for n, d in enumerate(drafts, 1)
        ]
        lines.append(texts.DRAFTS_FOOT)
        return ["\n".join(lines)]

    def _opened(self, draft: Draft) -> OpenDraft:
        """A stored draft as the state's copy; 上一题 steps back through its answers."""
        answers = self.form.prune(draft.answers)
        history = tuple(q.key for q in render.answered(self.form, answers))
        return OpenDraft(
            draft.visit_id, draft.student, states.freeze(answers), draft.revision, history
        )

    def _start(self, c: _Ctx, student: StudentRef, draft: Draft | None) -> list[str]:
        """Open the student's draft `draft`, or start a new visit when there is none."""
        if c.conv.listing is not None and c.conv.listing.kind in (
            ListKind.STUDENTS,
            ListKind.DRAFTS,
        ):
            c.show(None)  # the list a number picked from is used up (a 待跟进 list stays current)
        if draft is not None:
            opened = self._opened(replace(draft, student=student))
            head = texts.VISIT_RESUMED.format(student=_label(student))
        else:
            visit_id = c.t.store.start_visit(
                c.staff.id, student.id, self.form.id, self.form.version, c.t.now
            )
            opened = OpenDraft(visit_id, student, states.freeze({}))
            head = texts.VISIT_STARTED.format(student=_label(student))
        checks = self._checks(c, student, opened)
        if checks:
            c.go(Checking(opened, checks))
            return [f"{head}\n\n{self._prompt(c)}"]
        return self._advance(c, opened, head)

    # ------------------------------------------------------------------ earlier follow-ups (#14)
    def _checks(self, c: _Ctx, student: StudentRef, draft: OpenDraft) -> tuple[Check, ...]:
        """The student's earlier follow-ups this visit asks about first (kinds the form names;
        those already answered in this draft are not asked again)."""
        if not self.form.check_kinds:
            return ()
        answered = draft.answers.get(CHECKS_KEY) or {}
        return tuple(
            Check(
                f.id,
                f.kind,
                f.detail,
                f.closed_at.astimezone(self.tz).date() if f.closed_at else None,
                f.note or "",
                f.aid_item,
                f.allocation_id,
            )
            for f in c.t.store.followups_to_check(student.id)
            if f.kind in self.form.check_kinds and str(f.id) not in answered
        )

    def _check_prompt(self, check: Check) -> str:
        need = self.form.followup_kinds.get(check.kind, check.kind)
        if check.done_on is None:
            status = texts.CHECK_OPEN.format(detail=check.detail.rstrip("。"))
        else:
            note = f"：{check.note}" if check.note else ""
            status = texts.CHECK_DONE.format(date=render.md(check.done_on), note=note)
        asked = self.form.check_prompt.format(need=need, status=status)
        if check.item:
            return asked + texts.AID_CHECK.format(item=check.item) + texts.AID_CHECK_OPTIONS
        return asked + texts.CHECK_OPTIONS

    def _check_answer(self, c: _Ctx, checking: Checking, raw: str) -> list[str]:
        word = strip_edges(normalize(raw))
        check, rest = checking.checks[0], checking.checks[1:]
        aid = ""
        if check.item:  # 在用 settles the need; 没收到 / 用不了 keep it open
            aid = next((k for k, w in texts.AID_CHECK_WORDS.items() if word in w), "")
            if not aid:
                return [self._with_prompt(c, texts.AID_CHECK_AGAIN)]
            answer = CHECK_RESOLVED if aid == "in_use" else CHECK_STILL
        elif word in texts.CHECK_RESOLVED_WORDS:
            answer = CHECK_RESOLVED
        elif word in texts.CHECK_STILL_WORDS:
            answer = CHECK_STILL
        else:
            return [self._with_prompt(c, texts.CHECK_AGAIN)]
        done = dict(checking.draft.answers.get(CHECKS_KEY) or {})
        entry: dict[str, Any] = {
            "answer": answer,
            "kind": check.kind,
            "detail": check.detail,
            "was_done": check.done_on is not None,
        }
        if aid:
            entry |= {"aid": aid, "item": check.item, "allocation": check.allocation}
        done[str(check.followup)] = entry
        saved = self._save(c, checking.draft, {CHECKS_KEY: done})
        if saved is None:
            return self._draft_gone(c, checking.draft)
        if rest:
            c.go(Checking(saved, rest))
            return [self._prompt(c) or ""]
        return self._advance(c, saved)

    def _settle_checks(
        self, answers: Mapping[str, Any], today: date
    ) -> tuple[list[NewFollowUp], list[int]]:
        """What the answers about earlier follow-ups call for at submission: a need done before
        but "仍需帮助" is a new follow-up linked to the old one; an open one "已解决" is to be
        closed (the follow-ups to close)."""
        again: list[NewFollowUp] = []
        resolved: list[int] = []
        for fid, entry in (answers.get(CHECKS_KEY) or {}).items():
            if entry.get("answer") == CHECK_STILL and entry.get("was_done"):
                due = self.cadence.school_day_from(today + timedelta(self.form.check_due_days))
                again.append(NewFollowUp(entry["kind"], entry["detail"], due, int(fid)))
            elif entry.get("answer") == CHECK_RESOLVED and not entry.get("was_done"):
                resolved.append(int(fid))
        return again, resolved

    # ------------------------------------------------------------------ answering
    def _answer(self, c: _Ctx, answering: Answering, raw: str) -> list[str]:
        q = self.form.question(answering.question)
        if q.type is QType.TEXT:
            free = clean_free_text(raw)
            if len(free) > q.max_length:
                return self._ask_cut(
                    c,
                    ConfirmCut(free[: q.max_length], len(free), answering.draft, q.key),
                    q.max_length,
                )
        try:
            value = parse_answer(q, raw, self.today(c))
        except InvalidAnswer as exc:
            return [self._with_prompt(c, exc.reason)]
        return self._store_answer(c, answering.draft, q.key, value)

    def _store_answer(self, c: _Ctx, draft: OpenDraft, key: str, value: Any) -> list[str]:
        saved = self._save(c, draft, {key: value})
        if saved is None:
            return self._draft_gone(c, draft)
        if not saved.history or saved.history[-1] != key:
            saved = OpenDraft(
                saved.visit_id, saved.student, saved.answers, saved.revision, (*saved.history, key)
            )
        return self._advance(c, saved)

    def _ask_cut(self, c: _Ctx, cut: ConfirmCut, limit: int) -> list[str]:
        c.go(cut)
        return [texts.CUT_ASK.format(length=cut.length, limit=limit, end=cut.text[-8:])]

    def _note_cut(self, c: _Ctx, n: int, followup: int, note: str) -> list[str]:
        """Ask before cutting a 完成 note; a visit in progress is where the teacher returns."""
        draft, question = None, ""
        if isinstance(c.state, InVisit):
            draft = c.state.draft
            question = c.state.question if isinstance(c.state, Answering) else ""
        cut = ConfirmCut(note[:MAX_NOTE], len(note), draft, question, followup, n)
        return self._ask_cut(c, cut, MAX_NOTE)

    def _apply_cut(self, c: _Ctx, cut: ConfirmCut) -> list[str]:
        if cut.followup:
            return self._close(c, cut.number, cut.followup, cut.text)
        assert cut.draft is not None
        return self._store_answer(c, cut.draft, cut.question, cut.text)

    def _skip(self, c: _Ctx, _c: Command, _raw: str) -> list[str] | None:
        match c.state:
            case Idle():
                return None
            case Answering(draft=d, question=key) if not self.form.question(key).required:
                draft = self._save(c, d, {key: None})
                if draft is None:
                    return self._draft_gone(c, d)
                return self._advance(c, replace(draft, history=(*draft.history, key)))
        return [self._with_prompt(c, texts.NOT_OPTIONAL)]

    def _back(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        if not isinstance(c.state, InVisit):
            return [texts.NOT_IN_VISIT]
        draft = c.state.draft
        history = list(draft.history)
        current = c.state.question if isinstance(c.state, Answering) else None
        while history and history[-1] == current:
            history.pop()
        if isinstance(c.state, Reviewing):
            shown = render.answered(self.form, draft.answers)
            if not shown:
                return [self._with_prompt(c, texts.FIRST_QUESTION)]
            target = shown[-1].key
        elif history:
            target = history.pop()
        else:
            return [self._with_prompt(c, texts.FIRST_QUESTION)]
        c.go(Answering(replace(draft, history=tuple(history)), target))
        return [self._prompt(c) or ""]

    def _edit(self, c: _Ctx, command: Command, _raw: str) -> list[str]:
        if not isinstance(c.state, InVisit):
            return [texts.NOT_IN_VISIT]
        draft = c.state.draft
        shown = render.answered(self.form, draft.answers)
        assert command.number is not None
        if not 1 <= command.number <= len(shown):
            reason = texts.NO_SUCH_ITEM.format(n=command.number, count=len(shown))
            return [self._with_prompt(c, reason)]
        c.go(Answering(draft, shown[command.number - 1].key))
        return [self._prompt(c) or ""]

    def _submit(self, c: _Ctx, _c: Command, _raw: str) -> list[str] | None:
        if not isinstance(c.state, Reviewing):
            return None  # "提交" is ordinary text outside the summary
        draft = c.state.draft
        answers = self.form.prune(draft.answers)
        if self.form.next_question(answers) is not None:
            return self._advance(c, draft)
        if draft.student.id == 0:  # a session saved before student ids were kept in it
            stored = c.t.store.load_draft(c.staff.id, draft.visit_id)
            if stored is not None:
                draft = replace(draft, student=stored.student)
        today = self.today(c)
        found = [
            replace(f, due_date=self.cadence.school_day_from(f.due_date))
            for f in self.form.followups(answers, today)
        ]
        again, resolved = self._settle_checks(answers, today)
        asked = {(n.kind, n.detail) for n in found}
        found += [f for f in again if (f.kind, f.detail) not in asked]
        reached = self.form.reached(answers)
        method = self.form.method(answers)
        store = c.t.store
        if not store.submit_visit(
            draft.visit_id, draft.revision, answers, method, reached, found, c.t.now
        ):
            fresh = self._reload(c, draft)
            if fresh is None:
                return self._draft_gone(c, draft)
            # Changed on another channel since this summary was shown: show it again.
            return self._advance(c, fresh, texts.DRAFT_CHANGED)
        for fid in resolved:  # (only if still the teacher's; a colleague's stays theirs)
            store.close_followup(c.staff.id, fid, texts.CHECK_CLOSED_NOTE, c.t.now)
        aid_alerts = self._settle_aid(c, draft, answers)
        review_opened = self._open_review(c, draft, answers)
        c.go(Idle())
        c.conv = replace(c.conv, last=LastAction(ItemKind.STUDENT, draft.visit_id, c.t.now))
        student = _label(draft.student)
        lines = [
            (texts.SUBMITTED if reached else texts.SUBMITTED_UNREACHED).format(student=student)
        ]
        if found:
            lines.append(render.new_followups(self.form, found))
        told = self._tell_the_school(c, draft, found, reached, aid_alerts)
        if told:
            lines.append(told)
        if review_opened:
            lines.append(reviews.VISIT_REVIEW_OPENED)
        lines += [texts.UNDO_HINT, texts.NEXT_HINT]
        return ["\n".join(lines)]

    def _settle_aid(
        self, c: _Ctx, draft: OpenDraft, answers: Mapping[str, Any]
    ) -> list[tuple[str, str]]:
        """Record what the visit found of each allocated aid item; the coordinators' messages
        for those not received or unusable, as (key part, text)."""
        bodies = []
        for entry in (answers.get(CHECKS_KEY) or {}).values():
            allocation, outcome = entry.get("allocation"), entry.get("aid")
            if not allocation or outcome not in SETTLED:
                continue
            settled = c.t.store.settle_allocation(int(allocation), outcome, c.t.now)
            if settled and outcome != "in_use":
                text = texts.ALERT_AID.format(
                    teacher=c.staff.name,
                    student=_label(draft.student),
                    item=entry.get("item", ""),
                    outcome=texts.AID_OUTCOME[outcome],
                )
                bodies.append((f"aid{int(allocation)}", text))
        return bodies

    def _open_review(self, c: _Ctx, draft: OpenDraft, answers: Mapping[str, Any]) -> bool:
        """The form's `aid_review` answer: an aid review for the school's coordinator (one open
        a student; a second 是 while one waits adds none)."""
        form = self.form
        given = answers.get(form.review_key) if form.review_key else None
        chosen = given if isinstance(given, list) else [given]
        if form.review_key is None or form.review_answer not in chosen:
            return False
        note = str(answers.get(form.review_note_key) or "") if form.review_note_key else ""
        opened = c.t.store.open_review(c.staff, draft.student.id, "", "", note, c.t.now)
        if opened is None:
            return False
        self.reviews.tell_school(c, opened)
        return True

    def _tell_the_school(
        self,
        c: _Ctx,
        draft: OpenDraft,
        found: Sequence[NewFollowUp],
        reached: bool,
        aid_alerts: Sequence[tuple[str, str]] = (),
    ) -> str | None:
        """Queue the coordinators' messages this submission calls for; what to tell the
        teacher about it (None: nothing called for)."""
        student, store = draft.student, c.t.store
        bodies: list[tuple[str, str]] = list(aid_alerts)  # (key part, text)
        if not reached:
            attempts = store.unreached_attempts(student.id)
            if len(attempts) == self.alerts.unreached_after:
                days = "、".join(render.md(a.astimezone(self.tz).date()) for a in attempts)
                text = texts.ALERT_UNREACHED.format(
                    student=_label(student), count=len(attempts), days=days, teacher=c.staff.name
                )
                bodies.append(("unreached", text))
        urgent = [f for f in found if f.kind in self.form.urgent_kinds]
        if urgent:
            needs = "；".join(
                f"{self.form.followup_kinds.get(f.kind, f.kind)}：{f.detail}" for f in urgent
            )
            text = texts.ALERT_URGENT.format(
                teacher=c.staff.name, student=_label(student), needs=needs
            )
            bodies.append(("urgent", text))
        if not bodies:
            return None
        not_before = self.alerts.quiet(c.t.now) or c.t.now
        told = False
        for person in store.school_coordinators(student.id):
            order = reach_order(person, self.alerts.channels)
            if not order:
                continue
            (channel, recipient), *rest = order
            for kind, body in bodies:
                # (the visit and its revision in the key: 撤销 withdraws it, a corrected
                # submission is a message of its own)
                key = f"alert:{draft.visit_id}:{draft.revision}:{kind}:{person.staff_no}"
                message = OutboxMessage(
                    key, channel, recipient, "alert", body, fallbacks=tuple(rest)
                )
                told = store.queue_message(message, not_before, c.t.now) or told
        return texts.SCHOOL_TOLD if told else texts.SCHOOL_NOT_REACHABLE

    def _discard(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        if not isinstance(c.state, InVisit):
            return [texts.NOT_IN_VISIT]
        draft = c.state.draft
        answered = len(render.answered(self.form, draft.answers))
        if not answered:  # nothing to lose: no need to ask
            return self._drop_draft(c, draft)
        question = c.state.question if isinstance(c.state, Answering) else None
        c.go(ConfirmDiscard(draft, question))
        return [texts.DISCARD_ASK.format(student=_label(draft.student), count=answered)]

    def _confirm_discard(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        if not isinstance(c.state, ConfirmDiscard):
            return [texts.NOTHING_TO_DISCARD]
        return self._drop_draft(c, c.state.draft)

    def _drop_draft(self, c: _Ctx, draft: OpenDraft) -> list[str]:
        c.t.store.discard_visit(draft.visit_id, c.t.now)
        c.go(Idle())
        return [texts.DISCARDED.format(student=_label(draft.student))]

    def _cancel(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        """取消 leaves whatever is going on; a draft is kept (放弃 deletes one)."""
        parked = self._park(c)
        if parked:
            return parked
        if c.conv.listing is not None or not isinstance(c.state, Idle):
            c.go(Idle())
            return [texts.LEFT_LIST]
        return [texts.NOTHING_TO_CANCEL]

    def _later(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        return self._park(c) or [texts.NOT_IN_VISIT]

    def _resume(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        if isinstance(c.state, InVisit):
            return [self._prompt(c) or ""]
        # (only a draft of a student still assigned to them: a reassigned one stays, hidden)
        draft = c.t.store.find_draft(c.staff.id)
        if draft is None:
            return [texts.NO_DRAFT]
        return self._start(c, draft.student, draft)

    def _help(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        return [self._with_prompt(c, coordinate.help_for(c.staff.role))]

    # ------------------------------------------------------------------ coordinators (#14)
    def _coordinating(self, c: _Ctx, command: Command, raw: str) -> list[str] | None:
        """逾期, 上报, 确认 N, 转交 N 工号, 催办 工号: coordinators and bureau only."""
        if isinstance(c.state, InVisit) and command.cmd is not Cmd.ACK:
            return None  # inside a visit these are answers (a free-text note may say 逾期)
        if c.staff.role not in (StaffRole.COORDINATOR, StaffRole.BUREAU):
            word = strip_edges(normalize(raw)).split(" ")[0]
            return [self._with_prompt(c, coordinate.FOR_COORDINATORS.format(word=word[:10]))]
        co = self.coordination
        match command.cmd:
            case Cmd.OVERDUE:
                return co.overdue(c)
            case Cmd.ESCALATED:
                return co.escalated(c)
            case Cmd.ACK:
                assert command.number is not None
                return co.acknowledge(c, command.number, ack_note(clean_free_text(raw)))
            case Cmd.REASSIGN:
                return co.reassign(c, command.number, command.argument)
            case Cmd.NUDGE:
                return co.nudge(c, command.argument, self._due_students)
            case Cmd.OVERVIEW:
                return co.overview(c)
            case Cmd.STOCK:
                return self.aid.stock(c)
            case Cmd.ALLOCATE:
                return self.aid.allocate(c, command.number, command.argument)
            case Cmd.ARRIVAL:
                return self.aid.arrival(c, command.number, command.argument)
        return co.unvisited(c)

    def _delivered(self, c: _Ctx, command: Command, _raw: str) -> list[str] | None:
        """送达 N: the item allocated to need N of the current list arrived."""
        if isinstance(c.state, InVisit):
            return None  # inside a visit it is an answer
        lists = (ListKind.FOLLOWUPS, ListKind.AID, ListKind.ESCALATIONS)
        return self.aid.delivered(c, command.number, lists)

    def _reviewing(self, c: _Ctx, command: Command, raw: str) -> list[str] | None:
        """新增学生 (anyone with a school), 待认定, 认定 N 类别, 不认定 N 原因 (coordinators)."""
        if isinstance(c.state, InVisit):
            return None  # inside a visit these are answers
        r = self.reviews
        if command.cmd is Cmd.REPORT:
            return r.report(c, review_text(clean_free_text(raw)))
        if not r.allowed(c):
            word = strip_edges(normalize(raw)).split(" ")[0]
            return [self._with_prompt(c, reviews.FOR_COORDINATORS.format(word=word[:10]))]
        match command.cmd:
            case Cmd.APPROVE:
                return r.approve(c, command.number, command.argument)
            case Cmd.DECLINE:
                return r.decline(c, command.number, review_text(clean_free_text(raw)))
        return r.pending(c)

    def _unvisited(self, c: _Ctx, command: Command, raw: str) -> list[str] | None:
        """未访: for a teacher, their students due (as 家访 未访)."""
        if c.staff.role is StaffRole.TEACHER:
            return self._list(c, Command(Cmd.START, argument=NOT_VISITED[0]), raw)
        return self._coordinating(c, command, raw)

    # ------------------------------------------------------------------ follow-ups, progress
    def _todo(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        items = c.t.store.open_followups(c.staff.id)
        ids = tuple(Item(ItemKind.FOLLOWUP, f.id) for f in items)
        c.show(Listing(ListKind.FOLLOWUPS, ids, len(ids)) if ids else None)
        messages = render.followup_list(items, self.form.followup_kinds, self.today(c))
        prompt = self._prompt(c)
        return [*messages, prompt] if prompt else messages

    def _done(self, c: _Ctx, command: Command, raw: str) -> list[str]:
        assert command.number is not None
        n = command.number
        if c.staff.role in (StaffRole.COORDINATOR, StaffRole.BUREAU):
            return self.coordination.close(c, n, done_note(clean_free_text(raw)))
        listing = c.conv.listing
        if listing is None:  # no list on screen: show it, rather than guess which N is meant
            return [texts.DONE_WHICH, *self._todo(c, command, raw)]
        item = listing.item(n)
        if item is None or item.kind is not ItemKind.FOLLOWUP:
            return [self._with_prompt(c, texts.NO_SUCH_FOLLOWUP.format(n=n))]
        return self._close(c, n, item.id, done_note(clean_free_text(raw)))

    def _close(self, c: _Ctx, n: int, followup: int, note: str) -> list[str]:
        if len(note) > MAX_NOTE:
            return self._note_cut(c, n, followup, note)
        closed = c.t.store.close_followup(c.staff.id, followup, note, c.t.now)
        if closed is None:  # done already (or no longer theirs)
            return [self._with_prompt(c, texts.FOLLOWUP_ALREADY_DONE.format(n=n))]
        c.conv = replace(c.conv, last=LastAction(ItemKind.FOLLOWUP, followup, c.t.now))
        text = texts.FOLLOWUP_DONE.format(
            n=n,
            student=render.student_label(closed.student_name, closed.class_name),
            kind=self.form.followup_kinds.get(closed.kind, closed.kind),
            detail=closed.detail.rstrip("。"),
            note=texts.FOLLOWUP_NOTE.format(note=note) if note else "",
        )
        return [self._with_prompt(c, f"{text.rstrip().rstrip('。')}。\n{texts.UNDO_HINT}")]

    def _undo(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        last = c.conv.last
        if last is None or c.t.now - last.at > UNDO_WINDOW:
            return [self._with_prompt(c, texts.NOTHING_TO_UNDO)]
        if isinstance(c.state, InVisit) and last.kind is ItemKind.STUDENT:
            # (in the middle of another visit "撤销" may mean the last answer: 上一题 does that)
            return [self._with_prompt(c, texts.UNDO_IN_VISIT)]
        c.conv = replace(c.conv, last=None)
        if last.kind is ItemKind.FOLLOWUP:
            reopened = c.t.store.reopen_followup(c.staff.id, last.id)
            if reopened is None:
                return [self._with_prompt(c, texts.NOTHING_TO_UNDO)]
            text = texts.UNDONE_FOLLOWUP.format(
                student=render.student_label(reopened.student_name, reopened.class_name),
                kind=self.form.followup_kinds.get(reopened.kind, reopened.kind),
                detail=reopened.detail,
            )
            return [self._with_prompt(c, text)]
        draft = c.t.store.reopen_visit(c.staff.id, last.id, c.t.now)
        if draft is None:
            return [self._with_prompt(c, texts.CANNOT_UNDO_VISIT)]
        for fid in self._settle_checks(draft.answers, self.today(c))[1]:
            c.t.store.reopen_followup(c.staff.id, fid)  # what its "已解决" closed is open again
        c.t.store.withdraw_messages(f"alert:{last.id}:")  # what it told the school, if still unsent
        parked = self._park(c)
        head = texts.UNDONE_VISIT.format(student=_label(draft.student))
        return [*parked, *self._advance(c, self._opened(draft), head)]

    def _progress(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        since = c.t.now - timedelta(days=self.cadence.default_days)
        cov = c.t.store.coverage(c.staff.id, since, self.today(c))
        left = cov.total - cov.visited
        text = texts.PROGRESS.format(
            days=self.cadence.default_days,
            visited=cov.visited,
            total=cov.total,
            rest=texts.PROGRESS_REST.format(left=left) if left else "",
            open=cov.open_followups,
            overdue=cov.overdue_followups,
        )
        return [self._with_prompt(c, text)]

    def _console(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        """A one-time sign-in link for coordinators and bureau staff (only its hash is kept)."""
        if c.staff.role not in (StaffRole.COORDINATOR, StaffRole.BUREAU):
            return [self._with_prompt(c, texts.CONSOLE_NOT_FOR_TEACHERS)]
        token = new_secret()
        c.t.store.add_console_token(c.staff.id, secret_hash(token), c.t.now + TOKEN_TTL, c.t.now)
        minutes = int(TOKEN_TTL.total_seconds() // 60)
        link = texts.CONSOLE_LINK.format(minutes=minutes, url=login_url(self.public_url, token))
        return [self._with_prompt(c, link)]


# ---------------------------------------------------------------------- module helpers
def _match_name(
    students: list[StudentListing], text: str
) -> tuple[list[StudentListing], list[StudentListing]]:
    """(students called `text`, students it may mean). "姓名 班级" (or the class written right
    after the name) narrows the first; the second holds names that contain `text` or that it
    contains (`浩然`), and names one character off (`李皓然` for 李浩然, three characters or
    more so that two-character words do not pass for names)."""
    text = text.strip()
    exact = [s for s in students if s.name == text]
    if not exact:
        for s in students:
            if text.startswith(s.name):
                rest = text[len(s.name) :].strip()
                if rest and rest in s.class_name:
                    exact.append(s)
    if exact:
        return exact, []
    close = [s for s in students if len(text) >= 2 and (text in s.name or s.name in text)]
    if not close and len(text) >= 3:
        close = [s for s in students if _one_off(s.name, text)]
    return [], close


def _one_off(a: str, b: str) -> bool:
    """One character changed, added or left out."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _resume(draft: OpenDraft | None, question: str) -> State:
    """Where a confirmation returns to: the question, the summary, or no visit at all."""
    if draft is None:
        return Idle()
    return Answering(draft, question) if question else Reviewing(draft)
