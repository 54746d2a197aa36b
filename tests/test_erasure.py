"""A guardian's access request and erasure (issue 16 item 2): `homevisit student export` writes
everything held about one student, `homevisit student erase` removes it and leaves an audit entry
without the data. Both backends, through the real CLI. Names are fictional."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select

from bot.deps import Deps
from config.settings import Settings
from storage.audit import verify_chain
from storage.erasure import pseudonym
from storage.migrate import alembic_config
from storage.schema import audit_log, metadata, students
from tests.conftest import ChatDriver
from tests.console_kit import ConsoleClient, add_school, start_console
from tests.procs import bot_env, run_bot
from tests.test_sensitive import NOTE, OTHER, visit_zhou


def everything(deps: Deps) -> str:
    """Every row of every table, as text."""
    with deps.db.begin() as conn:
        return "\n".join(
            str(tuple(row))
            for table in metadata.sorted_tables
            for row in conn.execute(select(table))
        )


async def test_export_then_erase_a_student(
    bot: ChatDriver, settings: Settings, deps: Deps, tmp_path: Path
) -> None:
    await visit_zhou(bot)
    await bot.say("家访")  # T001's current list now holds 周小禾
    command.stamp(alembic_config(deps.db.engine), "head")
    env = bot_env(DATABASE_URL=settings.database_url)

    out = tmp_path / "zhou.json"
    made = await run_bot(env, tmp_path, "student", "export", "DEMO0003", "--out", str(out))
    assert made.returncode == 0, made.stderr
    data = json.loads(out.read_text("utf-8"))
    assert data["student"]["name"] == "周小禾" and data["student"]["categories"] == ["残疾"]
    assert data["student"]["staff"] == [{"role": "head_teacher", "staff_no": "T001"}]
    assert [v["answers"]["life_note"] for v in data["visits"]] == [NOTE]
    assert {f["kind"] for f in data["followups"]} == {"living_aid", "psych"}
    assert "周小禾" in everything(deps)

    for args in (
        ["export", "NOPE", "--out", str(tmp_path / "x.json")],
        ["erase", "NOPE", "--reason", "x"],
    ):
        unknown = await run_bot(env, tmp_path, "student", *args)
        assert unknown.returncode == 1 and "NOPE" in unknown.stderr
        assert unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    no_reason = await run_bot(env, tmp_path, "student", "erase", "DEMO0003", "--reason", " ")
    assert no_reason.returncode == 1 and "--reason" in no_reason.stderr

    erased = await run_bot(
        env, tmp_path, "student", "erase", "DEMO0003", "--reason", "家长申请删除"
    )
    assert erased.returncode == 0, erased.stderr
    assert "1 visits, 3 follow-ups, 1 open conversations" in erased.stdout
    held = everything(deps)
    for trace in ("周小禾", NOTE, OTHER):
        assert trace not in held
    with deps.db.begin() as conn:
        entries = conn.execute(select(audit_log.c.action, audit_log.c.detail)).all()
        assert verify_chain(conn).ok
    erase = [json.loads(d) for a, d in entries if a == "student_erase"]
    assert erase == [
        {"student": pseudonym("DEMO0003"), "reason": "家长申请删除", "visits": 1, "followups": 3}
    ]
    assert [a for a, _ in entries].count("student_export") == 1

    # the teacher carries on: the list no longer has the student, nothing breaks
    reply = await bot.say("家访")
    assert "周小禾" not in reply and "陈小树" in reply
    again = await run_bot(env, tmp_path, "student", "export", "DEMO0003", "--out", str(out))
    assert again.returncode == 1 and "DEMO0003" in again.stderr


# ---------------------------------------------------------------------------- the console
@pytest.fixture
async def web(settings: Settings, deps: Deps) -> AsyncIterator[ConsoleClient]:
    async for client in start_console(settings, deps):
        yield client


async def test_coordinators_answer_access_and_erasure_requests_in_the_console(
    web: ConsoleClient, bot: ChatDriver, deps: Deps
) -> None:
    await visit_zhou(bot)
    add_school(deps.db)
    with deps.db.begin() as conn:
        zhou = conn.execute(select(students.c.id).where(students.c.name == "周小禾")).scalar_one()
    page = f"/console/students/{zhou}"

    web.forget_cookies()
    await web.sign_in("C101")  # another school's coordinator: as if the student did not exist
    token = await web.csrf()
    for action in ("data", "erase"):
        form = {"csrf_token": token, "confirm": "DEMO0003", "reason": "x"}
        async with await web.post(f"{page}/{action}", data=form) as r:
            assert r.status == 404 if action == "data" else r.headers["Location"].endswith("check")

    web.forget_cookies()
    await web.sign_in("C001")
    assert "家长查询与删除" in await web.text(page)
    token = await web.csrf()
    async with await web.post(f"{page}/data", data={"csrf_token": token}) as r:
        assert r.status == 200 and "DEMO0003.json" in r.headers["Content-Disposition"]
        data = json.loads(await r.read())
    assert data["student"]["name"] == "周小禾" and data["visits"][0]["answers"]["other"] == OTHER
    async with await web.post(f"{page}/data", data={"csrf_token": "forged"}) as r:
        assert r.status == 403

    for confirm, reason in (("DEMO0001", "家长申请"), ("DEMO0003", "  ")):
        form = {"csrf_token": token, "confirm": confirm, "reason": reason}
        async with await web.post(f"{page}/erase", data=form) as r:
            assert r.status == 303 and r.headers["Location"] == f"{page}?erase=check"
    assert "请重新输入该生的学籍号" in await web.text(f"{page}?erase=check")
    assert "周小禾" in everything(deps)

    form = {"csrf_token": token, "confirm": "DEMO0003", "reason": "家长书面申请"}
    async with await web.post(f"{page}/erase", data=form) as r:
        assert r.status == 303 and r.headers["Location"] == "/console/students"
    assert "周小禾" not in everything(deps) and NOTE not in everything(deps)
    await web.text(page, status=404)
    with deps.db.begin() as conn:
        entries = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.detail).where(
                audit_log.c.action.in_(["student_export", "student_erase"])
            )
        ).all()
        assert verify_chain(conn).ok
    assert [(a, b) for a, b, _ in entries] == [
        ("C001", "student_export"),
        ("C001", "student_erase"),
    ]
    assert "DEMO0003" not in entries[1][2] and "家长书面申请" in entries[1][2]
    assert "删除学生数据" in await web.text("/console/audit")
