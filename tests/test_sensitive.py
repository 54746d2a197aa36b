"""Sensitive answers (issue 16 item 1): marked in the form, left out of exports unless asked for
(audited with the reason), refused to anyone out of scope, never in a digest. Names are fictional.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import openpyxl
import pytest
from alembic import command
from sqlalchemy import select

from bot.deps import Deps
from bot.jobs import DIGEST
from config.forms import WITHHELD, load_form
from config.settings import DEFAULT_FORM, Settings
from storage.audit import verify_chain
from storage.migrate import alembic_config
from storage.schema import audit_log
from tests.conftest import ChatDriver
from tests.console_kit import ConsoleClient, add_school, start_console
from tests.procs import bot_env, run_bot
from tests.test_schedule import World, local, world  # noqa: F401  (the fixture)

NOTE = "妈妈失业在家心情低落"
OTHER = "孩子说晚上害怕一个人"
CHECKIN = ["3", "1", "1", "1", "2", NOTE, "3", "3", "1", "1", "1", OTHER]
SENSITIVE_HEADERS = ("困难说明", "情绪状态", "亲子关系", "看护人", "安全隐患", "其他情况")
SECRETS = (NOTE, OTHER, "需要心理疏导", "紧张", "亲子关系紧张")


async def visit_zhou(bot: ChatDriver) -> None:
    """T001 visits 周小禾: a living-aid need with a note, counselling, a tense relationship."""
    await bot.say("家访")
    await bot.say("周小禾")
    for answer in CHECKIN:
        await bot.say(answer)
    assert "新增跟进事项3项" in await bot.say("提交")


def cells(path_or_bytes: Path | bytes) -> list[list[object]]:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    book = openpyxl.load_workbook(source)
    try:
        return [list(r) for ws in book.worksheets for r in ws.iter_rows(values_only=True)]
    finally:
        book.close()


def flat(rows: list[list[object]]) -> str:
    return "\n".join("|".join("" if c is None else str(c) for c in row) for row in rows)


def test_the_default_form_marks_what_is_sensitive() -> None:
    form = load_form(DEFAULT_FORM)
    assert form.sensitive_keys == {"life_note", "emotion", "relation", "guardian", "risks", "other"}
    assert form.sensitive_kinds == {"psych", "safety", "medical"}
    assert form.public_detail("psych", "需要心理疏导") == WITHHELD
    assert form.public_detail("living_aid", f"食品和生活物资（{NOTE}）") == "食品和生活物资"
    assert form.public_detail("device", "平板或电脑") == "平板或电脑"


def test_a_text_question_can_be_marked_not_sensitive(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "id: x\nversion: '1'\nquestions:\n"
        "  - {key: a, prompt: a, type: text}\n"
        "  - {key: b, prompt: b, type: text, sensitive: false}\n"
        "  - {key: c, prompt: c, type: yesno, sensitive: true}\n",
        encoding="utf-8",
    )
    assert load_form(path).sensitive_keys == {"a", "c"}


# ---------------------------------------------------------------------------- the CLI
async def test_cli_export_leaves_sensitive_answers_out_unless_asked(
    bot: ChatDriver, settings: Settings, deps: Deps, tmp_path: Path
) -> None:
    await visit_zhou(bot)
    command.stamp(alembic_config(deps.db.engine), "head")  # (the fixture made the tables)
    env = bot_env(DATABASE_URL=settings.database_url)
    plain = await run_bot(env, tmp_path, "export", "--out", "plain.xlsx")
    assert plain.returncode == 0, plain.stderr
    rows = cells(tmp_path / "plain.xlsx")
    text = flat(rows)
    assert "周小禾" in text and "食品和生活物资" in text and "家访方式" in text
    assert not any(h in rows[0] for h in SENSITIVE_HEADERS)
    assert not any(secret in text for secret in SECRETS), text
    assert WITHHELD in text and "备注" not in text

    for args, words in (
        (["--include-sensitive", "--user", "C001"], "--reason"),
        (["--include-sensitive", "--reason", "个案会商"], "--user"),
        (["--include-sensitive", "--user", "T001", "--reason", "x"], "may not export"),
        # (a teacher's --user alone: not "无权导出敏感信息", nothing sensitive was asked for)
        (["--user", "T001"], "工号 T001 无权导出（只有协调员导出本校的、教育局导出全区的）"),
        (["--include-sensitive", "--user", "NOPE", "--reason", "x"], "not found"),
    ):
        refused = await run_bot(env, tmp_path, "export", "--out", "no.xlsx", *args)
        assert refused.returncode == 1 and words in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1
    assert not (tmp_path / "no.xlsx").exists()

    full = await run_bot(
        env,
        tmp_path,
        "export",
        "--out",
        "full.xlsx",
        "--include-sensitive",
        "--user",
        "C001",
        "--reason",
        "心理老师个案会商",
    )
    assert full.returncode == 0, full.stderr
    rows = cells(tmp_path / "full.xlsx")
    assert all(h in rows[0] for h in SENSITIVE_HEADERS)
    assert NOTE in flat(rows) and OTHER in flat(rows)
    with deps.db.begin() as conn:
        entries = conn.execute(
            select(audit_log.c.actor, audit_log.c.detail).where(audit_log.c.action == "export")
        ).all()
        assert verify_chain(conn).ok
    details = [(actor, json.loads(detail)) for actor, detail in entries]
    assert [(a, d["sensitive"]) for a, d in details] == [("cli", False), ("C001", True)]
    assert details[1][1]["reason"] == "心理老师个案会商"
    assert "周小禾" not in "".join(d for _, d in entries)


# ---------------------------------------------------------------------------- the console
@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def test_console_export_with_sensitive_answers_needs_a_reason(
    web: ConsoleClient, bot: ChatDriver, deps: Deps
) -> None:
    await visit_zhou(bot)
    add_school(deps.db)
    await web.sign_in("C001")
    async with await web.get("/console/export?format=xlsx") as r:
        assert r.status == 200
        plain = flat(cells(await r.read()))
    assert "周小禾" in plain and not any(s in plain for s in SECRETS)
    token = await web.csrf()
    form = {"csrf_token": token, "format": "xlsx", "include_sensitive": "1", "reason": "  "}
    async with await web.post("/console/export", data=form) as r:
        assert r.status == 400 and "须填写理由" in await r.text()
    async with await web.post("/console/export", data={**form, "csrf_token": "x"}) as r:
        assert r.status == 403
    async with await web.post("/console/export", data={**form, "reason": "个案会商"}) as r:
        assert r.status == 200
        full = flat(cells(await r.read()))
    assert NOTE in full and "情绪状态" in full

    # another school's coordinator: the sensitive export holds only their own school
    web.forget_cookies()
    await web.sign_in("C101")
    token = await web.csrf()
    form = {"csrf_token": token, "format": "xlsx", "include_sensitive": "1", "reason": "查看"}
    async with await web.post("/console/export", data=form) as r:
        assert r.status == 200
        theirs = flat(cells(await r.read()))
    assert "周小禾" not in theirs and NOTE not in theirs
    with deps.db.begin() as conn:
        entries = conn.execute(
            select(audit_log.c.actor, audit_log.c.detail).where(audit_log.c.action == "export")
        ).all()
    marked = [(a, json.loads(d)["sensitive"], json.loads(d).get("reason")) for a, d in entries]
    assert marked == [("C001", False, None), ("C001", True, "个案会商"), ("C101", True, "查看")]


async def test_console_student_page_is_for_the_students_school_only(
    web: ConsoleClient, bot: ChatDriver, deps: Deps
) -> None:
    await visit_zhou(bot)
    add_school(deps.db)
    with deps.db.begin() as conn:
        from storage.schema import students

        zhou = conn.execute(select(students.c.id).where(students.c.name == "周小禾")).scalar_one()
    await web.sign_in("C001")
    assert NOTE in await web.text(f"/console/students/{zhou}")
    web.forget_cookies()
    await web.sign_in("C101")
    assert NOTE not in await web.text(f"/console/students/{zhou}", status=404)


# ---------------------------------------------------------------------------- digests
async def test_digests_never_carry_sensitive_answers(
    world: World,  # noqa: F811
    bot: ChatDriver,
) -> None:
    await visit_zhou(bot)
    await world.at(local(date(2026, 3, 2), 17, 5), DIGEST)
    sent = [text for inbox in (world.wecom, world.dingtalk, world.group) for _, text in inbox.got]
    assert any("家访日报" in text for text in sent)
    for text in sent:
        assert not any(secret in text for secret in (NOTE, OTHER, "亲子关系紧张")), text
