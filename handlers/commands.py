"""The words a teacher can send at any time, Chinese first with English aliases.

Phones add punctuation: a trailing or leading full stop, comma or 顿号 is ignored around commands
and numbers (`1。`, `1.`, `1、`, `家访。`), and `完成1平板已送到` needs no space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from handlers.answers import strip_edges


class Cmd(StrEnum):
    START = "start"
    LIST = "list"
    MORE = "more"
    HELP = "help"
    CANCEL = "cancel"  # leave what is going on; a draft is kept
    DISCARD = "discard"  # delete the draft (asks first)
    CONFIRM_DISCARD = "confirm_discard"
    BACK = "back"
    SKIP = "skip"
    EDIT = "edit"
    LATER = "later"
    RESUME = "resume"
    TODO = "todo"
    DONE = "done"
    UNDO = "undo"
    PROGRESS = "progress"
    CONSOLE = "console"  # coordinators and bureau: a sign-in link to the web console
    SUBMIT = "submit"  # only meaningful on the summary
    # coordinators and bureau (#14); a teacher is told they are not theirs
    OVERVIEW = "overview"
    UNVISITED = "unvisited"
    OVERDUE = "overdue"
    ESCALATED = "escalated"
    ACK = "ack"  # 确认 N [备注]
    REASSIGN = "reassign"  # 转交 N 工号
    NUDGE = "nudge"  # 催办 工号
    # aid (#15): 库存, 发放 N [快递 单号|上门|当面], 入库 物品 数量 (coordinators, bureau); 送达 N
    STOCK = "stock"
    ALLOCATE = "allocate"
    ARRIVAL = "arrival"
    DELIVERED = "delivered"
    # aid reviews (#15): teachers report, coordinators and bureau decide
    REPORT = "report"  # 新增学生 姓名 班级 说明
    REVIEWS = "reviews"  # 待认定
    APPROVE = "approve"  # 认定 N 类别
    DECLINE = "decline"  # 不认定 N 原因


COORDINATOR_CMDS = frozenset(
    {
        Cmd.OVERVIEW,
        Cmd.OVERDUE,
        Cmd.ESCALATED,
        Cmd.ACK,
        Cmd.REASSIGN,
        Cmd.NUDGE,
        Cmd.STOCK,
        Cmd.ALLOCATE,
        Cmd.ARRIVAL,
    }
)


WORDS: dict[Cmd, tuple[str, ...]] = {
    Cmd.START: ("家访", "开始", "visit", "start"),
    Cmd.LIST: ("名单", "list", "students"),
    Cmd.MORE: ("更多", "下一页", "more", "next"),
    Cmd.HELP: ("帮助", "help", "?", "？", "菜单", "menu"),
    Cmd.CANCEL: ("取消", "退出", "cancel"),
    Cmd.DISCARD: ("放弃", "删除草稿", "discard"),
    Cmd.CONFIRM_DISCARD: ("确定删除", "确认删除"),
    Cmd.BACK: ("上一题", "返回", "back"),
    Cmd.SKIP: ("跳过", "skip"),
    Cmd.LATER: ("稍后", "later", "pause"),
    Cmd.RESUME: ("继续", "resume", "continue"),
    Cmd.TODO: ("待跟进", "跟进", "todo", "followups"),
    Cmd.UNDO: ("撤销", "撤回", "undo"),
    Cmd.PROGRESS: ("进度", "progress"),
    Cmd.CONSOLE: ("后台", "console"),
    Cmd.SUBMIT: ("提交", "submit"),
    Cmd.OVERVIEW: ("概况", "overview"),
    Cmd.UNVISITED: ("未访", "unvisited"),
    Cmd.OVERDUE: ("逾期", "overdue"),
    Cmd.ESCALATED: ("上报", "escalated"),
    Cmd.REASSIGN: ("转交", "reassign"),
    Cmd.NUDGE: ("催办", "nudge"),
    Cmd.STOCK: ("库存", "stock"),
    Cmd.ALLOCATE: ("发放",),
    Cmd.ARRIVAL: ("入库",),
    Cmd.DELIVERED: ("送达",),
    Cmd.REPORT: ("新增学生",),
    Cmd.REVIEWS: ("待认定", "reviews"),
    Cmd.APPROVE: ("认定",),
    Cmd.DECLINE: ("不认定",),
}
YES = frozenset({"是", "是的", "对", "对的", "确定", "确认", "好", "好的", "嗯", "y", "yes", "ok"})
NO = frozenset({"不是", "不对", "不", "否", "错了", "n", "no"})
_BY_WORD = {w: cmd for cmd, words in WORDS.items() for w in words}
# Words with an argument: `家访 二年级1班` filters the list, `修改 2`, `完成 1 备注`.
_START = re.compile(r"^(?:家访|visit)\s+(.+)$", re.IGNORECASE)
_EDIT = re.compile(r"^(?:修改|改|edit|change)\s*([0-9]+)$", re.IGNORECASE)
_DONE = re.compile(
    r"^(?:完成|done)\s*([0-9]+)\s*[。.、，,:：;；]?\s*(.*)$", re.IGNORECASE | re.DOTALL
)


# `确认 3 已联系家长`, `转交 3 T002`, `催办 T002` (a bare 确认 stays a yes)
_ACK = re.compile(
    r"^(?:确认|ack)\s*([0-9]+)\s*[。.、，,:：;；]?\s*(.*)$", re.IGNORECASE | re.DOTALL
)
_REASSIGN = re.compile(r"^(?:转交|reassign)\s*([0-9]+)\s*(\S*)\s*$", re.IGNORECASE)
_NUDGE = re.compile(r"^(?:催办|nudge)\s+(\S+)$", re.IGNORECASE)
_ALLOCATE = re.compile(r"^发放\s*([0-9]+)\s*(.*)$", re.DOTALL)
_ARRIVAL = re.compile(r"^入库\s*(\S+?)\s*([0-9]+)$")
_DELIVERED = re.compile(r"^送达\s*([0-9]+)$")
# `新增学生 李小花 三年级2班 父母都没返岗`, `认定 1 低保`, `不认定 1 已在低保名单`
_REPORT = re.compile(r"^新增学生\s*(.*)$", re.DOTALL)
_APPROVE = re.compile(r"^认定\s*([0-9]+)\s*[。.、，,:：;；]?\s*(.*)$", re.DOTALL)
_DECLINE = re.compile(r"^不认定\s*([0-9]+)\s*[。.、，,:：;；]?\s*(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Command:
    cmd: Cmd
    number: int | None = None
    argument: str = ""


def parse_command(text: str) -> Command | None:
    """`text` is already normalised (see handlers.answers.normalize)."""
    word = strip_edges(text)
    cmd = _BY_WORD.get(word.lower())
    if cmd is not None:
        return Command(cmd)
    if m := _START.match(word):
        return Command(Cmd.START, argument=m.group(1).strip())
    if m := _EDIT.match(word):
        return Command(Cmd.EDIT, int(m.group(1)))
    if m := _DONE.match(text.strip()):
        return Command(Cmd.DONE, int(m.group(1)))
    if m := _ACK.match(text.strip()):
        return Command(Cmd.ACK, int(m.group(1)))
    if m := _REASSIGN.match(word):
        return Command(Cmd.REASSIGN, int(m.group(1)), m.group(2).upper())
    if m := _NUDGE.match(word):
        return Command(Cmd.NUDGE, argument=m.group(1).upper())
    if m := _ALLOCATE.match(word):
        return Command(Cmd.ALLOCATE, int(m.group(1)), m.group(2).strip())
    if m := _ARRIVAL.match(word):
        return Command(Cmd.ARRIVAL, int(m.group(2)), m.group(1))
    if m := _DELIVERED.match(word):
        return Command(Cmd.DELIVERED, int(m.group(1)))
    if m := _REPORT.match(text.strip()):
        return Command(Cmd.REPORT, argument=m.group(1).strip())
    if m := _DECLINE.match(text.strip()):
        return Command(Cmd.DECLINE, int(m.group(1)))
    if m := _APPROVE.match(text.strip()):
        return Command(Cmd.APPROVE, int(m.group(1)), strip_edges(m.group(2)))
    return None


def review_text(raw: str) -> str:
    """What follows `新增学生` or `不认定 N`, as typed (normalising would change it)."""
    text = raw.strip()
    if m := _REPORT.match(text):
        return m.group(1).strip()
    m = _DECLINE.match(text)
    return (m.group(2) or "").strip() if m else ""


def is_yes(text: str) -> bool:
    return strip_edges(text).lower() in YES


def is_no(text: str) -> bool:
    return strip_edges(text).lower() in NO


def as_number(text: str) -> int | None:
    """A bare number (`3`, `３`, `3。`), or None."""
    word = strip_edges(text)
    return int(word) if word.isascii() and word.isdecimal() and len(word) <= 6 else None


def done_note(raw: str) -> str:
    """The note of `完成 N 备注` exactly as typed (normalising would change its punctuation)."""
    m = _DONE.match(raw.strip())
    return (m.group(2) or "").strip() if m else ""


def ack_note(raw: str) -> str:
    """The note of `确认 N 备注`, as typed."""
    m = _ACK.match(raw.strip())
    return (m.group(2) or "").strip() if m else ""
