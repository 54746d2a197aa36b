"""Batch distributions ("每人两箱牛奶") as plain values and one async port.

A coordinator gives the same thing to every student of chosen aid categories (or a chosen list);
the recipients are fixed when it is created, each is marked delivered once, and the printed
ledger (发放台账) is signed by each family. Every call takes the signed-in user and keeps to their
scope: a coordinator their school, the bureau any school or all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.core.console_ports import Principal
from bot.core.errors import HomevisitError


class DistributionError(HomevisitError):
    """A distribution that cannot be created or marked (its message is shown as it is)."""


@dataclass(frozen=True, slots=True)
class Recipient:
    student_id: int
    student_no: str
    name: str
    school: str
    class_name: str
    categories: tuple[str, ...]
    delivered_at: datetime | None
    delivered_by: str | None


@dataclass(frozen=True, slots=True)
class DistributionSummary:
    id: int
    title: str
    school: str  # the school's name, or 全区 for the bureau's across every school
    categories: tuple[str, ...]  # () for a chosen list
    created_by: str
    created_at: datetime
    total: int
    delivered: int

    @property
    def percent(self) -> int:
        return round(100 * self.delivered / self.total) if self.total else 0


@dataclass(frozen=True, slots=True)
class DistributionView:
    summary: DistributionSummary
    recipients: list[Recipient]


@dataclass(frozen=True, slots=True)
class DistributionForm:
    """What the create form offers this user: categories in scope, schools (bureau only)."""

    categories: list[tuple[str, int]]  # (category, active students in scope)
    schools: list[tuple[int, str]]


class DistributionStore(Protocol):
    """The distribution pages' reads and writes. Each call is one transaction."""

    async def form(self, principal: Principal) -> DistributionForm: ...

    async def distributions(self, principal: Principal) -> list[DistributionSummary]: ...

    async def create(
        self,
        principal: Principal,
        title: str,
        categories: Sequence[str],
        student_nos: Sequence[str],
        school_id: int | None,
        now: datetime,
    ) -> int:
        """Create a distribution to the active students in scope of any of `categories`, or
        to the listed 学籍号; audited; its id. Raises `DistributionError` (nothing created) for a
        missing title, no recipient, or a 学籍号 not found in scope."""
        ...

    async def view(self, principal: Principal, distribution_id: int) -> DistributionView | None:
        """The distribution with its recipients; None when absent or out of scope."""
        ...

    async def deliver(
        self,
        principal: Principal,
        distribution_id: int,
        student_ids: Sequence[int],
        now: datetime,
    ) -> int:
        """Mark these recipients delivered (those already marked keep their first mark);
        how many were newly marked. Raises `DistributionError` when out of scope."""
        ...

    async def ledger(
        self, principal: Principal, distribution_id: int, now: datetime
    ) -> tuple[str, bytes] | None:
        """The printable 发放台账 as (file name, .xlsx bytes), audited; None when absent or out
        of scope."""
        ...
