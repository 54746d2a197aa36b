"""The shared resources a running homevisit needs, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.core.ports import Clock
from config.settings import Settings
from handlers.forms import Form, load_form
from storage.db import Database


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Deps:
    db: Database
    form: Form
    clock: Clock = field(default_factory=SystemClock)


def build_deps(settings: Settings, clock: Clock | None = None) -> Deps:
    """Load the form (failing fast on a broken file) and open the database."""
    form = load_form(settings.form_path)
    return Deps(db=Database(settings.database_url), form=form, clock=clock or SystemClock())
