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
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import case, delete, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bot.core.aid import (
    AID_CATEGORIES,
    METHODS,
    POOL,
    AidItem,
    Allocation,
    LedgerLine,
    NeedSupply,
    OpenNeed,
    ScreenOutcome,
    StockError,
    StockLine,
    StockView,
    Taken,
)
from bot.core.console_ports import Principal, Problem, UploadedFile
from bot.core.errors import RosterError
from bot.core.signin import new_secret, secret_hash
from bot.core.types import Staff, StaffRole
from storage import audit, outbox
from storage.console import OPEN, UPLOAD_TTL, split_problem
from storage.db import Database
from storage.roster_files import ListRow, read_list
from storage.schema import (
    UtcDateTime,
    aid_allocations,
    aid_ledger,
    aid_stock,
    console_uploads,
    followups,
    identities,
    schools,
    staff,
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
NEEDS_SCANNED = 5000  # open needs of one item read for sorting by urgency
NEEDS_SHOWN = 200
MAX_TRACKING = 100
_NOT_FOR_NEEDS = "{item}不对应跟进需求，请用分发"
_NOT_FOR_NEEDS += " / {item} meets no need: give it out by distribution"
_BAD_METHOD = "请选择发放方式：快递、运营商上门安装或当面交付 / choose how it goes out"
_TRACKING_NEEDED = "快递请填写快递单号 / a courier needs its tracking number"
_TRACKING_TOO_LONG = "快递单号最多 {n} 个字 / the tracking number is at most {n} characters"
_NONE_CHOSEN = "请至少选择一名学生 / choose at least one student"
_NO_SUCH_NEED = "第{n}项需求不存在或不在你的范围内 / need {n} is not in your scope"
_OTHER_SCHOOL_NEED = (
    "第{n}项需求是其他学校的，只能用该校库存或教育局统筹 / need {n} belongs to another school"
)
_WRONG_KIND = "第{n}项需求不是{item}能解决的 / need {n} is not one {item} meets"
_NEED_CLOSED = "第{n}项需求已经办结 / need {n} is closed already"
_ALREADY_ALLOCATED = "第{n}项需求已经发放过物品 / need {n} has an allocation already"
_NO_SUCH_ALLOCATION = "没有这条发放记录，或不在你的范围内 / no such allocation in your scope"
_DELIVERED_ALREADY = "这件物品已经登记送达了 / its delivery was recorded already"
_ON_ITS_WAY = "【物资】学校为{student}安排了{item}，{how}。下次家访时请问一下是否收到、是否在用。"


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


def _move(
    conn: Connection,
    school_id: int,
    item: str,
    change: int,
    reason: str,
    note: str,
    actor: str,
    now: datetime,
) -> int:
    """Change a holder's count by one conditional UPDATE (never below zero), ledgered and
    audited; the new count. Raises `StockError` when there is not enough."""
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
            actor=actor,
            at=now,
        )
    )
    detail = {"item": item, "change": change, "reason": reason, "balance": balance}
    audit.record(
        conn,
        at=now,
        actor=actor,
        action="aid_stock",
        detail=detail,
        school_id=None if school_id == POOL else school_id,
    )
    return int(balance)


def _figures(
    conn: Connection,
    school_id: int | None,
    between: tuple[int, int] | None = None,
    span: tuple[int, int] | None = None,
) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], tuple[int, int, int, int]]]:
    """Open needs by (school, kind), and by (school, item): needs it met that are closed
    now, allocated, delivered, in use (each counted once a need); of one school, of the
    schools in an inclusive id range, or of all."""
    where: list[Any] = [followups.c.status.in_(OPEN), students.c.active.is_(True)]
    if school_id is not None:
        where.append(students.c.school_id == school_id)
    if between is not None:
        where.append(students.c.school_id.between(*between))
    if span is not None:  # (the span of the students' ids: see storage.snapshot.StudentSpan)
        where.append(followups.c.student_id.between(*span))
    open_by: dict[tuple[int, str], int] = {
        (school, kind): n
        for school, kind, n in conn.execute(
            select(students.c.school_id, followups.c.kind, func.count())
            .join(students, students.c.id == followups.c.student_id)
            .where(*where)
            .group_by(students.c.school_id, followups.c.kind)
        )
    }
    a = aid_allocations
    fid = a.c.followup_id
    delivered = a.c.delivered_at.is_not(None)
    closed = followups.c.status.not_in(OPEN)
    alloc_where: list[Any] = [students.c.active.is_(True)]
    if school_id is not None:
        alloc_where.append(students.c.school_id == school_id)
    if between is not None:
        alloc_where.append(students.c.school_id.between(*between))
    if span is not None:
        alloc_where.append(a.c.student_id.between(*span))
    given: dict[tuple[int, str], tuple[int, int, int, int]] = {
        (r.school_id, r.item): (r.closed, r.allocated, r.delivered, r.in_use)
        for r in conn.execute(
            select(
                students.c.school_id,
                a.c.item,
                func.count(func.distinct(case((closed, fid)))).label("closed"),
                func.count(func.distinct(fid)).label("allocated"),
                func.count(func.distinct(case((delivered, fid)))).label("delivered"),
                func.count(func.distinct(case((a.c.status == "in_use", fid)))).label("in_use"),
            )
            .join(students, students.c.id == a.c.student_id)
            .join(followups, followups.c.id == fid)
            .where(*alloc_where)
            .group_by(students.c.school_id, a.c.item)
        )
    }
    return open_by, given


def _need_supply(
    item: AidItem,
    school: int | None,
    open_by: dict[tuple[int, str], int],
    given: dict[tuple[int, str], tuple[int, int, int, int]],
    stock: int,
) -> NeedSupply:
    """One item's figures for one school (None: all of them)."""
    needs = sum(n for (s, k), n in open_by.items() if k in item.meets and school in (None, s))
    figures = [v for (s, i), v in given.items() if i == item.name and school in (None, s)]
    closed, allocated, delivered, in_use = (sum(f[n] for f in figures) for n in range(4))
    return NeedSupply(
        item.name, needs + closed, stock, bool(item.meets), allocated, delivered, in_use
    )


def supply_by_school(
    conn: Connection,
    items: Sequence[AidItem],
    schools: tuple[int, int] | None = None,
    span: tuple[int, int] | None = None,
) -> dict[int, list[NeedSupply]]:
    """Need against supply of every item that meets a need, school by school (the digests):
    only the items a school has a need, an allocation or stock of; `POOL` for the bureau's
    pool (its stock only). `schools`: only those of an inclusive id range (no pool)."""
    open_by, given = _figures(conn, None, schools, span)
    stock = select(aid_stock)
    if schools is not None:
        stock = stock.where(aid_stock.c.school_id.between(*schools))
    counts = {(r.school_id, r.item): r.quantity for r in conn.execute(stock)}
    holders = {s for s, _ in open_by} | {s for s, _ in given} | {s for s, _ in counts}
    found: dict[int, list[NeedSupply]] = {}
    for school in sorted(holders):
        for item in items:
            if not item.meets:
                continue
            line = _need_supply(item, school, open_by, given, counts.get((school, item.name), 0))
            if line.needs or line.stock or line.allocated:
                found.setdefault(school, []).append(line)
    return found


class SqlAid:
    """Implements `bot.core.aid.AidStore` over a `Database`."""

    def __init__(
        self,
        db: Database,
        items: Sequence[AidItem],
        channels: Sequence[str] = (),
        quiet: Callable[[datetime], datetime | None] = lambda _: None,
    ) -> None:
        self.db = db
        self.items = tuple(items)
        self.channels = tuple(channels)  # the chat channels that reach a teacher, in order
        self.quiet = quiet  # when quiet hours end, if `now` is inside them

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
        open_by, given = _figures(conn, school_id)
        return [
            _need_supply(
                item,
                None,
                open_by,
                given,
                sum(n for (_, name), n in counts.items() if name == item.name),
            )
            for item in self.items
        ]

    def _by_school(
        self, conn: Connection, labels: dict[int, str], counts: dict[tuple[int, str], int]
    ) -> list[tuple[str, NeedSupply]]:
        open_by, given = _figures(conn, None)
        rows = []
        for school, label in labels.items():
            if school == POOL:
                continue
            for item in self.items:
                if not item.meets:
                    continue
                line = _need_supply(
                    item, school, open_by, given, counts.get((school, item.name), 0)
                )
                if line.needs or line.stock:
                    rows.append((label, line))
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
            return _move(conn, school_id, item, change, reason, note, principal.staff_no, now)

        return await self.db.run(work)

    # ------------------------------------------------------------------ allocation
    def _item(self, name: str) -> AidItem:
        for item in self.items:
            if item.name == name:
                return item
        raise StockError(_UNKNOWN_ITEM.format(item=name[:50]))

    async def open_needs(self, principal: Principal, item: str, now: datetime) -> list[OpenNeed]:
        kinds = self._item(item).meets
        mine = principal.scope.school_id

        def work(conn: Connection) -> list[OpenNeed]:
            return _open_needs(conn, kinds, mine, None, now)

        return await self.db.run(work)

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
        kinds = self._item(item).meets
        if not kinds:
            raise StockError(_NOT_FOR_NEEDS.format(item=item))
        if method not in METHODS:
            raise StockError(_BAD_METHOD)
        tracking = tracking.strip()
        if method == "courier" and not tracking:
            raise StockError(_TRACKING_NEEDED)
        if len(tracking) > MAX_TRACKING:
            raise StockError(_TRACKING_TOO_LONG.format(n=MAX_TRACKING))
        wanted = list(dict.fromkeys(followup_ids))
        if not wanted:
            raise StockError(_NONE_CHOSEN)
        if len(wanted) > MAX_CHANGE:
            raise StockError(_BAD_CHANGE.format(n=MAX_CHANGE))
        mine = principal.scope.school_id
        if mine is not None and school_id != mine:
            raise StockError(_NOT_YOURS)

        def work(conn: Connection) -> list[int]:
            if mine is None and school_id != POOL:
                found = conn.execute(select(schools.c.id).where(schools.c.id == school_id)).first()
                if found is None:
                    raise StockError(_NO_SUCH_HOLDER)
            rows = {
                r.id: r
                for r in conn.execute(
                    select(
                        followups.c.id,
                        followups.c.kind,
                        followups.c.status,
                        followups.c.student_id,
                        followups.c.owner_staff_id,
                        students.c.school_id,
                        students.c.active,
                        students.c.name,
                        students.c.class_name,
                    )
                    .join(students, students.c.id == followups.c.student_id)
                    .where(followups.c.id.in_(wanted))
                )
            }
            taken = set(
                conn.execute(
                    select(aid_allocations.c.active_followup_id).where(
                        aid_allocations.c.active_followup_id.in_(wanted)
                    )
                ).scalars()
            )
            for n, fid in enumerate(wanted, 1):
                r = rows.get(fid)
                if r is None or not r.active or (mine is not None and r.school_id != mine):
                    raise StockError(_NO_SUCH_NEED.format(n=n))
                if school_id != POOL and r.school_id != school_id:
                    raise StockError(_OTHER_SCHOOL_NEED.format(n=n))
                if r.kind not in kinds:
                    raise StockError(_WRONG_KIND.format(n=n, item=item))
                if r.status not in OPEN:
                    raise StockError(_NEED_CLOSED.format(n=n))
                if fid in taken:
                    raise StockError(_ALREADY_ALLOCATED.format(n=n))
            note = f"发放给 {len(wanted)} 名学生"
            _move(conn, school_id, item, -len(wanted), "allocation", note, principal.staff_no, now)
            ids = []
            for fid in wanted:
                r = rows[fid]
                new_id = conn.execute(
                    insert(aid_allocations)
                    .values(
                        school_id=school_id,
                        item=item,
                        followup_id=fid,
                        active_followup_id=fid,
                        student_id=r.student_id,
                        method=method,
                        tracking=tracking or None,
                        status="allocated",
                        allocated_at=now,
                        allocated_by=principal.staff_no,
                    )
                    .returning(aid_allocations.c.id)
                ).scalar_one()
                ids.append(int(new_id))
                how = METHODS[method] + (f"（单号 {tracking}）" if tracking else "")
                body = _ON_ITS_WAY.format(student=f"{r.name}（{r.class_name}）", item=item, how=how)
                self._tell(conn, r.owner_staff_id, f"aid-allocated:{new_id}", body, now)
            audit.record(
                conn,
                at=now,
                actor=principal.staff_no,
                action="aid_allocate",
                detail={"item": item, "allocations": ids, "method": method},
                school_id=None if school_id == POOL else school_id,
            )
            return ids

        try:
            return await self.db.run(work)
        except IntegrityError:  # a colleague allocated to one of these needs at the same moment
            raise StockError(_ALREADY_ALLOCATED.format(n="")) from None

    def _tell(self, conn: Connection, staff_id: int, key: str, body: str, now: datetime) -> bool:
        """Queue `body` for a staff member on the first configured channel they have (the rest
        as fallbacks), in the caller's transaction: sent once with the change that caused it."""
        have = dict(
            conn.execute(
                select(identities.c.channel, identities.c.external_id).where(
                    identities.c.staff_id == staff_id
                )
            ).all()
        )
        order = [(c, have[c]) for c in self.channels if c in have]
        if not order:
            return False
        (channel, recipient), *rest = order
        return outbox.enqueue(
            conn,
            key=key,
            channel=channel,
            recipient=recipient,
            kind="aid",
            body=body,
            not_before=self.quiet(now) or now,
            now=now,
            fallbacks=rest,
        )

    async def allocations(self, principal: Principal, limit: int = 200) -> list[Allocation]:
        mine = principal.scope.school_id

        def work(conn: Connection) -> list[Allocation]:
            return [a for a, _ in _allocations(conn, mine, None, limit)]

        return await self.db.run(work)

    async def deliver(self, principal: Principal, allocation_id: int, now: datetime) -> Allocation:
        mine = principal.scope.school_id

        def work(conn: Connection) -> Allocation:
            found = _allocations(conn, mine, allocation_id, 1)
            if not found:
                raise StockError(_NO_SUCH_ALLOCATION)
            done = conn.execute(
                update(aid_allocations)
                .where(
                    aid_allocations.c.id == allocation_id,
                    aid_allocations.c.status == "allocated",
                )
                .values(status="delivered", delivered_at=now, delivered_by=principal.staff_no)
            ).rowcount
            if not done:
                raise StockError(_DELIVERED_ALREADY)
            audit.record(
                conn,
                at=now,
                actor=principal.staff_no,
                action="aid_deliver",
                detail={"allocation": allocation_id},
                school_id=found[0][1],
            )
            return _allocations(conn, mine, allocation_id, 1)[0][0]

        return await self.db.run(work)


def _allocations(
    conn: Connection, school_id: int | None, allocation_id: int | None, limit: int
) -> list[tuple[Allocation, int]]:
    """Allocations of one school (None: every school), or the one `allocation_id`, each with
    its student's school."""
    a, st, owner = aid_allocations, students, staff.alias("owner")
    query = (
        select(
            a,
            st.c.name.label("student_name"),
            st.c.class_name,
            st.c.school_id.label("student_school"),
            schools.c.name.label("school_name"),
            owner.c.name.label("owner_name"),
        )
        .join(st, st.c.id == a.c.student_id)
        .join(schools, schools.c.id == st.c.school_id)
        .join(followups, followups.c.id == a.c.followup_id)
        .join(owner, owner.c.id == followups.c.owner_staff_id)
    )
    if school_id is not None:
        query = query.where(st.c.school_id == school_id)
    if allocation_id is not None:
        query = query.where(a.c.id == allocation_id)
    query = query.order_by((a.c.status == "allocated").desc(), a.c.allocated_at.desc(), a.c.id)
    found = []
    for r in conn.execute(query.limit(limit)):
        allocation = Allocation(
            r.id,
            r.item,
            r.school_name,
            r.student_name,
            r.class_name,
            r.method,
            r.tracking or "",
            r.status,
            r.allocated_at,
            r.allocated_by,
            r.delivered_at,
            r.owner_name,
        )
        found.append((allocation, int(r.student_school)))
    return found


def _open_needs(
    conn: Connection,
    kinds: Sequence[str],
    school_id: int | None,
    followup_id: int | None,
    now: datetime,
) -> list[OpenNeed]:
    """Open needs of `kinds` with no standing allocation, most urgent first."""
    f, st, owner = followups, students, staff.alias("owner")
    standing = select(aid_allocations.c.active_followup_id).where(
        aid_allocations.c.active_followup_id.is_not(None)
    )
    query = (
        select(
            f.c.id,
            f.c.kind,
            f.c.detail,
            f.c.created_at,
            st.c.school_id,
            st.c.name,
            st.c.class_name,
            st.c.categories,
            schools.c.name.label("school_name"),
            owner.c.name.label("owner_name"),
            owner.c.staff_no.label("owner_no"),
        )
        .join(st, st.c.id == f.c.student_id)
        .join(schools, schools.c.id == st.c.school_id)
        .join(owner, owner.c.id == f.c.owner_staff_id)
        .where(
            f.c.kind.in_(kinds),
            f.c.status.in_(OPEN),
            st.c.active.is_(True),
            f.c.id.not_in(standing),
        )
        .order_by(f.c.created_at, f.c.id)
        .limit(NEEDS_SCANNED)
    )
    if school_id is not None:
        query = query.where(st.c.school_id == school_id)
    if followup_id is not None:
        query = query.where(f.c.id == followup_id)
    needs = []
    for r in conn.execute(query):
        cats = tuple(c for c in AID_CATEGORIES if f",{c}," in (r.categories or ""))
        needs.append(
            OpenNeed(
                r.id,
                r.school_id,
                r.school_name,
                r.name,
                r.class_name,
                r.kind,
                r.detail,
                cats,
                max(0, (now - r.created_at).days),
                r.owner_name,
                r.owner_no,
            )
        )
    needs.sort(key=lambda n: (-len(n.aid_categories), -n.days_open, n.followup_id))
    return needs[:NEEDS_SHOWN]


# ---------------------------------------------------------------------------- in chat (#15)
def holder_of(viewer: Staff) -> int:
    """Where a person records stock in chat: their school, or the pool for the bureau."""
    return POOL if viewer.role is StaffRole.BUREAU else (viewer.school_id or -1)


def _scope_of(viewer: Staff) -> int | None:
    return None if viewer.role is StaffRole.BUREAU else (viewer.school_id or -1)


def stock_counts(conn: Connection, viewer: Staff) -> dict[str, int]:
    rows = conn.execute(
        select(aid_stock.c.item, aid_stock.c.quantity).where(
            aid_stock.c.school_id == holder_of(viewer)
        )
    )
    return {r.item: int(r.quantity) for r in rows}


def needs_in_scope(
    conn: Connection,
    viewer: Staff,
    kinds: Sequence[str],
    now: datetime,
    limit: int,
    followup_id: int | None,
) -> list[OpenNeed]:
    return _open_needs(conn, kinds, _scope_of(viewer), followup_id, now)[:limit]


def change_in_chat(
    conn: Connection, viewer: Staff, item: str, change: int, now: datetime
) -> int | None:
    reason = "arrival" if change > 0 else "correction"
    try:
        with conn.begin_nested():
            return _move(
                conn, holder_of(viewer), item, change, reason, "聊天", viewer.staff_no, now
            )
    except StockError:
        return None


def allocate_in_chat(
    conn: Connection,
    viewer: Staff,
    item: str,
    followup_id: int,
    method: str,
    tracking: str,
    now: datetime,
) -> Taken:
    holder = holder_of(viewer)
    row = conn.execute(select(followups.c.student_id).where(followups.c.id == followup_id)).one()
    try:
        with conn.begin_nested():
            left = _move(
                conn, holder, item, -1, "allocation", "发放给 1 名学生", viewer.staff_no, now
            )
            new_id = conn.execute(
                insert(aid_allocations)
                .values(
                    school_id=holder,
                    item=item,
                    followup_id=followup_id,
                    active_followup_id=followup_id,
                    student_id=row.student_id,
                    method=method,
                    tracking=tracking or None,
                    status="allocated",
                    allocated_at=now,
                    allocated_by=viewer.staff_no,
                )
                .returning(aid_allocations.c.id)
            ).scalar_one()
    except StockError:
        have = conn.execute(
            select(aid_stock.c.quantity).where(
                aid_stock.c.school_id == holder, aid_stock.c.item == item
            )
        ).scalar()
        return Taken(0, int(have or 0))
    except IntegrityError:  # a colleague's allocation to this need, at the same moment
        return Taken(0, 0, taken=True)
    audit.record(
        conn,
        at=now,
        actor=viewer.staff_no,
        action="aid_allocate",
        detail={"item": item, "allocations": [int(new_id)], "method": method},
        school_id=None if holder == POOL else holder,
    )
    return Taken(int(new_id), left)


def deliver_in_chat(conn: Connection, viewer: Staff, followup_id: int, now: datetime) -> str | None:
    a = aid_allocations
    query = (
        select(a.c.id, a.c.item, a.c.status, students.c.school_id)
        .join(followups, followups.c.id == a.c.followup_id)
        .join(students, students.c.id == a.c.student_id)
        .where(a.c.followup_id == followup_id, a.c.status.in_(("allocated", "delivered")))
        .order_by(a.c.id.desc())
    )
    if viewer.role is StaffRole.TEACHER:
        query = query.where(followups.c.owner_staff_id == viewer.id)
    elif viewer.role is StaffRole.COORDINATOR:
        query = query.where(students.c.school_id == viewer.school_id)
    found = conn.execute(query.limit(1)).first()
    if found is None:
        return None
    done = conn.execute(
        update(a)
        .where(a.c.id == found.id, a.c.status == "allocated")
        .values(status="delivered", delivered_at=now, delivered_by=viewer.staff_no)
    ).rowcount
    if not done:
        return ""
    audit.record(
        conn,
        at=now,
        actor=viewer.staff_no,
        action="aid_deliver",
        detail={"allocation": int(found.id)},
        school_id=int(found.school_id),
    )
    return str(found.item)
