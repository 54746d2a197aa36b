"""Text every layer shares: the one date format, and what XML documents (the .xlsx export, WeCom
and WeChat replies) can carry.

XML 1.0 allows only tab, line feed, carriage return, U+0020..U+D7FF, U+E000..U+FFFD and
U+10000..U+10FFFF. Anything else — the other C0 controls, a lone UTF-16 surrogate (which cannot
be encoded as UTF-8 either) and the non-characters U+FFFE and U+FFFF — makes the whole document
unreadable, so one stray character in a teacher's note would cost the coordinator the export.
"""

from __future__ import annotations

import re
from datetime import date

REPLACEMENT = "\ufffd"


def md(day: date) -> str:
    """A date as teachers write it: 3月9日 (the one date format of every message and export)."""
    return f"{day.month}月{day.day}日"


_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 cannot carry replaced by U+FFFD.

    Replaced rather than dropped, so a reader sees that something was there. Text that needs no
    change (nearly all of it) is returned as it is, after one scan.
    """
    if _XML_ILLEGAL.search(text) is None:
        return text
    return _XML_ILLEGAL.sub(REPLACEMENT, text)
