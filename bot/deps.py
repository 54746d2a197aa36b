"""The shared resources a running homevisit needs, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.core.ports import Clock, OneTimeSigns, Outbox
from config.calendar import SchoolCalendar, load_calendar
from config.forms import Form, load_form
from config.settings import Settings
from handlers.cadence import Cadence
from storage.db import Database
from storage.outbox import SqlOutbox
from storage.signs import SqlOneTimeSigns


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Deps:
    db: Database
    form: Form
    clock: Clock = field(default_factory=SystemClock)
    calendar: SchoolCalendar = field(default_factory=SchoolCalendar)
    # the ports channels and the delivery loop use, over `db`
    outbox: Outbox = field(init=False)
    signs: OneTimeSigns = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = SqlOutbox(self.db)
        self.signs = SqlOneTimeSigns(self.db)


def build_deps(settings: Settings, clock: Clock | None = None) -> Deps:
    """Load the form and the calendar (failing fast on a broken file) and open the database."""
    form = load_form(settings.form_path)
    calendar = load_calendar(settings.calendar_path)
    return Deps(open_database(settings), form, clock or SystemClock(), calendar)


def open_database(settings: Settings) -> Database:
    """The database of `settings`, reached directly or through a pooler (HOMEVISIT_PG_POOLER)."""
    return Database(settings.database_url, pooled=settings.pg_pooler == "pgbouncer")


def cadence(settings: Settings, calendar: SchoolCalendar) -> Cadence:
    return Cadence(settings.visit_cycle_days, settings.category_cycle_days, calendar)
