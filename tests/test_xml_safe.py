"""`bot.core.text.xml_safe`: what XML 1.0 cannot carry becomes U+FFFD, everything else stays."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bot.core.text import REPLACEMENT, xml_safe

ILLEGAL = [
    *(chr(c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)),
    "\ud800",  # a lone high surrogate
    "\udfff",  # a lone low surrogate
    "\ufffe",
    "\uffff",
]
LEGAL = ["\t", "\n", "\r", " ", "\x7f", "\ud7ff", "\ue000", "\ufffd", "\U00010000", "\U0010ffff"]


@pytest.mark.parametrize("char", ILLEGAL, ids=lambda c: f"U+{ord(c):04X}")
def test_each_character_xml_cannot_carry_is_replaced(char: str) -> None:
    assert xml_safe(f"备注{char}结束") == f"备注{REPLACEMENT}结束"


def test_characters_xml_can_carry_are_kept_and_the_same_object_comes_back() -> None:
    text = "王小雨 三年级1班 " + "".join(LEGAL) + " 😀"
    assert xml_safe(text) is text


def test_the_result_always_parses_as_xml() -> None:
    every = "".join(ILLEGAL + LEGAL)
    element = ET.fromstring(f"<t>{xml_safe(every)}</t>".encode())
    assert element.text is not None and element.text.count(REPLACEMENT) == len(ILLEGAL) + 1
