"""When a student is due a visit: every N days, sooner for some aid categories.

A visit whose method says the family could not be reached ("联系不上") does not count: the student
is due again on the next school day after that attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeVar

from config.calendar import SchoolCalendar


@dataclass(frozen=True, slots=True)
class Cadence:
    default_days: int = 14
    by_category: Mapping[str, int] = field(default_factory=dict)
    calendar: SchoolCalendar = field(default_factory=SchoolCalendar)

    def cycle_days(self, categories: Iterable[str]) -> int:
        """The shortest cycle among the student's categories, else the default."""
        return min(
            (self.by_category[c] for c in categories if c in self.by_category),
            default=self.default_days,
        )

    def is_short_cycle(self, categories: Iterable[str]) -> bool:
        """A category of the student is visited more often than the default (孤儿, 大病 …)."""
        return self.cycle_days(categories) < self.default_days

    def school_day_from(self, day: date) -> date:
        """`day` if it is a school day, else the next one (a due date never falls on Saturday)."""
        return day if self.calendar.is_school_day(day) else self.calendar.next_school_day(day)

    def due_date(
        self, categories: Iterable[str], last_reached: date | None, last_unreached: date | None
    ) -> date | None:
        """The local date the next visit is due; None when the student was never visited."""
        if last_attempt_unreached(last_reached, last_unreached):
            assert last_unreached is not None
            return self.calendar.next_school_day(last_unreached)
        if last_reached is None:
            return None
        return last_reached + timedelta(days=self.cycle_days(categories))


When = TypeVar("When", date, datetime)


def last_attempt_unreached(last_reached: When | None, last_unreached: When | None) -> bool:
    """The latest attempt did not reach the family: the one rule for "上次没联系上"."""
    return last_unreached is not None and (last_reached is None or last_unreached > last_reached)


def overdue_days(due: date | None, today: date) -> int | None:
    """Days past due (0 = due today, negative = not yet due); None = never visited."""
    return None if due is None else (today - due).days


def is_due(due: date | None, today: date) -> bool:
    return due is None or due <= today


def urgency_key(due: date | None) -> tuple[int, int]:
    """Sort key: never visited first, then the longest overdue."""
    return (0, 0) if due is None else (1, due.toordinal())
