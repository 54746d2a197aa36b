"""Turning what a teacher typed into a typed answer, or an InvalidAnswer saying why not.

Input is normalised first (NFKC: full-width digits, letters and spaces become ASCII; surrounding
space removed), so "２" and " 2 " both choose option 2.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, timedelta
from typing import Any

from bot.core.errors import InvalidAnswer
from config.forms import Option, QType, Question
from handlers import texts

_SPLIT = re.compile(r"[\s,，、;；/]+")
_DATE_FORMS = (
    re.compile(r"^(?P<y>\d{4})[-/.年](?P<m>\d{1,2})[-/.月](?P<d>\d{1,2})日?$"),
    re.compile(r"^(?P<m>\d{1,2})[-/.月](?P<d>\d{1,2})日?$"),
)
_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))


def normalize(text: str) -> str:
    """NFKC, control characters removed, whitespace trimmed and collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_CONTROL).split())


_EDGE = "。.、，,！!；;：:～~…·"


def strip_edges(text: str) -> str:
    """Punctuation a phone keyboard adds around a word or a number: `1。` → `1`, `好！` → `好`.
    Text that is only punctuation stays as it was."""
    stripped = text.strip(_EDGE).strip()
    return stripped or text


def clean_free_text(text: str) -> str:
    """Free text keeps the teacher's own characters; only control characters and edges go."""
    return text.translate(_CONTROL).strip()


def parse_answer(question: Question, raw: str, today: date) -> Any:
    """The typed answer for `question`, or raise InvalidAnswer with a reason to show."""
    text = normalize(raw)
    if not text:
        raise InvalidAnswer(texts.EMPTY_ANSWER)
    if question.type is not QType.TEXT:
        text = strip_edges(text)
    match question.type:
        case QType.SINGLE | QType.YESNO:
            return _choose_one(question.options, text)
        case QType.MULTI:
            return _choose_many(question.options, text)
        case QType.INTEGER:
            return _integer(question, text)
        case QType.DATE:
            return _date(text, today).isoformat()
        case QType.TEXT:
            free = clean_free_text(raw)
            if len(free) > question.max_length:
                raise InvalidAnswer(
                    texts.TOO_LONG_ANSWER.format(limit=question.max_length, length=len(free))
                )
            return free
    raise AssertionError(question.type)


def _matches(option: Option, text: str) -> bool:
    low = text.lower()
    return low == option.text.lower() or low in (a.lower() for a in option.aliases)


def _choose_one(options: tuple[Option, ...], text: str) -> str:
    if text.isdecimal():  # (isdigit() also takes digits int() refuses, such as ፩)
        n = int(text)
        if 1 <= n <= len(options):
            return options[n - 1].text
        raise InvalidAnswer(texts.OUT_OF_RANGE.format(n=n, count=len(options)))
    exact = [o for o in options if _matches(o, text)]
    if len(exact) == 1:
        return exact[0].text
    prefix = [o for o in options if o.text.startswith(text) or text.startswith(o.text)]
    if len(prefix) == 1:
        return prefix[0].text
    raise InvalidAnswer(texts.NOT_AN_OPTION.format(count=len(options)))


def _choose_many(options: tuple[Option, ...], text: str) -> list[str]:
    chosen: set[str] = set()
    for token in _SPLIT.split(text):
        if token:
            chosen.add(_choose_one(options, token))
    alone = [o.text for o in options if o.exclusive and o.text in chosen]
    if alone and len(chosen) > 1:  # "没有" and a risk at once: which is it?
        raise InvalidAnswer(texts.NOT_WITH_OTHERS.format(option=alone[0]))
    # keep the form's order, whatever order the teacher typed
    return [o.text for o in options if o.text in chosen]


def _integer(question: Question, text: str) -> int:
    if not re.fullmatch(r"-?\d+", text):
        raise InvalidAnswer(texts.NOT_A_NUMBER)
    value = int(text)
    if (question.min is not None and value < question.min) or (
        question.max is not None and value > question.max
    ):
        raise InvalidAnswer(texts.NUMBER_RANGE.format(min=question.min, max=question.max))
    return value


def _date(text: str, today: date) -> date:
    if text in ("今天", "today"):
        return today
    if text in ("昨天", "yesterday"):
        return today - timedelta(days=1)
    for pattern in _DATE_FORMS:
        m = pattern.match(text)
        if m:
            year = int(m.group("y")) if "y" in pattern.groupindex else today.year
            try:
                return date(year, int(m.group("m")), int(m.group("d")))
            except ValueError:
                break
    raise InvalidAnswer(texts.NOT_A_DATE)
