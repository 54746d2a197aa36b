"""The visit cycle as moments in time: what storage compares each student's visits with.

`handlers.cadence.Cadence` says when one student is due; the console needs the same answer for a
hundred thousand students in one SQL statement, so the rule is turned around into cut-off moments
(see `bot.core.console_ports.CycleCutoffs`). The result equals `Cadence.due_date` for every
student; `tests/test_console_pages.py` checks the dashboard against the digest's figures.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.core.console_ports import CycleCutoffs
from config.calendar import SchoolCalendar
from handlers.cadence import Cadence

CHART_DAYS = 56  # eight weeks


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The UTC moment local `day` begins."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def last_school_day(calendar: SchoolCalendar, on_or_before: date) -> date:
    day = on_or_before
    for _ in range(400):
        if calendar.is_school_day(day):
            return day
        day -= timedelta(days=1)
    return on_or_before  # (a calendar without school days: nothing is ever retried late)


def cutoffs(cadence: Cadence, today: date, tz: ZoneInfo) -> CycleCutoffs:
    """Reached on or after `since` (cycle of N days: local day today-N+1) is not yet due again;
    reached before `late` (today-N) is overdue. A failed attempt on day d makes the student due
    on the next school day after d: not yet when d is on or after the last school day up to
    today, overdue when d is before the last school day up to yesterday."""
    by_days: dict[int, set[str]] = defaultdict(set)
    for category, days in cadence.by_category.items():
        by_days[days].add(category)
    cal = cadence.calendar

    def since(days: int) -> datetime:
        return day_start(today - timedelta(days=days - 1), tz)

    def late(days: int) -> datetime:
        return day_start(today - timedelta(days=days), tz)

    return CycleCutoffs(
        since=since(cadence.default_days),
        late=late(cadence.default_days),
        retry_since=day_start(last_school_day(cal, today), tz),
        retry_late=day_start(last_school_day(cal, today - timedelta(days=1)), tz),
        by_category=tuple(
            (frozenset(cats), since(days), late(days)) for days, cats in sorted(by_days.items())
        ),
    )


def per_school_day(
    per_hour: list[tuple[datetime, int]], today: date, tz: ZoneInfo, calendar: SchoolCalendar
) -> list[tuple[date, int]]:
    """Visits per local day over the chart's window: every school day, and any other day that
    had visits."""
    counts: dict[date, int] = defaultdict(int)
    for hour, n in per_hour:
        counts[hour.astimezone(tz).date()] += n
    first = today - timedelta(days=CHART_DAYS - 1)
    days = [first + timedelta(days=i) for i in range(CHART_DAYS)]
    return [(d, counts.get(d, 0)) for d in days if calendar.is_school_day(d) or counts.get(d)]


def window_start(today: date, tz: ZoneInfo) -> datetime:
    return day_start(today - timedelta(days=CHART_DAYS - 1), tz)
