"""Aid that reaches the family: screening lists and aid stock, as plain values and one async port.

`AidStore` is what the console's aid pages read and write (implemented over the database by
`storage.aid.SqlAid`). Like `ConsoleStore`, every call takes the signed-in user and keeps to
their scope: a coordinator their school, the bureau every school and the bureau's pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot.core.console_ports import Principal, Problem, UploadedFile
from bot.core.errors import HomevisitError

POOL = 0  # the school id that stands for the bureau's own stock (the district pool)


class StockError(HomevisitError):
    """A stock change that cannot be made (its message is shown to the coordinator)."""


# ------------------------------------------------------------------------------ screening
@dataclass(frozen=True, slots=True)
class ScreenChange:
    """A roster student a screening list matched, and the categories it would add."""

    student_id: int
    student_no: str
    name: str
    school: str
    class_name: str
    current: tuple[str, ...]
    added: tuple[str, ...]
    rows: tuple[str, ...]  # where in the file ("minzheng.csv 第3行")


@dataclass(frozen=True, slots=True)
class ScreenMiss:
    """A row that matched no student, or more than one (never guessed)."""

    where: str
    school: str
    class_name: str
    candidates: int  # 0: unmatched; 2 or more: ambiguous


@dataclass(frozen=True, slots=True)
class ScreenReport:
    source: str
    applied: bool
    rows: int
    changes: list[ScreenChange] = field(default_factory=list)
    unchanged: int = 0  # matched students who already have every category the list gives
    ambiguous: list[ScreenMiss] = field(default_factory=list)
    unmatched: list[ScreenMiss] = field(default_factory=list)

    @property
    def categories_added(self) -> int:
        return sum(len(c.added) for c in self.changes)

    def summary(self) -> str:
        done = "已写入" if self.applied else "预览，未写入"
        return (
            f"筛查（{self.source}，{done}）：共 {self.rows} 行；{len(self.changes)} 名学生将新增"
            f" {self.categories_added} 个资助类别，{self.unchanged} 名已有；"
            f"无法区分 {len(self.ambiguous)} 行，未匹配 {len(self.unmatched)} 行 / "
            f"screening ({self.source}, {'applied' if self.applied else 'preview'}): "
            f"{self.rows} rows; {len(self.changes)} students gain {self.categories_added} "
            f"categories, {self.unchanged} unchanged; {len(self.ambiguous)} ambiguous, "
            f"{len(self.unmatched)} unmatched"
        )


@dataclass(frozen=True, slots=True)
class ScreenOutcome:
    """A preview (nothing written, `upload_id` to apply it) or an applied list; or problems."""

    report: ScreenReport | None
    problems: list[Problem] = field(default_factory=list)
    upload_id: str = ""


# ------------------------------------------------------------------------------ stock
@dataclass(frozen=True, slots=True)
class AidItem:
    """An aid item kind (from configuration) and the follow-up kinds a unit of it meets."""

    name: str
    meets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StockLine:
    school_id: int  # POOL for the bureau's pool
    holder: str  # school name, or 教育局统筹
    item: str
    quantity: int


@dataclass(frozen=True, slots=True)
class LedgerLine:
    at: datetime
    holder: str
    item: str
    change: int
    balance: int
    reason: str  # arrival | correction
    note: str
    actor: str


@dataclass(frozen=True, slots=True)
class NeedSupply:
    """Per item, in scope: the needs it meets (open, or met by an allocation of it) against
    what was allocated, delivered, found in use, and the stock still on hand."""

    item: str
    needs: int
    stock: int
    linked: bool = True  # False: the item meets no follow-up kind (given out by distribution)
    allocated: int = 0
    delivered: int = 0
    in_use: int = 0

    @property
    def shortfall(self) -> int:
        """Needs neither allocated nor coverable by the stock on hand."""
        return max(0, self.needs - self.allocated - self.stock)

    def line(self) -> str:
        """平板电脑：需求 23 · 已发放 17 · 已送达 15 · 在用 14 · 缺口 6"""
        text = (
            f"{self.item}：需求 {self.needs} · 已发放 {self.allocated} · 已送达 {self.delivered}"
            f" · 在用 {self.in_use}"
        )
        if self.stock:
            text += f" · 库存 {self.stock}"
        return text + f" · 缺口 {self.shortfall}"


def totals(lines: Iterable[NeedSupply]) -> list[NeedSupply]:
    """Per item, the sum of many holders' figures (the district's), in first-seen order."""
    summed: dict[str, NeedSupply] = {}
    for x in lines:
        s = summed.get(x.item)
        summed[x.item] = (
            x
            if s is None
            else NeedSupply(
                x.item,
                s.needs + x.needs,
                s.stock + x.stock,
                s.linked,
                s.allocated + x.allocated,
                s.delivered + x.delivered,
                s.in_use + x.in_use,
            )
        )
    return list(summed.values())


# Categories that put a need first in the allocation list (the more of them, the earlier).
AID_CATEGORIES = ("建档立卡", "特困", "孤儿", "低保", "大病", "残疾")
# How an allocation goes out.
METHODS = {"courier": "快递", "carrier": "运营商上门安装", "handed": "当面交付"}
UNCHECKED = ("allocated", "delivered")  # the next visit asks about these
SETTLED = ("in_use", "not_received", "unusable")  # what it can find
STANDING = ("allocated", "delivered", "in_use")  # an allocation that covers its need
STATUS_LABELS = {
    "allocated": "已发放，未送达",
    "delivered": "已送达",
    "in_use": "在用",
    "not_received": "没收到",
    "unusable": "用不了",
}


@dataclass(frozen=True, slots=True)
class OpenNeed:
    """An open follow-up an item can meet, with what makes it urgent."""

    followup_id: int
    school_id: int
    school: str
    student_name: str
    class_name: str
    kind: str
    detail: str
    aid_categories: tuple[str, ...]
    days_open: int
    owner_name: str
    owner_no: str = ""


@dataclass(frozen=True, slots=True)
class Taken:
    """What `发放 N` did: the new allocation (0: none) and the stock left (as it is, when none
    was left); `taken`: a colleague allocated to this need at the same moment."""

    allocation_id: int
    left: int
    taken: bool = False


@dataclass(frozen=True, slots=True)
class Allocation:
    id: int
    item: str
    school: str
    student_name: str
    class_name: str
    method: str
    tracking: str
    status: str
    allocated_at: datetime
    allocated_by: str
    delivered_at: datetime | None
    owner_name: str


@dataclass(frozen=True, slots=True)
class StockView:
    lines: list[StockLine]
    ledger: list[LedgerLine]
    supply: list[NeedSupply]
    holders: list[tuple[int, str]]  # where this user may record: (school id or POOL, label)
    # The bureau's view school by school (items that meet a need; schools with a need or stock).
    by_school: list[tuple[str, NeedSupply]] = field(default_factory=list)


class AidStore(Protocol):
    """The aid pages' reads and writes. Each call is one transaction."""

    async def screen(
        self,
        principal: Principal,
        files: Sequence[UploadedFile] | None,
        source: str,
        upload_id: str,
        apply: bool,
        now: datetime,
    ) -> ScreenOutcome:
        """Match a screening list (new `files`, or this user's stashed preview `upload_id`)
        against the roster; write the new categories only when `apply`, all or nothing. A
        coordinator's rows must all be of their school."""
        ...

    async def stock(self, principal: Principal) -> StockView: ...

    async def change_stock(
        self,
        principal: Principal,
        school_id: int,
        item: str,
        change: int,
        reason: str,
        note: str,
        now: datetime,
    ) -> int:
        """Add `change` (negative for a correction down) to a holder's count, ledgered and
        audited; return the new count. Raises `StockError` for an unknown item, a holder out
        of scope, or a count that would go below zero (then nothing changes)."""
        ...

    async def open_needs(self, principal: Principal, item: str, now: datetime) -> list[OpenNeed]:
        """Open needs in scope that `item` meets and that no standing allocation covers, most
        urgent first: more aid categories, then open longest. Raises `StockError` for an
        unknown item."""
        ...

    async def allocate(
        self,
        principal: Principal,
        school_id: int,
        item: str,
        followup_ids: Sequence[int],
        method: str,
        tracking: str,
        now: datetime,
    ) -> list[int]:
        """Give one `item` from holder `school_id`'s stock to each need, all or nothing: the
        stock goes down by one conditional UPDATE, each allocation is ledgered and audited and
        its teacher told (an outbox row in the same transaction). Returns the allocation ids.
        Raises `StockError` (nothing changes) for an unknown item or method, a need out of
        scope, closed, of another school, already allocated, or more needs than stock."""
        ...

    async def allocations(self, principal: Principal, limit: int = 200) -> list[Allocation]:
        """The latest allocations in scope, undelivered first."""
        ...

    async def deliver(self, principal: Principal, allocation_id: int, now: datetime) -> Allocation:
        """Record that an allocation arrived. Raises `StockError` when it is out of scope or
        was recorded already."""
        ...
