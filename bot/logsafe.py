"""Logging an unexpected exception without personal data.

An exception's message can quote data: a database error repeats the row it refused (a student's
name, a teacher's note). For failures nobody expected, log the exception's type and where it
happened, never its message.
"""

from __future__ import annotations

import logging
import traceback


def log_failure(log: logging.Logger, message: str, *args: object, exc: BaseException) -> None:
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error(message + " [%s]\n%s", *args, type(exc).__name__, frames.rstrip())
