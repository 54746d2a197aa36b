"""`homevisit console link` as a real process: the URL alone on the last line, and it works once."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import env, homevisit  # noqa: F401 (the fixture)


def test_console_link_prints_the_url_last(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    assert homevisit(env, tmp_path, "demo").returncode == 0
    env = {**env, "HOMEVISIT_PUBLIC_URL": "https://hv.example.edu/"}
    done = homevisit(env, tmp_path, "console", "link", "--user", "C001")
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("https://hv.example.edu/console/login?token=")
    assert len(last.split("token=")[1]) >= 43 and " " not in last


def test_console_link_refuses_teachers_and_strangers(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    homevisit(env, tmp_path, "demo")
    teacher = homevisit(env, tmp_path, "console", "link", "--user", "T001")
    assert teacher.returncode == 1 and "协调员" in teacher.stderr and "token" not in teacher.stdout
    stranger = homevisit(env, tmp_path, "console", "link", "--user", "NOBODY")
    assert stranger.returncode == 1 and "NOBODY" in stranger.stderr
    bad = homevisit(
        {**env, "HOMEVISIT_PUBLIC_URL": "ftp://x"}, tmp_path, "console", "link", "--user", "C001"
    )
    assert bad.returncode == 2 and "HOMEVISIT_PUBLIC_URL" in bad.stderr
