"""Aid item kinds (config/aid.yaml): names and the follow-up kinds each meets."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import yaml

from bot.core.aid import AidItem
from bot.core.errors import ConfigError

DEFAULT_AID = Path(__file__).parent / "aid.yaml"
MAX_NAME = 50
MAX_ITEMS = 99  # a chat list numbers needs by follow-up and item place (handlers.states.AID_SLOT)


def load_aid_items(path: str | Path, kinds: Collection[str]) -> tuple[AidItem, ...]:
    """Read the item kinds; ConfigError naming the file and the entry when one is wrong, or
    links a follow-up kind the form (`kinds`) does not have."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the aid items ({type(exc).__name__})") from exc
    entries = raw.get("items") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected `items:`, a list of {{name, meets}}")
    if len(entries) > MAX_ITEMS:
        raise ConfigError(f"{path}: at most {MAX_ITEMS} item kinds")
    items: list[AidItem] = []
    for n, entry in enumerate(entries, start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        meets = entry.get("meets", []) if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise ConfigError(f"{path}: item {n}: `name` must be 1 to {MAX_NAME} characters")
        if not isinstance(meets, list) or any(str(k) not in kinds for k in meets):
            raise ConfigError(
                f"{path}: item {n} ({name}): `meets` must list follow-up kinds of the form"
            )
        if any(i.name == name.strip() for i in items):
            raise ConfigError(f"{path}: item {n} ({name}): named twice")
        items.append(AidItem(name.strip(), tuple(str(k) for k in meets)))
    return tuple(items)
