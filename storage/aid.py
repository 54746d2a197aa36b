"""`SqlAid`: the aid pages' port (`bot.core.aid.AidStore`) over the database.

Stock counts live in `aid_stock`, one row per holder (a school, or `POOL` for the bureau) and
item, with a CHECK that the count is never negative; every change is one conditional UPDATE
(`quantity + change >= 0`), so of two coordinators taking the last tablet at once one gets it and
the other is told there is none left. Each change is a row of `aid_ledger` (who, when, the count
after) and an audit entry.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from bot.core.aid import (
    POOL,
    AidItem,
    LedgerLine,
    NeedSupply,
    ScreenOutcome,
    StockError,
    StockLine,
    StockView,
)
from bot.core.console_ports import Principal, Problem, UploadedFile
from bot.core.errors import RosterError
from bot.core.signin import new_secret, secret_hash
from storage import audit
from storage.console import OPEN, UPLOAD_TTL, split_problem
from storage.db import Database
from storage.roster_files import ListRow, read_list
from storage.schema import (
    UtcDateTime,
    aid_ledger,
    aid_stock,
    console_uploads,
    followups,
    schools,
    students,
)
from storage.screening import check_source, rows_from_json, rows_to_json, screen_rows

POOL_LABEL = "教育局统筹"
LEDGER_SHOWN = 100
MAX_CHANGE = 100_000
MAX_NOTE = 200
REASONS = ("arrival", "correction")
_STASH_GONE = "上传已过期或不存在，请重新选择文件上传 / the upload expired, please upload again"
_UNKNOWN_ITEM = "没有这种物品：{item} / no such aid item"
_NOT_YOURS = "只能登记本校的库存 / you may record only your school's stock"
_NO_SUCH_HOLDER = "没有这个学校 / no such school"
_BAD_CHANGE = "数量应为 1 到 {n} 的整数（更正可为负数）/ a whole number from 1 to {n}"
_ARRIVAL_DOWN = "入库数量必须大于 0；减少请用“更正” / an arrival must be positive"
_BELOW_ZERO = (
    "库存不足：{item} 现有 {have}，不能减少 {n} / not enough in stock: {have} left, cannot take {n}"
)
_NOTE_TOO_LONG = "备注最多 {n} 个字 / the note is at most {n} characters"


def _read_files(files: Sequence[UploadedFile]) -> list[ListRow]:
    """The screening reader over uploaded files, written to a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix="homevisit-screen-") as tmp:
        paths = []
        for n, f in enumerate(files):
            name = Path(f.name.replace("\\", "/")).name or f"file{n + 1}"
            name = re.sub(r"[\x00-\x1f/]", "_", name)[-120:]
            path = Path(tmp) / name
            if path.exists():
                path = Path(tmp) / f"{n + 1}_{name}"
            path.write_bytes(f.data)
            paths.append(path)
        return read_list(paths)


def _problems(exc: RosterError) -> list[Problem]:
    return [split_problem(p) for p in exc.problems]


class SqlAid:
    """Implements `bot.core.aid.AidStore` over a `Database`."""

    def __init__(self, db: Database, items: Sequence[AidItem]) -> None:
        self.db = db
        self.items = tuple(items)

    # ------------------------------------------------------------------ screening
    async def screen(
        self,
        principal: Principal,
        files: Sequence[UploadedFile] | None,
        source: str,
        upload_id: str,
        apply: bool,
        now: datetime,
    ) -> ScreenOutcome:
        if files is None:
            stash = await self.db.run(
                lambda conn: self._load_stash(conn, principal, upload_id, now)
            )
            if stash is None:
                return ScreenOutcome(None, [Problem("", None, "", _STASH_GONE)])
            source, rows = stash
        else:
            try:
                source = check_source(source)
                rows = await asyncio.to_thread(_read_files, files)
            except RosterError as exc:
                return ScreenOutcome(None, _problems(exc))
        stash_id = "" if apply else new_secret()
        school = None
        if principal.scope.school_id is not None:
            school = (principal.scope.school_id, principal.school_name or "")

        def work(conn: Connection) -> ScreenOutcome:
            try:
                report = screen_rows(
                    conn,
                    rows,
                    source,
                    now=now,
                    apply=apply,
                    actor=principal.staff_no,
                    school=school,
                )
            except RosterError as exc:
                return ScreenOutcome(None, _problems(exc))
            if apply:
                conn.execute(
                    delete(console_uploads).where(
                        console_uploads.c.upload_hash == secret_hash(upload_id)
                    )
                )
                return ScreenOutcome(report)
            conn.execute(  # the rows' known columns only: an identity card is never kept
                insert(console_uploads).values(
                    upload_hash=secret_hash(stash_id),
                    session_hash=principal.session_hash,
                    created_at=now,
                    files={"screen": source, "rows": rows_to_json(rows)},
                )
            )
            return ScreenOutcome(report, [], stash_id)

        return await self.db.run(work)

    @staticmethod
    def _load_stash(
        conn: Connection, principal: Principal, upload_id: str, now: datetime
    ) -> tuple[str, list[ListRow]] | None:
        conn.execute(
            delete(console_uploads).where(
                console_uploads.c.created_at < literal(now - UPLOAD_TTL, UtcDateTime())
            )
        )
        stash = conn.execute(
            select(console_uploads.c.files).where(
                console_uploads.c.upload_hash == secret_hash(upload_id),
                console_uploads.c.session_hash == principal.session_hash,
            )
        ).scalar()
        if not isinstance(stash, dict) or "screen" not in stash:
            return None
        return str(stash["screen"]), rows_from_json(stash["rows"])

    # ------------------------------------------------------------------ stock
    def _holders(self, conn: Connection, principal: Principal) -> list[tuple[int, str]]:
        if principal.scope.school_id is not None:
            return [(principal.scope.school_id, principal.school_name or "")]
        named = conn.execute(select(schools.c.id, schools.c.name).order_by(schools.c.name)).all()
        return [(POOL, POOL_LABEL), *((r.id, r.name) for r in named)]

    async def stock(self, principal: Principal) -> StockView:
        def work(conn: Connection) -> StockView:
            holders = self._holders(conn, principal)
            labels = dict(holders)
            mine = principal.scope.school_id
            where: list[Any] = [] if mine is None else [aid_stock.c.school_id == mine]
            counts = {
                (r.school_id, r.item): r.quantity
                for r in conn.execute(select(aid_stock).where(*where))
            }
            lines = [
                StockLine(holder, labels[holder], item.name, counts.get((holder, item.name), 0))
                for holder, _ in holders
                if holder in (POOL, mine) or any(h == holder for h, _ in counts)  # schools in use
                for item in self.items
            ]
            ledger_where = [] if mine is None else [aid_ledger.c.school_id == mine]
            ledger = [
                LedgerLine(
                    r.at,
                    labels.get(r.school_id, str(r.school_id)),
                    r.item,
                    r.change,
                    r.balance,
                    r.reason,
                    r.note or "",
                    r.actor,
                )
                for r in conn.execute(
                    select(aid_ledger)
                    .where(*ledger_where)
                    .order_by(aid_ledger.c.at.desc(), aid_ledger.c.id.desc())
                    .limit(LEDGER_SHOWN)
                )
            ]
            supply = self._supply(conn, mine, counts)
            by_school = [] if mine is not None else self._by_school(conn, labels, counts)
            return StockView(lines, ledger, supply, holders, by_school)

        return await self.db.run(work)

    def _supply(
        self, conn: Connection, school_id: int | None, counts: dict[tuple[int, str], int]
    ) -> list[NeedSupply]:
        where: list[Any] = [followups.c.status.in_(OPEN), students.c.active.is_(True)]
        if school_id is not None:
            where.append(students.c.school_id == school_id)
        open_by_kind: dict[str, int] = dict(
            conn.execute(
                select(followups.c.kind, func.count())
                .join(students, students.c.id == followups.c.student_id)
                .where(*where)
                .group_by(followups.c.kind)
            ).all()
        )
        return [
            NeedSupply(
                item.name,
                sum(open_by_kind.get(k, 0) for k in item.meets),
                sum(n for (_, name), n in counts.items() if name == item.name),
                bool(item.meets),
            )
            for item in self.items
        ]

    def _by_school(
        self, conn: Connection, labels: dict[int, str], counts: dict[tuple[int, str], int]
    ) -> list[tuple[str, NeedSupply]]:
        open_by: dict[tuple[int, str], int] = {
            (school, kind): n
            for school, kind, n in conn.execute(
                select(students.c.school_id, followups.c.kind, func.count())
                .join(students, students.c.id == followups.c.student_id)
                .where(followups.c.status.in_(OPEN), students.c.active.is_(True))
                .group_by(students.c.school_id, followups.c.kind)
            )
        }
        rows = []
        for school, label in labels.items():
            if school == POOL:
                continue
            for item in self.items:
                if not item.meets:
                    continue
                needs = sum(open_by.get((school, k), 0) for k in item.meets)
                stock = counts.get((school, item.name), 0)
                if needs or stock:
                    rows.append((label, NeedSupply(item.name, needs, stock)))
        return rows

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
        if item not in {i.name for i in self.items}:
            raise StockError(_UNKNOWN_ITEM.format(item=item[:50]))
        if reason not in REASONS or change == 0 or abs(change) > MAX_CHANGE:
            raise StockError(_BAD_CHANGE.format(n=MAX_CHANGE))
        if reason == "arrival" and change < 0:
            raise StockError(_ARRIVAL_DOWN)
        if len(note) > MAX_NOTE:
            raise StockError(_NOTE_TOO_LONG.format(n=MAX_NOTE))
        mine = principal.scope.school_id
        if mine is not None and school_id != mine:
            raise StockError(_NOT_YOURS)

        def work(conn: Connection) -> int:
            if mine is None and school_id != POOL:
                found = conn.execute(select(schools.c.id).where(schools.c.id == school_id)).first()
                if found is None:
                    raise StockError(_NO_SUCH_HOLDER)
            make_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(
                make_insert(aid_stock)
                .values(school_id=school_id, item=item, quantity=0, updated_at=now)
                .on_conflict_do_nothing(index_elements=["school_id", "item"])
            )
            balance = conn.execute(
                update(aid_stock)
                .where(
                    aid_stock.c.school_id == school_id,
                    aid_stock.c.item == item,
                    aid_stock.c.quantity + change >= 0,
                )
                .values(quantity=aid_stock.c.quantity + change, updated_at=now)
                .returning(aid_stock.c.quantity)
            ).scalar()
            if balance is None:
                have = conn.execute(
                    select(aid_stock.c.quantity).where(
                        aid_stock.c.school_id == school_id, aid_stock.c.item == item
                    )
                ).scalar_one()
                raise StockError(_BELOW_ZERO.format(item=item, have=have, n=-change))
            conn.execute(
                insert(aid_ledger).values(
                    school_id=school_id,
                    item=item,
                    change=change,
                    balance=balance,
                    reason=reason,
                    note=note or None,
                    actor=principal.staff_no,
                    at=now,
                )
            )
            detail = {"item": item, "change": change, "reason": reason, "balance": balance}
            audit.record(
                conn,
                at=now,
                actor=principal.staff_no,
                action="aid_stock",
                detail=detail,
                school_id=None if school_id == POOL else school_id,
            )
            return int(balance)

        return await self.db.run(work)
