"""Aid item kinds from configuration: the defaults, HOMEVISIT_AID_ITEMS, and a broken file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.aid import AidItem
from bot.core.errors import ConfigError
from config.aid import DEFAULT_AID, load_aid_items
from config.forms import load_form
from config.settings import load_settings

KINDS = load_form(load_settings({}, env_file=None).form_path).followup_kinds


def test_the_defaults_link_the_forms_follow_up_kinds() -> None:
    assert load_aid_items(DEFAULT_AID, KINDS) == (
        AidItem("平板电脑", ("device",)),
        AidItem("4G流量卡", ("data_plan",)),
        AidItem("流量包", ("data_plan",)),
        AidItem("生活物资", ("living_aid",)),
        AidItem("牛奶", ()),
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("items: []\n", "expected `items:`"),
        ("items:\n  - {name: 平板电脑, meets: [tablets]}\n", "item 1 (平板电脑): `meets`"),
        ("items:\n  - {name: '', meets: []}\n", "item 1: `name`"),
        ("items:\n  - {name: 牛奶}\n  - {name: 牛奶}\n", "item 2 (牛奶): named twice"),
        ("items: [\n", "cannot read the aid items (ParserError)"),
        ("items:\n" + "".join(f"  - {{name: x{i}}}\n" for i in range(100)), "at most 99"),
    ],
)
def test_a_broken_file_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "aid.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_aid_items(path, KINDS)
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)


def test_the_setting_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aid.yaml"
    path.write_text("items:\n  - {name: 口罩}\n", encoding="utf-8")
    assert load_settings({"HOMEVISIT_AID_ITEMS": str(path)}, env_file=None).aid_path == path
    with pytest.raises(ConfigError) as caught:
        load_settings({"HOMEVISIT_AID_ITEMS": str(tmp_path / "none.yaml")}, env_file=None)
    assert "HOMEVISIT_AID_ITEMS" in str(caught.value)
