from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bot.core.errors import ConfigError
from config.calendar import DEFAULT_CALENDAR, load_calendar


def test_shipped_calendar_has_holidays_and_makeup_days() -> None:
    cal = load_calendar(DEFAULT_CALENDAR)
    assert not cal.is_school_day(date(2026, 10, 1))  # 国庆
    assert cal.is_school_day(date(2026, 10, 10))  # a Saturday of 调休
    assert not cal.is_school_day(date(2026, 10, 11))  # an ordinary Sunday
    assert cal.next_school_day(date(2026, 9, 30)) == date(2026, 10, 8)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("holidays:\n  - 2026-13-01\n", 2, "expected a date"),
        ("holidays:\n  - 2026-05-05..2026-05-01\n", 2, "ends before it starts"),
        ("holidays: 2026-05-01\n", 1, "must be a list"),
        ("holiday:\n  - 2026-05-01\n", 1, "unknown key 'holiday'"),
        ("holidays:\n  - [2026-05-01\n", 3, "not valid YAML"),
    ],
)
def test_broken_calendar_names_line_and_problem(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = tmp_path / "calendar.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_calendar(path)
    assert str(info.value).startswith(f"{path}:{line}:") and problem in str(info.value)


def test_a_day_cannot_be_both_holiday_and_workday(tmp_path: Path) -> None:
    path = tmp_path / "calendar.yaml"
    path.write_text("holidays: [2026-05-01]\nworkdays: [2026-05-01]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="both a holiday and a workday"):
        load_calendar(path)
