"""The words a teacher can send at any time, Chinese first with English aliases."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Cmd(StrEnum):
    START = "start"
    LIST = "list"
    HELP = "help"
    CANCEL = "cancel"
    BACK = "back"
    SKIP = "skip"
    EDIT = "edit"
    LATER = "later"
    RESUME = "resume"
    TODO = "todo"
    DONE = "done"
    PROGRESS = "progress"
    CONSOLE = "console"  # coordinators and bureau: a sign-in link to the web console
    SUBMIT = "submit"  # only meaningful on the summary
    DISCARD = "discard"  # only meaningful on the summary


WORDS: dict[Cmd, tuple[str, ...]] = {
    Cmd.START: ("家访", "开始", "visit", "start"),
    Cmd.LIST: ("名单", "list", "students"),
    Cmd.HELP: ("帮助", "help", "?", "？", "菜单", "menu"),
    Cmd.CANCEL: ("取消", "cancel"),
    Cmd.BACK: ("上一题", "返回", "back"),
    Cmd.SKIP: ("跳过", "skip"),
    Cmd.LATER: ("稍后", "later", "pause"),
    Cmd.RESUME: ("继续", "resume", "continue"),
    Cmd.TODO: ("待跟进", "跟进", "todo", "followups"),
    Cmd.PROGRESS: ("进度", "progress"),
    Cmd.CONSOLE: ("后台", "console"),
    Cmd.SUBMIT: ("提交", "确认", "submit", "confirm"),
    Cmd.DISCARD: ("放弃", "discard"),
}
_BY_WORD = {w: cmd for cmd, words in WORDS.items() for w in words}
_EDIT = re.compile(r"^(?:修改|改|edit|change)\s*(\d+)$", re.IGNORECASE)
_DONE = re.compile(r"^(?:完成|done)\s*(\d+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Command:
    cmd: Cmd
    number: int | None = None
    note: str = ""


def parse_command(text: str) -> Command | None:
    """`text` is already normalised (see handlers.answers.normalize)."""
    cmd = _BY_WORD.get(text.lower())
    if cmd is not None:
        return Command(cmd)
    if m := _EDIT.match(text):
        return Command(Cmd.EDIT, int(m.group(1)))
    if m := _DONE.match(text):
        return Command(Cmd.DONE, int(m.group(1)), (m.group(2) or "").strip())
    return None


def done_note(raw: str) -> str:
    """The note of `完成 N 备注` exactly as typed (normalising would change its punctuation)."""
    m = _DONE.match(raw.strip())
    return (m.group(2) or "").strip() if m else ""
