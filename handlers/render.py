"""Rendering lists, questions and summaries as chat text."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.text import md as md  # (re-exported: handlers say render.md)
from bot.core.types import FollowUpListing, FollowUpStatus, NewFollowUp, StudentListing
from config.forms import Form, QType, Question
from handlers import texts
from handlers.cadence import last_attempt_unreached

PAGE_SIZE = 10  # students a message lists: one phone screen, well under WeCom's 2,048 bytes
MESSAGE_BUDGET = 600  # characters of one chat message (WeCom: 2,048 bytes, 3 a character)


def student_label(name: str, class_name: str) -> str:
    return f"{name}（{class_name}）"


def format_value(value: Any) -> str:
    if value is None:
        return texts.SKIPPED
    if isinstance(value, list):
        return "、".join(str(v) for v in value)
    return str(value)


def student_line(
    n: int,
    s: StudentListing,
    today: date,
    tz: ZoneInfo,
    due: date | None,
    *,
    tail: bool = False,
) -> str:
    """One numbered student; `tail`: show the last digits of the 学籍号 (another student of the
    list has the same name)."""
    parts = [f"{n}. {s.name}", s.class_name]
    if tail:
        parts.append(texts.STUDENT_NO_TAIL.format(tail=s.student_no[-4:]))
    parts.append("、".join(s.categories) or texts.NO_CATEGORY)
    unreached = last_attempt_unreached(s.last_visit_at, s.last_unreached_at)
    if s.last_visit_at is None:
        if not unreached:  # (tried, but never reached: "上次没联系上" says it)
            parts.append(texts.NEVER_VISITED)
    else:
        days = (today - s.last_visit_at.astimezone(tz).date()).days
        parts.append(texts.DAYS_AGO.format(days=days) if days else texts.TODAY_VISITED)
    if unreached:
        parts.append(texts.LAST_UNREACHED)
    if due is not None and due <= today:
        late = (today - due).days
        parts.append(texts.OVERDUE_VISIT.format(days=late) if late else texts.DUE_TODAY)
    if s.open_followups:
        parts.append(texts.OPEN_FOLLOWUPS.format(count=s.open_followups))
    if s.draft_at is not None:
        parts.append(texts.HAS_DRAFT)
    return " · ".join(parts)


def student_lines(
    students: Sequence[StudentListing],
    first: int,
    today: date,
    tz: ZoneInfo,
    due: Callable[[StudentListing], date | None],
    *,
    all_names: Sequence[str] = (),
) -> list[str]:
    """Numbered lines from number `first`; a name found twice in `all_names` (or in `students`)
    gets the 学籍号's last digits."""
    names = list(all_names) or [s.name for s in students]
    return [
        student_line(n, s, today, tz, due(s), tail=names.count(s.name) > 1)
        for n, s in enumerate(students, first)
    ]


def in_messages(head: str, lines: Sequence[str], foot: str, cont: str) -> list[str]:
    """`lines` in as many messages as fit `MESSAGE_BUDGET`, each with its own instruction line
    (`foot`), the first under `head`, the others under `cont`."""
    messages: list[str] = []
    current = [head]
    for line in lines:
        size = sum(len(x) + 1 for x in current) + len(line) + len(foot)
        if len(current) > 1 and size > MESSAGE_BUDGET:
            messages.append("\n".join([*current, foot]))
            current = [cont]
        current.append(line)
    messages.append("\n".join([*current, foot]))
    return messages


def question(form: Form, q: Question, answers: Mapping[str, Any], student: str) -> str:
    expected = [x.key for x in form.expected(answers)]
    n = expected.index(q.key) + 1 if q.key in expected else len(expected) + 1
    head = texts.QUESTION_HEAD.format(n=n, total=max(len(expected), n), student=student)
    lines = [head, q.prompt]
    lines += [f"{i}. {o.text}" for i, o in enumerate(q.options, 1)]
    if q.type is QType.MULTI:
        lines.append(texts.MULTI_HINT)
    if not q.required:
        lines.append(texts.OPTIONAL_HINT)
    if q.key in answers:
        lines.append(texts.CURRENT_ANSWER.format(answer=format_value(answers[q.key])))
    return "\n".join(lines)


def answered(form: Form, answers: Mapping[str, Any]) -> list[Question]:
    """Questions shown on the summary, in order; `修改 N` counts in this list."""
    return [q for q in form.visible(answers) if q.key in answers]


def summary(form: Form, answers: Mapping[str, Any], student: str) -> str:
    lines = [texts.SUMMARY_HEAD.format(student=student)]
    lines += [
        f"{i}. {q.label}：{format_value(answers[q.key])}"
        for i, q in enumerate(answered(form, answers), 1)
    ]
    lines.append(texts.SUMMARY_FOOT)
    return "\n".join(lines)


def new_followups(form: Form, found: Sequence[NewFollowUp]) -> str:
    lines = [texts.NEW_FOLLOWUPS.format(count=len(found))]
    for f in found:
        kind = form.followup_kinds.get(f.kind, f.kind)
        lines.append(f"· {kind}：{f.detail}（{md(f.due_date)}前）")
    return "\n".join(lines)


def followup_line(n: int, f: FollowUpListing, kinds: Mapping[str, str], today: date) -> str:
    if f.due_date < today:
        due = texts.OVERDUE.format(days=(today - f.due_date).days)
    else:
        due = texts.DUE_ON.format(date=md(f.due_date))
    if f.status is FollowUpStatus.ESCALATED:
        due += texts.ESCALATED
    return texts.FOLLOWUP_LINE.format(
        n=n,
        student=student_label(f.student_name, f.class_name),
        kind=kinds.get(f.kind, f.kind),
        detail=f.detail,
        due=due,
    )


def followup_list(
    items: Sequence[FollowUpListing], kinds: Mapping[str, str], today: date
) -> list[str]:
    """The numbered list, split so that every message carries its items and the instruction."""
    if not items:
        return [texts.FOLLOWUPS_NONE]
    lines = [followup_line(i, f, kinds, today) for i, f in enumerate(items, 1)]
    head = texts.FOLLOWUPS_HEAD.format(count=len(items))
    return in_messages(head, lines, texts.FOLLOWUPS_FOOT, texts.FOLLOWUPS_MORE)
