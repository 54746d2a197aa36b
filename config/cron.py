"""Crontab expressions as people write them, turned into APScheduler 3 triggers.

APScheduler 3's `CronTrigger.from_crontab` reads a numeric day of week with 0 = Monday, unlike cron
(0 or 7 = Sunday): "1-5" would mean Tuesday to Saturday. This module rewrites the day-of-week field
into weekday names first, so `0 9 * * 1-5` means 09:00 Monday to Friday, as in cron.
"""

from __future__ import annotations

import re
from datetime import tzinfo

from apscheduler.triggers.cron import CronTrigger

NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_PART = re.compile(r"^(\*|\w+)(?:-(\w+))?(?:/(\d+))?$")


def _day(token: str) -> int:
    low = token.lower()[:3]
    if low in NAMES:
        return NAMES.index(low)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    raise ValueError(f"bad day of week {token!r}")


def weekdays(field: str) -> set[int]:
    """The cron day-of-week field as a set of days, 0 = Sunday."""
    days: set[int] = set()
    for part in field.split(","):
        m = _PART.match(part.strip())
        if not m:
            raise ValueError(f"bad day of week {part!r}")
        start, end, step = m.group(1), m.group(2), int(m.group(3) or 1)
        if start == "*":
            first, last = 0, 6
        else:
            first = _day(start)
            last = (7 if end == "7" else _day(end)) if end else (6 if m.group(3) else first)
        if last < first:
            raise ValueError(f"bad day-of-week range {part!r}")
        days |= {d % 7 for d in range(first, last + 1, step)}
    return days


def crontab_trigger(expr: str, tz: tzinfo) -> CronTrigger:
    """A CronTrigger for a 5-field crontab, with cron's day-of-week numbering. ValueError if bad."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, day, month, dow = fields
    names = ",".join(NAMES[d] for d in sorted(weekdays(dow))) if dow != "*" else "*"
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=names, timezone=tz
    )
