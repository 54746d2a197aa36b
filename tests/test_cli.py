"""The `homevisit` command line, run as a real process on a real SQLite file."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import create_engine
from sqlalchemy import select as sql_select

from storage.schema import audit_log, students, visits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    platform = ("WECOM_", "DINGTALK_", "WECHAT_")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(platform)}
    return {**keep, "DATABASE_URL": f"sqlite:///{tmp_path / 'hv.db'}", "PYTHONPATH": str(ROOT)}


def homevisit(
    env: dict[str, str], cwd: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def db_rows(tmp_path: Path, table: object) -> list[object]:
    engine = create_engine(f"sqlite:///{tmp_path / 'hv.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sql_select(table)).all())  # type: ignore[call-overload]
    finally:
        engine.dispose()


def test_demo_is_idempotent(env: dict[str, str], tmp_path: Path) -> None:
    first = homevisit(env, tmp_path, "demo")
    assert first.returncode == 0, first.stderr
    assert "学生新增 12 人" in first.stdout
    second = homevisit(env, tmp_path, "demo")
    assert second.returncode == 0 and "学生新增 0 人" in second.stdout
    assert len(db_rows(tmp_path, students)) == 12


def test_piped_console_checkin_then_export(env: dict[str, str], tmp_path: Path) -> None:
    homevisit(env, tmp_path, "demo")
    script = (
        "\n".join(
            ["家访", "周小禾", "3", "1", "2", "1", "2", "1", "1", "1", "1", "1", "无", "提交"]
        )
        + "\n"
    )
    chat = homevisit(env, tmp_path, "chat", "--user", "T001", stdin=script)
    assert chat.returncode == 0, chat.stderr
    assert "> 提交\n已提交 周小禾（三年级1班）" in chat.stdout
    out = tmp_path / "out.xlsx"
    exported = homevisit(env, tmp_path, "export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "exported 1 visits and 1 follow-ups" in exported.stdout and out.is_file()


def test_unknown_staff_number_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    homevisit(env, tmp_path, "demo")
    result = homevisit(env, tmp_path, "chat", "--user", "NOPE", stdin="家访\n")
    assert result.returncode == 1
    assert "NOPE" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_configuration_error_names_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    result = homevisit({**env, "WECOM_CORP_ID": "ww1"}, tmp_path, "db", "upgrade")
    assert result.returncode == 2
    assert "WECOM_AES_KEY" in result.stderr and "Traceback" not in result.stderr


def test_broken_form_stops_start_up_with_the_line(env: dict[str, str], tmp_path: Path) -> None:
    form = tmp_path / "form.yaml"
    form.write_text("id: x\nversion: '1'\nquestions:\n  - {key: a, type: yesno}\n", "utf-8")
    result = homevisit({**env, "HOMEVISIT_FORM": str(form)}, tmp_path, "demo")
    assert result.returncode == 2
    assert f"{form}:4: missing `prompt`" in result.stderr


def test_dotenv_in_the_working_directory_is_read(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("QUIET_HOURS=nonsense\n", encoding="utf-8")
    result = homevisit(env, tmp_path, "db", "upgrade")
    assert result.returncode == 2 and "QUIET_HOURS" in result.stderr


def _read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float = 30) -> str:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, "chat ended early"
            seen += chunk
    return seen.decode()


def test_killed_in_the_middle_of_a_visit_resumes_after_restart(
    env: dict[str, str], tmp_path: Path
) -> None:
    homevisit(env, tmp_path, "demo")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "chat", "--user", "T001"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write("家访\n周小禾\n3\n1\n2\n".encode())
        proc.stdin.flush()
        _read_until(proc, "缺少什么")  # the 4th question: three answers are in
    finally:
        proc.kill()  # SIGKILL: no clean shutdown
        proc.wait(timeout=10)
        proc.stdin.close()
        assert proc.stdout is not None
        proc.stdout.close()
    [draft] = db_rows(tmp_path, visits)
    assert draft.status == "draft"  # type: ignore[attr-defined]
    assert draft.answers == {"method": "电话", "study": "好", "device_ok": "否"}  # type: ignore[attr-defined]

    resumed = homevisit(env, tmp_path, "chat", "--user", "T001", stdin="继续\n1\n")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("> 继续\n【第4题/共11题】周小禾（三年级1班）\n缺少什么？")
    [draft] = db_rows(tmp_path, visits)
    assert draft.answers["device_missing"] == "平板或电脑"  # type: ignore[attr-defined]


def test_roster_import_names_row_and_column_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    staff = tmp_path / "staff.csv"
    staff.write_text("工号,姓名,学校,角色\nT9,王老师,一小,教师\n", encoding="utf-8")
    pupils = tmp_path / "students.csv"
    pupils.write_text(
        "学籍号,姓名,学校,班级,资助类别,班主任工号\n"
        "S1,甲,一小,一年级1班,低保,T9\nS1,乙,一小,一年级1班,孤儿,T9\nS3,丙,一小,一年级2班,,T8\n",
        encoding="gb18030",
    )
    bad = homevisit(env, tmp_path, "roster", "import", str(pupils), str(staff))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "students.csv 第3行 学籍号" in bad.stderr
    assert db_rows(tmp_path, students) == []
    pupils.write_text(
        "学籍号,姓名,学校,班级,资助类别,班主任工号\nS1,甲,一小,一年级1班,低保,T9\n"
        "S3,丙,一小,一年级2班,,T8\n",
        encoding="gb18030",
    )
    unknown = homevisit(env, tmp_path, "roster", "import", str(pupils), str(staff))
    assert unknown.returncode == 1
    assert "students.csv 第3行 班主任工号" in unknown.stderr and "T8" in unknown.stderr
    assert db_rows(tmp_path, students) == []

    pupils.write_text(
        "学籍号,姓名,学校,班级,资助类别,班主任工号\nS1,甲,一小,一年级1班,低保、孤儿,T9\n",
        encoding="gb18030",
    )
    dry = homevisit(env, tmp_path, "roster", "import", str(pupils), str(staff), "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout and "学生新增 1 人" in dry.stdout
    assert db_rows(tmp_path, students) == []
    real = homevisit(env, tmp_path, "roster", "import", str(pupils), str(staff))
    assert real.returncode == 0 and len(db_rows(tmp_path, students)) == 1


def test_a_reader_that_goes_away_gets_no_traceback(env: dict[str, str], tmp_path: Path) -> None:
    homevisit(env, tmp_path, "demo")
    with subprocess.Popen(
        [sys.executable, "-m", "bot", "chat", "--user", "T001"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write("家访\n".encode())
        proc.stdin.flush()
        assert proc.stdout.readline().decode().startswith("> 家访")  # (what `| head -1` reads)
        proc.stdout.close()  # the reader goes away
        proc.stdin.write(b"1\n3\n")
        proc.stdin.close()
        assert proc.wait(30) == 1
        assert "Traceback" not in proc.stderr.read().decode()


def test_a_note_xml_cannot_carry_still_exports_a_readable_workbook(
    env: dict[str, str], tmp_path: Path
) -> None:
    homevisit(env, tmp_path, "demo")
    note = "备注\uffff结束"
    answers = ["3", "1", "2", "1", "2", "1", "1", "1", "1", "1", note]
    script = "\n".join(["家访", "周小禾", *answers, "提交"]) + "\n"
    assert homevisit(env, tmp_path, "chat", "--user", "T001", stdin=script).returncode == 0
    out = tmp_path / "x.xlsx"

    exported = homevisit(
        env,
        tmp_path,
        "export",
        "--out",
        str(out),
        "--include-sensitive",
        "--user",
        "C001",
        "--reason",
        "case review",
    )  # fmt: skip (a free-text note is sensitive: only exported on request)

    assert exported.returncode == 0, exported.stderr
    book = openpyxl.load_workbook(out)
    cells = [c.value for c in book["家访记录"][2]]
    book.close()
    # (the chat boundary already drops U+FFFF: tests/test_export.py checks the export's own guard)
    assert "备注结束" in cells


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root ignores the mode: sysfs refuses new files even to root
        return Path("/sys")
    return folder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing folder", "folder {tmp}/missing does not exist"),
        ("a folder as the file", "{tmp}/out.xlsx is a folder"),
        ("a file as the folder", "{tmp}/notes.txt is not a folder"),
        ("no permission", "Permission denied"),
    ],
)
def test_export_failures_are_one_line_and_leave_nothing(
    env: dict[str, str], tmp_path: Path, case: str, expected: str
) -> None:
    homevisit(env, tmp_path, "demo")
    (tmp_path / "out.xlsx").mkdir()
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    out = {
        "missing folder": tmp_path / "missing" / "v.xlsx",
        "a folder as the file": tmp_path / "out.xlsx",
        "a file as the folder": tmp_path / "notes.txt" / "v.csv",
        "no permission": _unwritable_folder(tmp_path) / "v.csv",
    }[case]
    before = sorted(tmp_path.rglob("*"))

    result = homevisit(env, tmp_path, "export", "--out", str(out))

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("homevisit: ") and expected.format(tmp=tmp_path) in line
    assert sorted(tmp_path.rglob("*")) == before  # no file, no temporary file
    audits = [r for r in db_rows(tmp_path, audit_log) if r.action == "export"]  # type: ignore[attr-defined]
    assert audits == []


def test_export_since_the_first_day_of_the_calendar_exports_everything(
    env: dict[str, str], tmp_path: Path
) -> None:
    homevisit(env, tmp_path, "demo")
    script = (
        "\n".join(
            ["家访", "周小禾", "3", "1", "2", "1", "2", "1", "1", "1", "1", "1", "无", "提交"]
        )
        + "\n"
    )
    assert homevisit(env, tmp_path, "chat", "--user", "T001", stdin=script).returncode == 0
    out = tmp_path / "all.csv"

    result = homevisit(env, tmp_path, "export", "--out", str(out), "--since", "0001-01-01")

    assert result.returncode == 0, result.stderr
    assert "exported 1 visits and 1 follow-ups" in result.stdout and out.is_file()
