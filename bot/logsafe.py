"""Logging an unexpected exception without personal data, and the process's log format.

An exception's message can quote data: a database error repeats the row it refused (a student's
name, a teacher's note). For failures nobody expected, log the exception's type and where it
happened, never its message.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime


def log_failure(log: logging.Logger, message: str, *args: object, exc: BaseException) -> None:
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error(message + " [%s]\n%s", *args, type(exc).__name__, frames.rstrip())


def failure_place(exc: BaseException) -> str:
    """ "KeyError at handlers/reminders.py:412": the exception's type and innermost frame,
    never its message (which may quote a student's data), for a record an operator reads."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    parts = last.filename.replace("\\", "/").split("/")
    short = "/".join(parts[-2:])
    return f"{type(exc).__name__} at {short}:{last.lineno}"


_OURS = "homevisit_handler"
# The attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (HOMEVISIT_LOG_FORMAT=json), for a log collector: time (UTC,
    ISO 8601), level, logger, message, and the record's `extra=` fields. An exception is given
    by its type and frames, never its message (see `log_failure`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            entry["exc_type"] = type(exc).__name__
            entry["traceback"] = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: int, fmt: str = "text") -> None:
    """The process's logging: `text` (one readable line) or `json` (see JsonFormatter).

    Like `logging.basicConfig`, it leaves a logging set-up of someone else's alone (a test
    runner's, an embedding program's); its own handler it replaces.
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)  # (its plugins announce themselves)
    root = logging.getLogger()
    if any(not getattr(h, _OURS, False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    setattr(handler, _OURS, True)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
