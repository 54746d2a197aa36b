"""The default conversation: commands at any time, picking a student, the form, the summary.

Session states: idle → choosing (a numbered list was shown) → question (a draft visit is open)
→ summary → idle. The draft's answers live in the visit row (the durable draft, written after
every answer) and are mirrored in the session so a turn needs no extra read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.engine import Turn
from bot.core.errors import InvalidAnswer
from bot.core.types import Draft, MessageKind, Session, Staff, StudentListing
from handlers import render, texts
from handlers.answers import clean_free_text, normalize, parse_answer
from handlers.cadence import Cadence, urgency_key
from handlers.commands import Cmd, Command, done_note, parse_command
from handlers.forms import Form

IDLE, CHOOSING, QUESTION, SUMMARY = "idle", "choosing", "question", "summary"
IN_VISIT = (QUESTION, SUMMARY)
MAX_MESSAGE = 2000  # characters; longer messages are refused before any parsing
MAX_NOTE = 500
KEEP_ACROSS_STATES = ("fu",)  # the numbering of the last 待跟进 list, used by 完成 N


class CheckIn:
    """Callable conversation for `bot.core.engine.Engine`."""

    def __init__(self, form: Form, tz: ZoneInfo, cadence: Cadence | None = None) -> None:
        self.form = form
        self.tz = tz
        self.cadence = cadence or Cadence()
        self._commands: dict[Cmd, Callable[[Turn, Command, str], list[str] | None]] = {
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
            Cmd.SUBMIT: self._submit,
            Cmd.DISCARD: self._discard,
        }

    # ------------------------------------------------------------------ entry
    def __call__(self, t: Turn) -> list[str]:
        if t.staff is None:
            return [texts.NOT_REGISTERED.format(user_id=t.message.user_id)]
        notices = []
        if t.expired:
            if t.session.state in IN_VISIT:
                notices.append(texts.EXPIRED_DRAFT.format(student=t.session.data["student"]))
            _idle(t.session)
        return notices + self._reply(t, t.staff)

    def _reply(self, t: Turn, staff: Staff) -> list[str]:
        msg = t.message
        if msg.kind is MessageKind.EVENT:
            return [texts.GREETING.format(name=staff.name) + "\n\n" + texts.HELP]
        if msg.kind is MessageKind.UNSUPPORTED:
            return [self._with_prompt(t, texts.TEXT_ONLY)]
        if len(msg.text) > MAX_MESSAGE:
            reason = texts.TOO_LONG_MESSAGE.format(length=len(msg.text), limit=MAX_MESSAGE)
            return [self._with_prompt(t, reason)]
        text = normalize(msg.text)
        if not text:
            return [self._with_prompt(t, texts.EMPTY_ANSWER)]
        command = parse_command(text)
        if command is not None:
            replies = self._commands[command.cmd](t, command, msg.text)
            if replies is not None:
                return replies
        return self._by_state(t, staff, msg.text, text)

    def _by_state(self, t: Turn, staff: Staff, raw: str, text: str) -> list[str]:
        state = t.session.state
        if state == QUESTION:
            return self._answer(t, raw)
        if state == SUMMARY:
            return [texts.SUMMARY_EXPECT]
        if state == CHOOSING and text.isdecimal():  # (not isdigit: int() refuses ፩)
            return self._pick_number(t, staff, int(text))
        return self._pick_name(t, staff, text, from_idle=state == IDLE)

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

    def today(self, t: Turn) -> date:
        return t.now.astimezone(self.tz).date()

    def _prompt(self, t: Turn) -> str | None:
        """What the teacher is being asked right now, to repeat after an interjection."""
        s = t.session
        if s.state == QUESTION:
            q = self.form.question(s.data["q"])
            return render.question(self.form, q, s.data["answers"], s.data["student"])
        if s.state == SUMMARY:
            return render.summary(self.form, s.data["answers"], s.data["student"])
        if s.state == CHOOSING:
            return texts.PICK_HINT
        return None

    def _with_prompt(self, t: Turn, text: str) -> str:
        prompt = self._prompt(t)
        return f"{text}\n\n{prompt}" if prompt else text

    def _advance(self, t: Turn, head: str | None = None) -> list[str]:
        """Ask the first unanswered question, or show the summary when none is left."""
        s = t.session
        answers = s.data["answers"]
        nxt = self.form.next_question(answers)
        if nxt is None:
            s.state = SUMMARY
            body = render.summary(self.form, answers, s.data["student"])
        else:
            s.state = QUESTION
            s.data["q"] = nxt.key
            body = render.question(self.form, nxt, answers, s.data["student"])
        return [f"{head}\n\n{body}" if head else body]

    def _save(self, t: Turn, changes: dict[str, Any]) -> bool:
        """Store `changes` to the draft's answers; False when the draft is closed or its student
        no longer the teacher's.

        The session's copy of the answers may be stale: the teacher may have answered other
        questions of the same draft on another channel since. The store then refuses the write
        (the revision moved on), and the changes are applied to the draft as stored instead.
        """
        s = t.session
        answers = self.form.prune({**s.data["answers"], **changes})
        revision = s.data.get("rev", 0)  # (sessions saved before revisions existed: 0)
        if not t.store.save_answers(s.data["visit"], answers, revision, t.now):
            if not self._reload(t):
                return False
            answers = self.form.prune({**s.data["answers"], **changes})
            revision = s.data["rev"]
            if not t.store.save_answers(s.data["visit"], answers, revision, t.now):
                return False  # (nothing else writes within this transaction)
        s.data["answers"] = answers
        s.data["rev"] = revision + 1
        return True

    def _reload(self, t: Turn) -> bool:
        """Refresh the session's copy of the draft from the store; False when it is gone."""
        assert t.staff is not None
        draft = t.store.load_draft(t.staff.id, t.session.data["visit"])
        if draft is None:
            return False
        t.session.data["answers"] = self.form.prune(draft.answers)
        t.session.data["rev"] = draft.revision
        return True

    def _draft_gone(self, t: Turn) -> list[str]:
        student = t.session.data["student"]
        _idle(t.session)
        return [texts.DRAFT_GONE.format(student=student)]

    # ------------------------------------------------------------------ choosing a student
    def _list(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        assert t.staff is not None
        parked = self._park(t)
        students = self._by_urgency(t.store.my_students(t.staff.id))
        if not students:
            _idle(t.session)
            return [*parked, texts.NO_STUDENTS]
        body = render.student_list(students, self.today(t), self.tz, self._due)
        drafted = [s for s in students if s.draft_at is not None]
        if drafted:  # the draft 继续 resumes: the latest changed (as `Store.find_draft` orders)
            latest = max(drafted, key=attrgetter("draft_at", "id"))
            label = render.student_label(latest.name, latest.class_name)
            body += "\n" + texts.DRAFT_HINT.format(student=label)
        _set_state(t.session, CHOOSING, choices=[s.id for s in students])
        return [*parked, body]

    def _park(self, t: Turn) -> list[str]:
        """Leave a visit in progress as a draft (it is already saved) and say so."""
        if t.session.state not in IN_VISIT:
            return []
        student = t.session.data["student"]
        _idle(t.session)
        return [texts.PARKED.format(student=student)]

    def _pick_number(self, t: Turn, staff: Staff, n: int) -> list[str]:
        choices: list[int] = t.session.data.get("choices", [])
        if not 1 <= n <= len(choices):
            return [texts.NO_SUCH_NUMBER.format(n=n, count=len(choices))]
        found = t.store.find_student(staff.id, choices[n - 1])
        if found is None:  # no longer assigned since the list was shown
            return [texts.NO_SUCH_NUMBER.format(n=n, count=len(choices))]
        label, draft = found
        return self._start(t, staff, choices[n - 1], label, draft)

    def _pick_name(self, t: Turn, staff: Staff, text: str, *, from_idle: bool) -> list[str]:
        students = t.store.my_students(staff.id)
        matches = _match_name(students, text)
        if len(matches) == 1:
            only = matches[0]
            label = render.student_label(only.name, only.class_name)
            found = t.store.find_student(staff.id, only.id)
            return self._start(t, staff, only.id, label, found[1] if found else None)
        if from_idle and not matches:
            return [texts.UNKNOWN_IDLE]
        if not matches:
            return [texts.NO_SUCH_NAME.format(name=text[:20])]
        lines = [texts.SAME_NAME.format(count=len(matches), name=matches[0].name)]
        lines += [
            render.student_line(i, s, self.today(t), self.tz, self._due(s))
            for i, s in enumerate(matches, 1)
        ]
        _set_state(t.session, CHOOSING, choices=[s.id for s in matches])
        return ["\n".join(lines)]

    def _start(
        self, t: Turn, staff: Staff, student_id: int, label: str, draft: Draft | None
    ) -> list[str]:
        """Open the student's draft `draft`, or start a new visit when there is none."""
        if draft is not None:
            visit_id, answers = draft.visit_id, self.form.prune(draft.answers)
            revision = draft.revision
            head = texts.VISIT_RESUMED.format(student=label)
        else:
            visit_id = t.store.start_visit(
                staff.id, student_id, self.form.id, self.form.version, t.now
            )
            answers, revision = {}, 0
            head = texts.VISIT_STARTED.format(student=label, version=self.form.version)
        # 上一题 after resuming a draft steps back through the answers already given.
        hist = [q.key for q in render.answered(self.form, answers)]
        _set_state(
            t.session,
            QUESTION,
            visit=visit_id,
            student=label,
            answers=answers,
            hist=hist,
            rev=revision,
        )
        return self._advance(t, head)

    # ------------------------------------------------------------------ answering
    def _answer(self, t: Turn, raw: str) -> list[str]:
        s = t.session
        q = self.form.question(s.data["q"])
        try:
            value = parse_answer(q, raw, self.today(t))
        except InvalidAnswer as exc:
            return [self._with_prompt(t, exc.reason)]
        if not self._save(t, {q.key: value}):
            return self._draft_gone(t)
        if not s.data["hist"] or s.data["hist"][-1] != q.key:
            s.data["hist"].append(q.key)
        return self._advance(t)

    def _skip(self, t: Turn, _c: Command, _raw: str) -> list[str] | None:
        s = t.session
        if s.state != QUESTION:
            return None if s.state == IDLE else [self._with_prompt(t, texts.NOT_OPTIONAL)]
        q = self.form.question(s.data["q"])
        if q.required:
            return [self._with_prompt(t, texts.NOT_OPTIONAL)]
        if not self._save(t, {q.key: None}):
            return self._draft_gone(t)
        s.data["hist"].append(q.key)
        return self._advance(t)

    def _back(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        s = t.session
        if s.state not in IN_VISIT:
            return [texts.NOT_IN_VISIT]
        hist: list[str] = s.data["hist"]
        current = s.data.get("q") if s.state == QUESTION else None
        while hist and hist[-1] == current:
            hist.pop()
        if s.state == SUMMARY:
            shown = render.answered(self.form, s.data["answers"])
            if not shown:
                return [self._with_prompt(t, texts.FIRST_QUESTION)]
            target = shown[-1].key
        elif hist:
            target = hist.pop()
        else:
            return [self._with_prompt(t, texts.FIRST_QUESTION)]
        s.state = QUESTION
        s.data["q"] = target
        return [self._prompt(t) or ""]

    def _edit(self, t: Turn, c: Command, _raw: str) -> list[str]:
        s = t.session
        if s.state not in IN_VISIT:
            return [texts.NOT_IN_VISIT]
        shown = render.answered(self.form, s.data["answers"])
        assert c.number is not None
        if not 1 <= c.number <= len(shown):
            reason = texts.NO_SUCH_ITEM.format(n=c.number, count=len(shown))
            return [self._with_prompt(t, reason)]
        s.state = QUESTION
        s.data["q"] = shown[c.number - 1].key
        return [self._prompt(t) or ""]

    def _submit(self, t: Turn, _c: Command, _raw: str) -> list[str] | None:
        s = t.session
        if s.state != SUMMARY:
            return None  # "提交" is ordinary text outside the summary
        answers = self.form.prune(s.data["answers"])
        if self.form.next_question(answers) is not None:
            return self._advance(t)
        found = self.form.followups(answers, self.today(t))
        reached = self.form.reached(answers)
        if not t.store.submit_visit(
            s.data["visit"],
            s.data.get("rev", 0),
            answers,
            self.form.method(answers),
            reached,
            found,
            t.now,
        ):
            if not self._reload(t):
                return self._draft_gone(t)
            # Changed on another channel since this summary was shown: show it again.
            return self._advance(t, texts.DRAFT_CHANGED)
        student = s.data["student"]
        _idle(s)
        lines = [
            (texts.SUBMITTED if reached else texts.SUBMITTED_UNREACHED).format(student=student)
        ]
        if found:
            lines.append(render.new_followups(self.form, found))
        lines.append(texts.NEXT_HINT)
        return ["\n".join(lines)]

    def _discard(self, t: Turn, _c: Command, _raw: str) -> list[str] | None:
        if t.session.state != SUMMARY:
            return None
        return self._drop_draft(t)

    def _drop_draft(self, t: Turn) -> list[str]:
        s = t.session
        t.store.discard_visit(s.data["visit"], t.now)
        student = s.data["student"]
        _idle(s)
        return [texts.DISCARDED.format(student=student)]

    def _cancel(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        s = t.session
        if s.state in IN_VISIT:
            return self._drop_draft(t)
        if s.state == CHOOSING:
            _idle(s)
            return [texts.LEFT_LIST]
        return [texts.NOTHING_TO_CANCEL]

    def _later(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        return self._park(t) or [texts.NOT_IN_VISIT]

    def _resume(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        assert t.staff is not None
        if t.session.state in IN_VISIT:
            return [self._prompt(t) or ""]
        # (only a draft of a student still assigned to them: a reassigned one stays, hidden)
        draft = t.store.find_draft(t.staff.id)
        if draft is None:
            return [texts.NO_DRAFT]
        return self._start(t, t.staff, draft.student_id, draft.student_label, draft)

    def _help(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        return [self._with_prompt(t, texts.HELP)]

    # ------------------------------------------------------------------ follow-ups, progress
    def _todo(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        assert t.staff is not None
        items = t.store.open_followups(t.staff.id)
        t.session.data["fu"] = [f.id for f in items]
        body = render.followup_list(items, self.form.followup_kinds, self.today(t))
        return [self._with_prompt(t, body)]

    def _done(self, t: Turn, c: Command, raw: str) -> list[str]:
        assert t.staff is not None and c.number is not None
        ids: list[int] = t.session.data.get("fu") or [
            f.id for f in t.store.open_followups(t.staff.id)
        ]
        note = done_note(clean_free_text(raw))
        if len(note) > MAX_NOTE:
            reason = texts.NOTE_TOO_LONG.format(length=len(note), limit=MAX_NOTE)
            return [self._with_prompt(t, reason)]
        closed = None
        if 1 <= c.number <= len(ids):
            closed = t.store.close_followup(t.staff.id, ids[c.number - 1], note, t.now)
        if closed is None:
            return [self._with_prompt(t, texts.NO_SUCH_FOLLOWUP.format(n=c.number))]
        text = texts.FOLLOWUP_DONE.format(
            student=render.student_label(closed.student_name, closed.class_name),
            kind=self.form.followup_kinds.get(closed.kind, closed.kind),
            detail=closed.detail,
            note=texts.FOLLOWUP_NOTE.format(note=note) if note else "",
        )
        return [self._with_prompt(t, text.rstrip())]

    def _progress(self, t: Turn, _c: Command, _raw: str) -> list[str]:
        assert t.staff is not None
        since = t.now - timedelta(days=self.cadence.default_days)
        cov = t.store.coverage(t.staff.id, since, self.today(t))
        left = cov.total - cov.visited
        text = texts.PROGRESS.format(
            days=self.cadence.default_days,
            visited=cov.visited,
            total=cov.total,
            rest=texts.PROGRESS_REST.format(left=left) if left else "",
            open=cov.open_followups,
            overdue=cov.overdue_followups,
        )
        return [self._with_prompt(t, text)]


# ---------------------------------------------------------------------- module helpers
def _set_state(session: Session, state: str, **data: Any) -> None:
    kept = {k: session.data[k] for k in KEEP_ACROSS_STATES if k in session.data}
    session.state = state
    session.data = {**kept, **data}


def _idle(session: Session) -> None:
    _set_state(session, IDLE)


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
