"""The questionnaire: loaded from YAML, validated with line numbers, evaluated over answers.

A form is a list of questions. Each question has a key, a short label (summary and export column),
a prompt, a type, options for choice types, `required`, an optional `when` (skip logic on earlier
answers) and `followups` (which answers open which follow-up kind, due in how many days).
Answers are a JSON-able dict: option text for single/yes-no, a list of option texts for multi,
int, ISO date string, free text; None for a skipped optional question.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from bot.core.errors import ConfigError
from bot.core.types import NewFollowUp


class QType(StrEnum):
    SINGLE = "single"
    MULTI = "multi"
    YESNO = "yesno"
    INTEGER = "integer"
    DATE = "date"
    TEXT = "text"


YES, NO = "是", "否"
WITHHELD = "（敏感信息，未导出）"
DETAIL_LIMIT = 80  # characters of a follow-up's description (the whole answer stays in the visit)
CHOICE_TYPES = (QType.SINGLE, QType.MULTI, QType.YESNO)
Answers = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Option:
    text: str
    aliases: tuple[str, ...] = ()
    reached: bool = True  # False on the visit-method option "family unreachable"
    exclusive: bool = False  # a multi-choice "none of these": chosen alone or not at all


@dataclass(frozen=True, slots=True)
class Condition:
    """`key` answered with one of `values` (or, when `negate`, answered with none of them)."""

    key: str
    values: frozenset[str]
    negate: bool = False

    def holds(self, answers: Mapping[str, Any]) -> bool:
        value = answers.get(self.key)
        if value is None:
            return False
        if isinstance(value, list):
            matched = any(str(v) in self.values for v in value)
        else:
            matched = str(value) in self.values
        return matched != self.negate

    def likely(self, answers: Mapping[str, Any]) -> bool:
        """Holds, or will on the usual path: a `not` condition on a question not yet answered
        (the family is usually reached); a branch (`device_ok: 否`) only once it is taken."""
        if answers.get(self.key) is None and self.key not in answers:
            return self.negate
        return self.holds(answers)


@dataclass(frozen=True, slots=True)
class FollowUpRule:
    """Answers that open a follow-up. On a free-text question, `contains`: words any of which in
    the text opens it (a note that says the child is hit at home is a safety concern)."""

    answers: frozenset[str]
    kind: str
    due_days: int
    note_key: str | None = None
    contains: tuple[str, ...] = ()
    detail: str = ""  # what the follow-up says, when the answer alone would not ("不能")

    def hits(self, given: list[str]) -> list[str]:
        if self.contains:
            return [g for g in given if any(word in g for word in self.contains)]
        return [g for g in given if g in self.answers]


@dataclass(frozen=True, slots=True)
class Question:
    key: str
    label: str
    prompt: str
    type: QType
    options: tuple[Option, ...] = ()
    required: bool = True
    when: tuple[Condition, ...] = ()
    followups: tuple[FollowUpRule, ...] = ()
    min: int | None = None
    max: int | None = None
    max_length: int = 500
    # Shown only to the student's own staff and coordinators; left out of exports unless asked
    # for (audited), erased after the retention period. Every free-text question is.
    sensitive: bool = False

    def visible(self, answers: Mapping[str, Any]) -> bool:
        # (a plain loop, not all(): runs several times a turn, see bench/RESULTS.md)
        for c in self.when:  # noqa: SIM110
            if not c.holds(answers):
                return False
        return True

    def likely(self, answers: Mapping[str, Any]) -> bool:
        """Every condition `likely` holds: a question `Form.expected` counts."""
        for c in self.when:  # noqa: SIM110
            if not c.likely(answers):
                return False
        return True

    @property
    def option_texts(self) -> tuple[str, ...]:
        return tuple(o.text for o in self.options)


# The answers of a visit's questions about earlier follow-ups: {follow-up id: CHECK_RESOLVED or
# CHECK_STILL}, stored with the visit's other answers.
CHECKS_KEY = "followup_checks"
CHECK_RESOLVED, CHECK_STILL = "已解决", "仍需帮助"
CHECK_PROMPT = "上次登记的需求：{need}（{status}）。现在情况如何？"
CHECK_DUE_DAYS = 3


@dataclass(frozen=True, slots=True)
class Form:
    id: str
    version: str
    title: str
    questions: tuple[Question, ...]
    followup_kinds: Mapping[str, str]
    method_key: str | None = None
    # Follow-up kinds a coordinator hears of the same day (safety, counselling, medical).
    urgent_kinds: frozenset[str] = frozenset()
    # Follow-up kinds whose description is sensitive (counselling, safety): exported only when
    # sensitive answers are asked for.
    sensitive_kinds: frozenset[str] = frozenset()
    # The next visit first asks about follow-ups of these kinds that are open or were done since
    # the last visit (`followup_checks`), with this wording ({need}, {status}).
    check_kinds: frozenset[str] = frozenset()
    check_prompt: str = CHECK_PROMPT
    check_due_days: int = CHECK_DUE_DAYS  # "仍需帮助": the new follow-up is due in this many days
    # `aid_review`: this answer to this question opens an aid review (资助认定) for the school's
    # coordinator, with the answer to `review_note_key` as the teacher's note.
    review_key: str | None = None
    review_answer: str = "是"
    review_note_key: str | None = None

    @property
    def sensitive_keys(self) -> frozenset[str]:
        return frozenset(q.key for q in self.questions if q.sensitive)

    def public_detail(self, kind: str, detail: str) -> str:
        """A follow-up's description without what is sensitive: none for a sensitive kind, and
        without the appended note (`（…）`) when the note comes from a sensitive question."""
        if kind in self.sensitive_kinds:
            return WITHHELD
        noted = any(
            rule.kind == kind and rule.note_key in self.sensitive_keys
            for q in self.questions
            for rule in q.followups
        )
        if noted and "（" in detail:
            return detail.split("（", 1)[0]
        return detail

    def question(self, key: str) -> Question:
        for q in self.questions:
            if q.key == key:
                return q
        raise KeyError(key)

    def visible(self, answers: Mapping[str, Any]) -> list[Question]:
        return [q for q in self.questions if not q.when or q.visible(answers)]

    def expected(self, answers: Mapping[str, Any]) -> list[Question]:
        """The questions this visit will likely ask, as far as the answers so far tell: what
        "第3题/共9题" counts."""
        return [q for q in self.questions if not q.when or q.likely(answers)]

    def next_question(self, answers: Mapping[str, Any]) -> Question | None:
        """The first visible question not answered yet; None when the form is complete."""
        for q in self.questions:
            if q.key not in answers and (not q.when or q.visible(answers)):
                return q
        return None

    def prune(self, answers: Mapping[str, Any]) -> Answers:
        """Drop answers to questions that earlier answers have made irrelevant (the answers
        about earlier follow-ups, `CHECKS_KEY`, stay)."""
        kept: Answers = {}
        if CHECKS_KEY in answers:
            kept[CHECKS_KEY] = answers[CHECKS_KEY]
        for q in self.questions:  # in order, so conditions see only kept earlier answers
            if q.key in answers and (not q.when or q.visible(kept)):
                kept[q.key] = answers[q.key]
        return kept

    def method(self, answers: Mapping[str, Any]) -> str | None:
        value = answers.get(self.method_key) if self.method_key else None
        return str(value) if value is not None else None

    def reached(self, answers: Mapping[str, Any]) -> bool:
        """False when the visit-method answer says the family could not be reached."""
        if self.method_key is None:
            return True
        chosen = answers.get(self.method_key)
        return all(o.reached for o in self.question(self.method_key).options if o.text == chosen)

    def followups(self, answers: Mapping[str, Any], today: date) -> list[NewFollowUp]:
        """The follow-ups these (pruned) answers open: one per matching rule."""
        found: list[NewFollowUp] = []
        for q in self.visible(answers):
            value = answers.get(q.key)
            if value is None:
                continue
            given = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            for rule in q.followups:
                hits = rule.hits(given)
                if not hits:
                    continue
                detail = rule.detail or "、".join(hits)
                note = answers.get(rule.note_key) if rule.note_key else None
                if note:
                    detail = f"{detail}（{note}）"
                if len(detail) > DETAIL_LIMIT:  # a follow-up list line, not the whole note
                    detail = detail[: DETAIL_LIMIT - 1] + "…"
                found.append(NewFollowUp(rule.kind, detail, today + timedelta(rule.due_days)))
        return found


# ---------------------------------------------------------------- loading and validation


class _Map(dict[str, Any]):
    line: int = 0


class _Seq(list[Any]):
    line: int = 0


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings and lists remember the line they start on."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    m = _Map(loader.construct_mapping(node, deep=True))  # type: ignore[arg-type]
    m.line = node.start_mark.line + 1
    return m


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
    s = _Seq(loader.construct_sequence(node, deep=True))
    s.line = node.start_mark.line + 1
    return s


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


class _FormError(Exception):
    def __init__(self, line: int, text: str) -> None:
        self.line, self.text = line, text


def load_form(path: str | Path) -> Form:
    """Load and validate a form file. Raises ConfigError `path:line: problem`."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the form file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(f"{path}:{line}: not valid YAML ({exc.problem})") from exc
    except yaml.YAMLError as exc:  # e.g. a character YAML does not allow
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__})") from exc
    try:
        return _parse_form(raw)
    except _FormError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.text}") from exc


def _line(obj: Any, default: int = 1) -> int:
    return getattr(obj, "line", default)


def _str(m: _Map, key: str, *, required: bool = True) -> str:
    value = m.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _FormError(m.line, f"missing `{key}`")
        return ""
    if not isinstance(value, str | int | float):
        raise _FormError(m.line, f"`{key}` must be text")
    return str(value).strip()


def _parse_form(raw: Any) -> Form:
    if not isinstance(raw, _Map):
        raise _FormError(1, "the form must be a mapping with id, version and questions")
    kinds = raw.get("followup_kinds") or _Map()
    if not isinstance(kinds, _Map):
        raise _FormError(_line(kinds, raw.line), "`followup_kinds` must map a kind to its label")
    items = raw.get("questions")
    if not isinstance(items, _Seq) or not items:
        raise _FormError(raw.line, "`questions` must be a non-empty list")
    questions: list[Question] = []
    for item in items:
        questions.append(_parse_question(item, questions, kinds, items.line))
    method_key = raw.get("method_question")
    if method_key is not None and method_key not in {q.key for q in questions}:
        raise _FormError(raw.line, f"`method_question` {method_key!r} is not a question key")
    urgent = raw.get("urgent_kinds") or []
    if not isinstance(urgent, list) or any(str(k) not in kinds for k in urgent):
        raise _FormError(raw.line, "`urgent_kinds` must list kinds of `followup_kinds`")
    sensitive_kinds = raw.get("sensitive_kinds") or []
    if not isinstance(sensitive_kinds, list) or any(str(k) not in kinds for k in sensitive_kinds):
        raise _FormError(raw.line, "`sensitive_kinds` must list kinds of `followup_kinds`")
    checks = raw.get("followup_checks") or _Map()
    if not isinstance(checks, _Map):
        raise _FormError(_line(checks, raw.line), "`followup_checks` must be a mapping")
    check_kinds = checks.get("kinds") or []
    if not isinstance(check_kinds, list) or any(str(k) not in kinds for k in check_kinds):
        raise _FormError(
            _line(checks, raw.line), "`followup_checks.kinds` must list kinds of `followup_kinds`"
        )
    check_prompt = str(checks.get("prompt") or CHECK_PROMPT)
    try:
        check_prompt.format(need="", status="")
    except (KeyError, IndexError, ValueError):
        raise _FormError(
            _line(checks, raw.line),
            "`followup_checks.prompt` may only use {need} and {status}",
        ) from None
    due_days = checks.get("due_days", CHECK_DUE_DAYS)
    if not isinstance(due_days, int) or isinstance(due_days, bool) or not 0 <= due_days <= 366:
        raise _FormError(_line(checks, raw.line), "`followup_checks.due_days` must be 0 to 366")
    review = raw.get("aid_review") or _Map()
    review_keys = {q.key for q in questions}
    if not isinstance(review, _Map) or (
        review
        and (
            review.get("question") not in review_keys
            or review.get("note", None) not in (review_keys | {None})
        )
    ):
        raise _FormError(
            _line(review, raw.line), "`aid_review` needs `question` (and `note`) question keys"
        )
    form = Form(
        id=_str(raw, "id"),
        version=_str(raw, "version"),
        title=_str(raw, "title", required=False) or _str(raw, "id"),
        questions=tuple(questions),
        followup_kinds={str(k): str(v) for k, v in kinds.items()},
        method_key=method_key,
        urgent_kinds=frozenset(str(k) for k in urgent),
        sensitive_kinds=frozenset(str(k) for k in sensitive_kinds),
        check_kinds=frozenset(str(k) for k in check_kinds),
        check_prompt=check_prompt,
        check_due_days=due_days,
        review_key=str(review["question"]) if review else None,
        review_answer=str(review.get("answer", "是")) if review else "是",
        review_note_key=str(review["note"]) if review and review.get("note") else None,
    )
    keys = {q.key for q in questions}
    for item, q in zip(items, questions, strict=True):
        for rule in q.followups:
            if rule.note_key is not None and rule.note_key not in keys:
                raise _FormError(item.line, f"`note` {rule.note_key!r} is not a question key")
    return form


def _parse_question(
    item: Any, earlier: Sequence[Question], kinds: Mapping[str, str], list_line: int
) -> Question:
    if not isinstance(item, _Map):
        raise _FormError(list_line, "each question must be a mapping")
    key = _str(item, "key")
    if not _KEY.match(key):
        raise _FormError(item.line, f"question key {key!r}: use lowercase letters, digits, _")
    if key in {q.key for q in earlier}:
        raise _FormError(item.line, f"question key {key!r} is used twice")
    try:
        qtype = QType(_str(item, "type"))
    except ValueError:
        raise _FormError(
            item.line, f"question {key!r}: type must be one of {', '.join(QType)}"
        ) from None
    options = _parse_options(item, key, qtype)
    texts = {o.text for o in options}
    required = item.get("required", True)
    if not isinstance(required, bool):
        raise _FormError(item.line, f"question {key!r}: `required` must be true or false")
    sensitive = item.get("sensitive", qtype is QType.TEXT)
    if not isinstance(sensitive, bool):
        raise _FormError(item.line, f"question {key!r}: `sensitive` must be true or false")
    return Question(
        key=key,
        label=_str(item, "label", required=False) or key,
        prompt=_str(item, "prompt"),
        type=qtype,
        options=options,
        required=required,
        when=_parse_when(item, key, earlier),
        followups=_parse_rules(item, key, texts, kinds),
        min=_opt_int(item, "min"),
        max=_opt_int(item, "max"),
        max_length=_opt_int(item, "max_length") or 500,
        sensitive=sensitive,
    )


def _opt_int(item: _Map, name: str) -> int | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _FormError(item.line, f"`{name}` must be a whole number")
    return value


def _parse_options(item: _Map, key: str, qtype: QType) -> tuple[Option, ...]:
    raw = item.get("options")
    if qtype is QType.YESNO:
        if raw is not None:
            raise _FormError(item.line, f"question {key!r}: yes/no questions take no options")
        # `aliases: {否: [只有手机]}`: what else means yes or no for this question
        extra = item.get("aliases") or {}
        if not isinstance(extra, dict) or not set(extra) <= {YES, NO}:
            raise _FormError(item.line, f"question {key!r}: aliases of a yes/no question are 是/否")
        return (
            Option(YES, ("有", "对", "需要", "yes", "y", *map(str, extra.get(YES, ())))),
            Option(NO, ("没有", "无", "不", "不是", "no", "n", *map(str, extra.get(NO, ())))),
        )
    if qtype not in CHOICE_TYPES:
        if raw is not None:
            raise _FormError(item.line, f"question {key!r}: only choice questions take options")
        return ()
    if not isinstance(raw, _Seq) or len(raw) < 2:
        raise _FormError(item.line, f"question {key!r}: a choice question needs 2 or more options")
    options: list[Option] = []
    for entry in raw:
        if isinstance(entry, _Map):
            text = _str(entry, "text")
            aliases = entry.get("aliases") or []
            reached = entry.get("reached", True)
            exclusive = entry.get("exclusive", False)
            if (
                not isinstance(aliases, list)
                or not isinstance(reached, bool)
                or not isinstance(exclusive, bool)
            ):
                raise _FormError(
                    entry.line, f"option {text!r}: bad `aliases`, `reached` or `exclusive`"
                )
            options.append(Option(text, tuple(str(a) for a in aliases), reached, exclusive))
        elif isinstance(entry, str | int) and str(entry).strip():
            options.append(Option(str(entry).strip()))
        else:
            raise _FormError(raw.line, f"question {key!r}: an option must be text")
    texts = [o.text for o in options]
    if len(set(texts)) != len(texts):
        raise _FormError(raw.line, f"question {key!r}: two options have the same text")
    if any(t.isdigit() for t in texts):
        raise _FormError(raw.line, f"question {key!r}: an option cannot be a bare number")
    return tuple(options)


def _parse_when(item: _Map, key: str, earlier: Sequence[Question]) -> tuple[Condition, ...]:
    raw = item.get("when")
    if raw is None:
        return ()
    if not isinstance(raw, _Map) or not raw:
        raise _FormError(item.line, f"question {key!r}: `when` must map earlier keys to answers")
    by_key = {q.key: q for q in earlier}
    conditions = []
    for ref, spec in raw.items():
        if ref not in by_key:
            raise _FormError(
                raw.line,
                f"question {key!r}: `when` refers to {ref!r}, which is not an earlier question",
            )
        negate = isinstance(spec, _Map)
        if negate:
            if set(spec) != {"not"}:
                raise _FormError(spec.line, f"question {key!r}: use `{{not: [...]}}`")
            spec = spec["not"]
        values = [str(v) for v in spec] if isinstance(spec, list) else [str(spec)]
        valid = set(by_key[ref].option_texts)
        for v in values:
            if v not in valid:
                raise _FormError(raw.line, f"question {key!r}: {v!r} is not an option of {ref!r}")
        conditions.append(Condition(ref, frozenset(values), negate))
    return tuple(conditions)


def _parse_rules(
    item: _Map, key: str, options: set[str], kinds: Mapping[str, str]
) -> tuple[FollowUpRule, ...]:
    raw = item.get("followups")
    if raw is None:
        return ()
    if not isinstance(raw, _Seq):
        raise _FormError(item.line, f"question {key!r}: `followups` must be a list")
    rules = []
    for entry in raw:
        if not isinstance(entry, _Map):
            raise _FormError(raw.line, f"question {key!r}: each follow-up rule is a mapping")
        contains = entry.get("contains")
        if contains is not None:
            if not isinstance(contains, list) or not contains or options:
                raise _FormError(
                    entry.line, f"question {key!r}: `contains` lists words, on a text question"
                )
            answers: list[Any] = []
        else:
            given = entry.get("answers")
            answers = given if isinstance(given, list) else [given]
        for a in answers:
            if str(a) not in options:
                raise _FormError(
                    entry.line, f"question {key!r}: follow-up answer {a!r} is not an option"
                )
        kind = _str(entry, "kind")
        if kind not in kinds:
            raise _FormError(
                entry.line, f"question {key!r}: follow-up kind {kind!r} is not in `followup_kinds`"
            )
        due = entry.get("due_days")
        if not isinstance(due, int) or isinstance(due, bool) or due < 0:
            raise _FormError(entry.line, f"question {key!r}: `due_days` must be 0 or more")
        note = entry.get("note")
        detail = entry.get("detail")
        if detail is not None and not isinstance(detail, str):
            raise _FormError(entry.line, f"question {key!r}: `detail` must be text")
        rules.append(
            FollowUpRule(
                frozenset(str(a) for a in answers),
                kind,
                due,
                str(note) if note else None,
                tuple(str(w) for w in contains or ()),
                (detail or "").strip(),
            )
        )
    return tuple(rules)
