"""The default conversation: commands at any time, picking a student, the form, the summary.

The states are typed values (`handlers.states`): Idle → Choosing (a numbered list was shown) →
Answering (a draft visit is open) ⇄ Reviewing (the summary) → Idle. The draft's answers live in
the visit row (the durable draft, written after every answer) and are copied into the state so a
turn needs no extra read; the copy's revision tells the store when another channel changed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.engine import Turn
from bot.core.errors import InvalidAnswer
from bot.core.signin import TOKEN_TTL, login_url, new_secret, secret_hash
from bot.core.types import Draft, MessageKind, Staff, StaffRole, StudentListing, StudentRef
from config.forms import Form
from handlers import render, states, texts
from handlers.answers import clean_free_text, normalize, parse_answer
from handlers.cadence import Cadence, urgency_key
from handlers.commands import Cmd, Command, done_note, parse_command
from handlers.states import (
    Answering,
    Choosing,
    Conversation,
    Idle,
    InVisit,
    OpenDraft,
    Reviewing,
    State,
)

MAX_MESSAGE = 2000  # characters; longer messages are refused before any parsing
MAX_NOTE = 500


@dataclass(slots=True)
class _Ctx:
    """One turn of the conversation: the engine's turn, who is talking, where they are."""

    t: Turn
    staff: Staff
    conv: Conversation

    @property
    def state(self) -> State:
        return self.conv.state

    def go(self, state: State) -> None:
        self.conv = replace(self.conv, state=state)


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
        public_url: str = "http://127.0.0.1:8080",
    ) -> None:
        self.form = form
        self.tz = tz
        self.cadence = cadence or Cadence()
        self.public_url = public_url
        self._commands: dict[Cmd, Handler] = {
            Cmd.START: self._list,
            Cmd.LIST: self._list,
            Cmd.HELP: self._help,
            Cmd.CANCEL: self._cancel,
            Cmd.BACK: self._back,
            Cmd.SKIP: self._skip,
            Cmd.EDIT: self._edit,
            Cmd.LATER: self._later,
            Cmd.RESUME: self._resume,
            Cmd.TODO: self._todo,
            Cmd.DONE: self._done,
            Cmd.PROGRESS: self._progress,
            Cmd.CONSOLE: self._console,
            Cmd.SUBMIT: self._submit,
            Cmd.DISCARD: self._discard,
        }

    # ------------------------------------------------------------------ entry
    def __call__(self, t: Turn) -> list[str]:
        if t.staff is None:
            return [texts.NOT_REGISTERED.format(user_id=t.message.user_id)]
        c = _Ctx(t, t.staff, states.load(t.session.state, t.session.data))
        notices = []
        if t.expired:
            if isinstance(c.state, InVisit):
                notices.append(texts.EXPIRED_DRAFT.format(student=_label(c.state.draft.student)))
            c.go(Idle())
        replies = notices + self._reply(c)
        t.session.state, t.session.data = states.dump(c.conv)
        return replies

    def _reply(self, c: _Ctx) -> list[str]:
        msg = c.t.message
        if msg.kind is MessageKind.EVENT:
            return [texts.GREETING.format(name=c.staff.name) + "\n\n" + texts.HELP]
        if msg.kind is MessageKind.UNSUPPORTED:
            return [self._with_prompt(c, texts.TEXT_ONLY)]
        if len(msg.text) > MAX_MESSAGE:
            reason = texts.TOO_LONG_MESSAGE.format(length=len(msg.text), limit=MAX_MESSAGE)
            return [self._with_prompt(c, reason)]
        text = normalize(msg.text)
        if not text:
            return [self._with_prompt(c, texts.EMPTY_ANSWER)]
        command = parse_command(text)
        if command is not None:
            replies = self._commands[command.cmd](c, command, msg.text)
            if replies is not None:
                return replies
        return self._by_state(c, msg.text, text)

    def _by_state(self, c: _Ctx, raw: str, text: str) -> list[str]:
        match c.state:
            case Answering() as answering:
                return self._answer(c, answering, raw)
            case Reviewing():
                return [texts.SUMMARY_EXPECT]
            case Choosing() as choosing if text.isdecimal():  # (not isdigit: int() refuses ፩)
                return self._pick_number(c, choosing, int(text))
        return self._pick_name(c, text, from_idle=isinstance(c.state, Idle))

    # ------------------------------------------------------------------ helpers
    def _due(self, s: StudentListing) -> date | None:
        local = [
            None if v is None else v.astimezone(self.tz).date()
            for v in (s.last_visit_at, s.last_unreached_at)
        ]
        return self.cadence.due_date(s.categories, local[0], local[1])

    def _by_urgency(self, students: list[StudentListing]) -> list[StudentListing]:
        """Most overdue first (never visited before all); ties by class, name, number."""
        return sorted(
            students,
            key=lambda s: (urgency_key(self._due(s)), s.class_name, s.name, s.student_no),
        )

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
            case Choosing():
                return texts.PICK_HINT
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

    # ------------------------------------------------------------------ choosing a student
    def _list(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        parked = self._park(c)
        students = self._by_urgency(c.t.store.my_students(c.staff.id))
        if not students:
            c.go(Idle())
            return [*parked, texts.NO_STUDENTS]
        body = render.student_list(students, self.today(c), self.tz, self._due)
        drafted = [s for s in students if s.draft_at is not None]
        if drafted:  # the draft 继续 resumes: the latest changed (as `Store.find_draft` orders)
            latest = max(drafted, key=attrgetter("draft_at", "id"))
            label = render.student_label(latest.name, latest.class_name)
            body += "\n" + texts.DRAFT_HINT.format(student=label)
        c.go(Choosing(tuple(s.id for s in students)))
        return [*parked, body]

    def _park(self, c: _Ctx) -> list[str]:
        """Leave a visit in progress as a draft (it is already saved) and say so."""
        if not isinstance(c.state, InVisit):
            return []
        student = c.state.draft.student
        c.go(Idle())
        return [texts.PARKED.format(student=_label(student))]

    def _pick_number(self, c: _Ctx, choosing: Choosing, n: int) -> list[str]:
        choices = choosing.choices
        if not 1 <= n <= len(choices):
            return [texts.NO_SUCH_NUMBER.format(n=n, count=len(choices))]
        found = c.t.store.find_student(c.staff.id, choices[n - 1])
        if found is None:  # no longer assigned since the list was shown
            return [texts.NO_SUCH_NUMBER.format(n=n, count=len(choices))]
        return self._start(c, *found)

    def _pick_name(self, c: _Ctx, text: str, *, from_idle: bool) -> list[str]:
        students = c.t.store.my_students(c.staff.id)
        matches = _match_name(students, text)
        if len(matches) == 1:
            found = c.t.store.find_student(c.staff.id, matches[0].id)
            if found is None:  # (the list was read in this same turn)
                return [texts.NO_SUCH_NAME.format(name=text[:20])]
            return self._start(c, *found)
        if from_idle and not matches:
            return [texts.UNKNOWN_IDLE]
        if not matches:
            return [texts.NO_SUCH_NAME.format(name=text[:20])]
        lines = [texts.SAME_NAME.format(count=len(matches), name=matches[0].name)]
        lines += [
            render.student_line(i, s, self.today(c), self.tz, self._due(s))
            for i, s in enumerate(matches, 1)
        ]
        c.go(Choosing(tuple(s.id for s in matches)))
        return ["\n".join(lines)]

    def _start(self, c: _Ctx, student: StudentRef, draft: Draft | None) -> list[str]:
        """Open the student's draft `draft`, or start a new visit when there is none."""
        if draft is not None:
            answers = self.form.prune(draft.answers)
            # 上一题 after resuming a draft steps back through the answers already given.
            history = tuple(q.key for q in render.answered(self.form, answers))
            opened = OpenDraft(
                draft.visit_id, student, states.freeze(answers), draft.revision, history
            )
            head = texts.VISIT_RESUMED.format(student=_label(student))
        else:
            visit_id = c.t.store.start_visit(
                c.staff.id, student.id, self.form.id, self.form.version, c.t.now
            )
            opened = OpenDraft(visit_id, student, states.freeze({}))
            head = texts.VISIT_STARTED.format(student=_label(student), version=self.form.version)
        return self._advance(c, opened, head)

    # ------------------------------------------------------------------ answering
    def _answer(self, c: _Ctx, answering: Answering, raw: str) -> list[str]:
        q = self.form.question(answering.question)
        try:
            value = parse_answer(q, raw, self.today(c))
        except InvalidAnswer as exc:
            return [self._with_prompt(c, exc.reason)]
        draft = self._save(c, answering.draft, {q.key: value})
        if draft is None:
            return self._draft_gone(c, answering.draft)
        if not draft.history or draft.history[-1] != q.key:
            draft = replace(draft, history=(*draft.history, q.key))
        return self._advance(c, draft)

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
        found = self.form.followups(answers, self.today(c))
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
        c.go(Idle())
        student = _label(draft.student)
        lines = [
            (texts.SUBMITTED if reached else texts.SUBMITTED_UNREACHED).format(student=student)
        ]
        if found:
            lines.append(render.new_followups(self.form, found))
        lines.append(texts.NEXT_HINT)
        return ["\n".join(lines)]

    def _discard(self, c: _Ctx, _c: Command, _raw: str) -> list[str] | None:
        if not isinstance(c.state, Reviewing):
            return None
        return self._drop_draft(c, c.state.draft)

    def _drop_draft(self, c: _Ctx, draft: OpenDraft) -> list[str]:
        c.t.store.discard_visit(draft.visit_id, c.t.now)
        c.go(Idle())
        return [texts.DISCARDED.format(student=_label(draft.student))]

    def _cancel(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        match c.state:
            case Answering(draft=draft) | Reviewing(draft=draft):
                return self._drop_draft(c, draft)
            case Choosing():
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
        return [self._with_prompt(c, texts.HELP)]

    # ------------------------------------------------------------------ follow-ups, progress
    def _todo(self, c: _Ctx, _c: Command, _raw: str) -> list[str]:
        items = c.t.store.open_followups(c.staff.id)
        c.conv = replace(c.conv, followups=tuple(f.id for f in items))
        body = render.followup_list(items, self.form.followup_kinds, self.today(c))
        return [self._with_prompt(c, body)]

    def _done(self, c: _Ctx, command: Command, raw: str) -> list[str]:
        assert command.number is not None
        ids = c.conv.followups or tuple(f.id for f in c.t.store.open_followups(c.staff.id))
        note = done_note(clean_free_text(raw))
        if len(note) > MAX_NOTE:
            reason = texts.NOTE_TOO_LONG.format(length=len(note), limit=MAX_NOTE)
            return [self._with_prompt(c, reason)]
        closed = None
        if 1 <= command.number <= len(ids):
            closed = c.t.store.close_followup(c.staff.id, ids[command.number - 1], note, c.t.now)
        if closed is None:
            return [self._with_prompt(c, texts.NO_SUCH_FOLLOWUP.format(n=command.number))]
        text = texts.FOLLOWUP_DONE.format(
            student=render.student_label(closed.student_name, closed.class_name),
            kind=self.form.followup_kinds.get(closed.kind, closed.kind),
            detail=closed.detail,
            note=texts.FOLLOWUP_NOTE.format(note=note) if note else "",
        )
        return [self._with_prompt(c, text.rstrip())]

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
def _match_name(students: list[StudentListing], text: str) -> list[StudentListing]:
    """Students called `text`; "姓名 班级" (or the class written right after) narrows it down."""
    exact = [s for s in students if s.name == text]
    if exact:
        return exact
    matches = []
    for s in students:
        if text.startswith(s.name):
            rest = text[len(s.name) :].strip()
            if rest and rest in s.class_name:
                matches.append(s)
    return matches
