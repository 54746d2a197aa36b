"""Issue 18 item 4: HOMEVISIT_LOG_FORMAT=json writes one JSON object per log line.

The formatter on its own (fields, `extra=`, exceptions without their message), then a real
`python -m bot serve` process whose whole log is JSON, and a bad value that stops start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from bot.logsafe import JsonFormatter, log_failure
from tests.procs import BotServer, bot_env, run_bot

SECRET_DETAIL = "周小禾 lives at 3 Elm Road"  # stands for data an exception message may quote
API_TOKEN = "logging-test-token-0123456789abcdef"


def record(logger: logging.Logger, capture: list[logging.LogRecord]) -> None:
    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            capture.append(rec)

    logger.addHandler(Keep())
    logger.propagate = False
    logger.setLevel(logging.INFO)


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    log = logging.getLogger("homevisit.test.json")
    kept: list[logging.LogRecord] = []
    record(log, kept)
    log.info("job %s: %d queued\nsecond line", "remind", 3, extra={"job": "remind", "n": 3})
    line = JsonFormatter().format(kept[0])
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "homevisit.test.json"
    assert entry["message"] == "job remind: 3 queued\nsecond line"
    assert entry["job"] == "remind" and entry["n"] == 3
    assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
    assert set(entry) == {"time", "level", "logger", "message", "job", "n"}


def test_an_exception_is_logged_by_type_and_frames_never_its_message() -> None:
    log = logging.getLogger("homevisit.test.json.exc")
    kept: list[logging.LogRecord] = []
    record(log, kept)
    try:
        raise ValueError(SECRET_DETAIL)
    except ValueError as exc:
        log_failure(log, "turn failed channel=%s", "api", exc=exc)
        log.exception("a library logged it its own way")
    entries = [json.loads(JsonFormatter().format(r)) for r in kept]
    assert entries[0]["level"] == "ERROR"
    assert entries[0]["message"].startswith("turn failed channel=api [ValueError]")
    assert entries[1]["exc_type"] == "ValueError"
    assert "test_logging.py" in entries[1]["traceback"]
    assert all(SECRET_DETAIL not in json.dumps(e, ensure_ascii=False) for e in entries)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_serve_writes_only_json_lines(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    env = bot_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'hv.db'}",
        API_TOKEN=API_TOKEN,
        HOMEVISIT_LOG_FORMAT="json",
    )
    demo = await run_bot(env, tmp_path, "demo")
    assert demo.returncode == 0, demo.stderr
    server = BotServer("serve", env, tmp_path)
    server.start()
    try:
        await server.wait_ready(http)
        body = {"user": "NOBODY", "text": "家访"}
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with http.post(f"{server.url}/api/messages", json=body, headers=headers) as r:
            assert r.status == 200
    finally:
        server.stop()
    lines = server.log_path.read_text("utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("Running on" in e["message"] for e in entries), lines
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert "NOBODY" not in "\n".join(lines)


async def test_a_bad_log_format_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    env = bot_env(DATABASE_URL=f"sqlite:///{tmp_path / 'hv.db'}", HOMEVISIT_LOG_FORMAT="yaml")
    result = await run_bot(env, tmp_path, "serve", "--port", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "homevisit: configuration error: HOMEVISIT_LOG_FORMAT: must be one of text, json, "
        "got 'yaml'"
    ]
    assert not (tmp_path / "hv.db").exists()
