"""The layering: which package may import which, checked on the import graph.

The contracts are import-linter's, in pyproject.toml ([tool.importlinter]): core imports no
other project package; handlers import core and config; channels import core, config and the web
helpers (never storage, SQLAlchemy or the composition root); storage and config import core.
They follow indirect imports too. The last tests break a copy of the code on purpose, to show the
contracts do fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from importlinter import api

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "handlers", "storage", "config")
PYPROJECT = ROOT / "pyproject.toml"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the code under `root` (in a child process, so that the packages are
    found there and not as this process already imported them)."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def contract_lines(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary."""
    found = {}
    for line in output.splitlines():
        name, _, verdict = line.strip().rpartition(" ")
        if verdict in ("KEPT", "BROKEN") and name:
            found[name] = verdict
    return found


def test_the_contracts_name_every_layer() -> None:
    contracts = {c["id"]: c for c in api.read_configuration(str(PYPROJECT))["contracts_options"]}
    assert {"core", "handlers", "channels", "storage", "config", "bot-layers"} <= set(contracts)
    assert contracts["core"]["source_modules"] == ["bot.core"]
    for forbidden in ("storage", "handlers", "sqlalchemy", "bot.deps", "bot.app"):
        assert forbidden in contracts["channels"]["forbidden_modules"]
    assert {"config", "handlers", "bot.channels"} <= set(contracts["storage"]["forbidden_modules"])
    assert {"storage", "bot.channels"} <= set(contracts["handlers"]["forbidden_modules"])


def test_the_layering_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = contract_lines(result.stdout)
    assert len(verdicts) >= 6 and set(verdicts.values()) == {"KEPT"}, result.stdout


def test_no_channel_module_imports_sqlalchemy_or_storage() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    channels = sorted(graph.find_descendants("bot.channels"))
    assert "bot.channels.wecom" in channels and "bot.channels.dingtalk" in channels
    for module in channels:
        for other in ("sqlalchemy", "storage"):
            chain = graph.find_shortest_chain(importer=module, imported=other)
            assert chain is None, f"{module} imports {other}: {' -> '.join(chain or ())}"


@pytest.fixture
def code_copy(tmp_path: Path) -> Path:
    """A copy of the packages and of pyproject.toml, to break."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "arrow"),
    [
        # a channel running SQL itself
        ("channels/wecom.py", "from sqlalchemy import select", "bot.channels.wecom -> sqlalchemy"),
        ("channels/dingtalk.py", "from storage import outbox", "bot.channels.dingtalk -> storage"),
        # indirectly: a web helper every channel imports that reaches for the database
        ("web.py", "from storage.db import Database", "bot.web -> storage.db"),
    ],
)
def test_a_channel_reaching_storage_breaks_the_channels_contract(
    code_copy: Path, module: str, line: str, arrow: str
) -> None:
    path = code_copy / "bot" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    result = lint_imports(code_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = contract_lines(result.stdout)
    broken = [name for name, verdict in verdicts.items() if verdict == "BROKEN"]
    assert broken == ["bot.channels import only bot.core, config and the web helpers"], verdicts
    assert arrow in result.stdout


def test_storage_importing_handlers_breaks_the_storage_contract(code_copy: Path) -> None:
    path = code_copy / "storage" / "export.py"
    path.write_text(
        path.read_text(encoding="utf-8") + "\nfrom handlers import texts  # noqa\n",
        encoding="utf-8",
    )
    result = lint_imports(code_copy)
    assert result.returncode == 1
    verdicts = contract_lines(result.stdout)
    assert verdicts["storage imports only bot.core"] == "BROKEN", verdicts
    assert "storage.export -> handlers.texts" in result.stdout
