from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bot.core.errors import ConfigError, InvalidAnswer
from config.forms import Form, load_form
from config.settings import DEFAULT_FORM
from handlers.answers import normalize, parse_answer


@pytest.fixture(scope="module")
def form() -> Form:
    return load_form(DEFAULT_FORM)


def test_default_form_has_the_designed_questions(form: Form) -> None:
    assert [q.key for q in form.questions] == [
        "method",
        "study",
        "device_ok",
        "device_missing",
        "life_hard",
        "life_needs",
        "life_note",
        "emotion",
        "relation",
        "guardian",
        "risks",
        "online",
        "other",
    ]
    assert form.version and form.method_key == "method"


def test_skip_logic_and_pruning(form: Form) -> None:
    assert [q.key for q in form.visible({"method": "联系不上"})] == ["method", "other"]
    answers = {"method": "电话", "device_ok": "否", "device_missing": "都缺"}
    assert "device_missing" in [q.key for q in form.visible(answers)]
    pruned = form.prune({**answers, "device_ok": "是"})
    assert "device_missing" not in pruned
    assert form.next_question({"method": "电话"}).key == "study"  # type: ignore[union-attr]
    assert form.reached({"method": "联系不上"}) is False and form.reached({"method": "上门"})


def test_followup_rules(form: Form) -> None:
    answers = {
        "method": "电话",
        "device_ok": "否",
        "device_missing": "都缺",
        "life_hard": "是",
        "life_needs": ["看病就医"],
        "life_note": "奶奶住院",
        "emotion": "稳定",
    }
    found = form.followups(answers, date(2026, 3, 2))
    assert [(f.kind, f.detail, f.due_date.day) for f in found] == [
        ("device", "都缺", 5),
        ("data_plan", "都缺", 5),
        ("medical", "看病就医（奶奶住院）", 5),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2", "钉钉"),
        ("２", "钉钉"),
        (" 2 ", "钉钉"),
        ("钉钉", "钉钉"),
        ("微信", "微信视频"),
        ("上门家访", "上门"),
        ("没联系上", "联系不上"),
    ],
)
def test_single_choice_by_number_text_or_alias(form: Form, raw: str, expected: str) -> None:
    assert parse_answer(form.question("method"), raw, date(2026, 3, 2)) == expected


@pytest.mark.parametrize("raw", ["0", "6", "99", "abc", "😀", "", "   "])
def test_single_choice_rejects(form: Form, raw: str) -> None:
    with pytest.raises(InvalidAnswer):
        parse_answer(form.question("method"), raw, date(2026, 3, 2))


def test_yes_no_and_multi(form: Form) -> None:
    today = date(2026, 3, 2)
    device = form.question("device_ok")
    given = ["1", "是", "有", "yes", "2", "没有", "否"]
    assert [parse_answer(device, x, today) for x in given] == ["是"] * 4 + ["否"] * 3
    needs = form.question("life_needs")
    assert parse_answer(needs, "3、1，1", today) == ["父母无法返岗收入减少", "看病就医"]
    with pytest.raises(InvalidAnswer):
        parse_answer(needs, "1、7", today)


def test_free_text_length_limit(form: Form) -> None:
    other = form.question("other")
    assert parse_answer(other, "  无  ", date(2026, 3, 2)) == "无"
    with pytest.raises(InvalidAnswer, match="501字"):
        parse_answer(other, "字" * 501, date(2026, 3, 2))


def test_integer_and_date_questions(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "id: t\nversion: '1'\nquestions:\n"
        "  - {key: n, prompt: 几人, type: integer, min: 0, max: 10}\n"
        "  - {key: d, prompt: 哪天, type: date}\n",
        encoding="utf-8",
    )
    f = load_form(path)
    today = date(2026, 3, 2)
    assert parse_answer(f.question("n"), "７", today) == 7
    for bad in ["11", "-1", "三"]:
        with pytest.raises(InvalidAnswer):
            parse_answer(f.question("n"), bad, today)
    d = f.question("d")
    assert parse_answer(d, "2026-02-28", today) == "2026-02-28"
    assert parse_answer(d, "2月28日", today) == "2026-02-28"
    assert parse_answer(d, "昨天", today) == "2026-03-01"
    with pytest.raises(InvalidAnswer):
        parse_answer(d, "2月30日", today)


def test_normalize() -> None:
    assert normalize("\u3000１２\u3000") == "12"
    assert normalize("a\x00b") == "ab"


BROKEN = [
    ("id: x\nversion: '1'\nquestions: [\n", 4, "not valid YAML"),
    ("id: x\nversion: '1'\nquestions: []\n", 1, "non-empty list"),
    (
        "id: x\nversion: '1'\nquestions:\n  - {key: a, prompt: p, type: choice}\n",
        4,
        "type must be one of",
    ),
    (
        "id: x\nversion: '1'\nquestions:\n  - {key: a, prompt: p, type: single, options: [x]}\n",
        4,
        "2 or more options",
    ),
    (
        "id: x\nversion: '1'\nquestions:\n  - {key: a, prompt: p, type: yesno}\n"
        "  - {key: b, prompt: p, type: text, when: {c: 是}}\n",
        5,
        "not an earlier question",
    ),
    (
        "id: x\nversion: '1'\nquestions:\n  - {key: a, prompt: p, type: yesno}\n"
        "  - {key: b, prompt: p, type: text, when: {a: 也许}}\n",
        5,
        "not an option of 'a'",
    ),
    (
        "id: x\nversion: '1'\nfollowup_kinds: {device: 设备}\nquestions:\n"
        "  - key: a\n    prompt: p\n    type: yesno\n    followups:\n"
        "      - {answers: [是], kind: food, due_days: 3}\n",
        9,
        "kind 'food'",
    ),
    (
        "id: x\nversion: '1'\nquestions:\n  - {key: a, prompt: p, type: yesno}\n"
        "  - {key: a, prompt: q, type: text}\n",
        5,
        "used twice",
    ),
    ("id: x\nquestions:\n  - {key: a, prompt: p, type: text}\n", 1, "missing `version`"),
    (
        "id: x\nversion: '1'\naid_review: {question: nope}\nquestions:\n"
        "  - {key: a, prompt: p, type: yesno}\n",
        3,
        "`aid_review` needs `question`",
    ),
]


@pytest.mark.parametrize(("text", "line", "problem"), BROKEN)
def test_broken_form_names_line_and_problem(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = tmp_path / "form.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_form(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert problem in message


def test_safety_answers_and_danger_words_open_an_urgent_safety_followup(form: Form) -> None:
    base = {"method": "电话", "device_ok": "是", "life_hard": "否", "emotion": "稳定"}
    today = date(2026, 3, 2)
    assert form.followups({**base, "relation": "融洽", "other": "无"}, today) == []
    alone = form.followups({**base, "guardian": "孩子独自在家", "other": "无"}, today)
    assert [(f.kind, f.detail) for f in alone] == [("safety", "孩子白天独自在家")]
    note = form.followups({**base, "other": "爸爸喝酒后打孩子"}, today)
    assert [(f.kind, f.due_date) for f in note] == [("safety", today)]
    tense = form.followups({**base, "relation": "紧张"}, today)
    assert [f.kind for f in tense] == ["psych"]
    risks = form.followups({**base, "risks": ["用电用气不安全", "附近有水塘河道"]}, today)
    assert [f.detail for f in risks] == ["用电用气不安全、附近有水塘河道"]
    assert {"safety", "psych", "medical"} == form.urgent_kinds
    # (a family newly in hardship opens an aid review: `aid_review`, see tests/test_reviews.py)
    assert (form.review_key, form.review_answer) == ("life_needs", "父母无法返岗收入减少")
    assert form.review_note_key == "life_note"
