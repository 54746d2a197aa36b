"""The school calendar: which local dates are school days (weekdays, minus holidays, plus 调休)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import yaml

from bot.core.errors import ConfigError

DEFAULT_CALENDAR = Path(__file__).parent / "calendar.yaml"
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.\.(\d{4}-\d{2}-\d{2}))?$")


@dataclass(frozen=True, slots=True)
class SchoolCalendar:
    holidays: frozenset[date] = field(default_factory=frozenset)
    workdays: frozenset[date] = field(default_factory=frozenset)

    def is_school_day(self, day: date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def school_days_before(self, day: date, count: int) -> date:
        """The school day `count` school days before `day` (`day` itself when `count` is 0):
        something due before it is overdue by more than `count` school days on `day`."""
        for _ in range(count):
            day -= timedelta(days=1)
            for _ in range(400):
                if self.is_school_day(day):
                    break
                day -= timedelta(days=1)
            else:
                raise ConfigError("calendar: no school day within a year")
        return day

    def next_school_day(self, after: date) -> date:
        """The first school day strictly after `after`."""
        day = after + timedelta(days=1)
        for _ in range(400):  # a calendar with no school day in a year is a broken calendar
            if self.is_school_day(day):
                return day
            day += timedelta(days=1)
        raise ConfigError("calendar: no school day within a year")


def load_calendar(path: str | Path) -> SchoolCalendar:
    """Read a calendar file. Raises ConfigError naming the file, the line and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the calendar ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(f"{path}:{line}: not valid YAML ({exc.problem})") from exc
    except yaml.YAMLError as exc:  # e.g. a character YAML does not allow
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__})") from exc
    if node is None:
        return SchoolCalendar()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:1: expected `holidays:` and `workdays:` lists")
    days: dict[str, set[date]] = {"holidays": set(), "workdays": set()}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in days:
            raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: unknown key {key!r}")
        if isinstance(value_node, yaml.ScalarNode) and value_node.value in ("", "null", "~"):
            continue
        if not isinstance(value_node, yaml.SequenceNode):
            raise ConfigError(f"{path}:{value_node.start_mark.line + 1}: {key} must be a list")
        for item in value_node.value:
            days[key] |= _dates(item, path)
    both = days["holidays"] & days["workdays"]
    if both:
        first = min(both)
        raise ConfigError(f"{path}: {first} is both a holiday and a workday")
    return SchoolCalendar(frozenset(days["holidays"]), frozenset(days["workdays"]))


def _dates(item: yaml.Node, path: Path) -> set[date]:
    line = item.start_mark.line + 1
    m = _RANGE.match(str(item.value).strip()) if isinstance(item, yaml.ScalarNode) else None
    try:
        if m is None:
            raise ValueError
        start = date.fromisoformat(m.group(1))
        end = date.fromisoformat(m.group(2)) if m.group(2) else start
    except ValueError:
        raise ConfigError(
            f"{path}:{line}: expected a date YYYY-MM-DD or a range YYYY-MM-DD..YYYY-MM-DD, "
            f"got {getattr(item, 'value', '?')!r}"
        ) from None
    if end < start or (end - start).days > 366:
        raise ConfigError(f"{path}:{line}: the range ends before it starts or spans over a year")
    return {start + timedelta(days=i) for i in range((end - start).days + 1)}
