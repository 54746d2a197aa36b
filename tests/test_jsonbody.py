"""The safe JSON loader every channel uses for bodies, frames and platform answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot import jsonbody
from bot.jsonbody import MAX_DEPTH, BadJSON


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH),
        '{"a": {"b": [1, {"c": null}]}, "d": "x"}',
        # brackets inside strings do not nest, escaped quotes do not end the string
        json.dumps({"t": "[" * 500 + '"\\' + "{" * 500}),
        json.dumps(["]" * 100, "[" * 100]),
        # wide but shallow: many brackets, never more than two deep
        json.dumps([{"k": [i]} for i in range(1000)]),
        '"just a string"',
        "42",
    ],
)
def test_ordinary_json_loads_as_json_loads_would(text: str) -> None:
    assert jsonbody.loads(text) == json.loads(text)
    assert jsonbody.loads(text.encode("utf-8")) == json.loads(text)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(nested(MAX_DEPTH + 1), id="one-level-too-deep"),
        pytest.param(nested(10_000), id="10000-deep-list"),
        pytest.param('{"a":' * 10_000 + "1" + "}" * 10_000, id="10000-deep-object"),
        pytest.param("[" * 100_000, id="unclosed"),
        pytest.param(json.dumps({"s": "x"}) + "[" * 50, id="deep-after-a-string"),
    ],
)
def test_deep_nesting_is_refused_before_json_loads_recurses(data: str) -> None:
    with pytest.raises(BadJSON, match="nested deeper than 32"):
        jsonbody.loads(data)


@pytest.mark.parametrize(
    "data", [b"{not json", b"\xff\xfe\x00", b"", b"\x80abc", "[1,]", b'"\xc3('], ids=repr
)
def test_broken_json_is_bad_json_a_value_error(data: Any) -> None:
    with pytest.raises(BadJSON) as caught:
        jsonbody.loads(data)
    assert isinstance(caught.value, ValueError)


def test_a_byte_order_mark_is_accepted_like_json_loads_does() -> None:
    data = b"\xef\xbb\xbf" + b'{"a": 1}'
    assert jsonbody.loads(data) == json.loads(data) == {"a": 1}


def test_the_limit_can_be_lowered() -> None:
    assert jsonbody.loads(nested(2), max_depth=2) == [[]]
    with pytest.raises(BadJSON):
        jsonbody.loads(nested(3), max_depth=2)
