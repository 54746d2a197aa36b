"""Decoding JSON that came off the wire (request bodies, Stream frames, platform answers).

`json.loads` recurses once per nesting level, so `[[[[...]]]]` 10,000 levels deep (20 KB, well
under any body limit) ends in a RecursionError: an HTTP 500 instead of a 400, or a dropped Stream
connection. `loads` refuses such input before `json.loads` sees it, with a `BadJSON` (a
ValueError, like every other "this is not usable JSON" answer).

Why a pre-scan rather than catching RecursionError: how deep `json.loads` gets before it gives
up depends on the interpreter's recursion limit and on how deep the caller's stack already is, so
the same body could pass in one place and fail in another; and every level it does reach costs a
C stack frame. The scan is one regular-expression pass that blanks out string literals (a bracket
inside a string does not nest) and a count of the brackets left: linear, and nearly free for the
usual body, whose brackets are fewer than the limit. No message the platforms send nests deeper
than a handful of levels; `MAX_DEPTH` leaves ample room.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32

# A complete JSON string literal: quote, then runs of plain characters and escapes, then quote.
# (Written as an unrolled loop, so matching is linear with no backtracking.)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class BadJSON(ValueError):
    """Not JSON, or nested deeper than allowed. The message names neither content nor ids."""


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` for untrusted input; BadJSON when it is not JSON or nests too deep.

    Bytes are decoded as `json.loads` would (UTF-8, with or without BOM, or UTF-16/32).
    """
    try:
        text = data.decode(json.detect_encoding(data)) if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise BadJSON("not valid JSON (bad encoding)") from exc
    if too_deep(text, max_depth):
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError as exc:  # not reached below MAX_DEPTH; a last guard all the same
        raise BadJSON(f"JSON nested deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise BadJSON("not valid JSON") from exc


def too_deep(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Do brackets outside string literals nest deeper than ``max_depth``?

    For broken JSON (an unterminated string) the answer errs towards "too deep", which is
    refused like any other unusable body.
    """
    if text.count("[") + text.count("{") <= max_depth:  # the usual body: nothing to scan
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth
