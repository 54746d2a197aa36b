"""`SqlDistributions`: the distribution pages' port (`bot.core.distributions.DistributionStore`).

Recipients are fixed when a distribution is created; marking one delivered is one conditional
UPDATE (`delivered_at IS NULL`), so a second mark keeps the first one's who and when. A
coordinator sees their school's distributions and their school's part of the bureau's.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

import openpyxl
from openpyxl.styles import Alignment, Border, Font, Side
from openpyxl.utils import get_column_letter
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from bot.core.console_ports import Principal
from bot.core.distributions import (
    DistributionError,
    DistributionForm,
    DistributionSummary,
    DistributionView,
    Recipient,
)
from bot.core.text import xml_safe
from storage import audit
from storage.db import Database
from storage.export import safe_cell
from storage.schema import (
    distribution_recipients,
    distributions,
    schools,
    student_categories,
    students,
)

ALL_SCHOOLS = "全区"
MAX_TITLE = 100
MAX_LISTED = 2000
_NO_TITLE = (
    "请填写发放内容，如“每人两箱牛奶”（最多 {n} 个字） / a title please, at most {n} characters"
)
_NOTHING_CHOSEN = "请选择资助类别，或填写学籍号 / choose aid categories or list 学籍号"
_EMPTY = (
    "所选类别（{cats}）在本范围内没有在册学生，未创建 / "
    "no active student in scope has these categories: nothing created"
)
_UNKNOWN_NOS = (
    "这些学籍号不在本范围的在册学生中：{nos}，未创建 / "
    "not active students in your scope: nothing created"
)
_TOO_MANY = "一次最多 {n} 名学生 / at most {n} students at once"
_NO_SCHOOL = "没有这个学校 / no such school"
_GONE = "没有这次发放，或不在你的范围内 / no such distribution in your scope"
# The printed ledger's columns: (header, width in characters).
LEDGER_COLUMNS = (
    ("序号", 6),
    ("学校", 18),
    ("班级", 12),
    ("学籍号", 16),
    ("姓名", 10),
    ("资助类别", 16),
    ("发放内容", 20),
    ("登记送达", 12),
    ("领取人签字", 16),
    ("签收日期", 12),
)
_THIN = Side(style="thin")
_BOX = Border(left=_THIN, right=_THIN, top=_THIN, bottom=_THIN)


def _split(categories: str) -> tuple[str, ...]:
    return tuple(c for c in categories.strip(",").split(",") if c)


class SqlDistributions:
    """Implements `bot.core.distributions.DistributionStore` over a `Database`."""

    def __init__(self, db: Database, tz: tzinfo) -> None:
        self.db = db
        self.tz = tz

    # ------------------------------------------------------------------ reads
    async def form(self, principal: Principal) -> DistributionForm:
        mine = principal.scope.school_id

        def work(conn: Connection) -> DistributionForm:
            where: list[Any] = [students.c.active.is_(True)]
            if mine is not None:
                where.append(students.c.school_id == mine)
            counted = conn.execute(
                select(student_categories.c.category, func.count())
                .join(students, students.c.id == student_categories.c.student_id)
                .where(*where)
                .group_by(student_categories.c.category)
                .order_by(student_categories.c.category)
            ).all()
            named: list[tuple[int, str]] = []
            if mine is None:
                named = [
                    (r.id, r.name)
                    for r in conn.execute(
                        select(schools.c.id, schools.c.name).order_by(schools.c.name)
                    )
                ]
            return DistributionForm([(c, int(n)) for c, n in counted], named)

        return await self.db.run(work)

    def _visible(self, conn: Connection, principal: Principal, distribution_id: int) -> Any:
        row = conn.execute(
            select(distributions, schools.c.name.label("school_name"))
            .outerjoin(schools, schools.c.id == distributions.c.school_id)
            .where(distributions.c.id == distribution_id)
        ).first()
        mine = principal.scope.school_id
        if row is None or mine is None or row.school_id == mine:
            return row
        if row.school_id is not None:
            return None
        ours = conn.execute(  # the bureau's: visible where it reaches this school
            select(func.count())
            .select_from(distribution_recipients)
            .join(students, students.c.id == distribution_recipients.c.student_id)
            .where(
                distribution_recipients.c.distribution_id == distribution_id,
                students.c.school_id == mine,
            )
        ).scalar_one()
        return row if ours else None

    def _summaries(
        self, conn: Connection, principal: Principal, ids: list[int] | None
    ) -> list[DistributionSummary]:
        mine = principal.scope.school_id
        where: list[Any] = []
        if mine is not None:
            where.append(students.c.school_id == mine)
        if ids is not None:
            where.append(distributions.c.id.in_(ids))
        delivered = func.count(distribution_recipients.c.delivered_at)
        rows = conn.execute(
            select(
                distributions,
                schools.c.name.label("school_name"),
                func.count().label("total"),
                delivered.label("delivered"),
            )
            .join(
                distribution_recipients,
                distribution_recipients.c.distribution_id == distributions.c.id,
            )
            .join(students, students.c.id == distribution_recipients.c.student_id)
            .outerjoin(schools, schools.c.id == distributions.c.school_id)
            .where(*where)
            .group_by(distributions.c.id, schools.c.name)
            .order_by(distributions.c.created_at.desc(), distributions.c.id.desc())
        ).all()
        return [
            DistributionSummary(
                r.id,
                r.title,
                r.school_name or ALL_SCHOOLS,
                _split(r.categories),
                r.created_by,
                r.created_at,
                int(r.total),
                int(r.delivered),
            )
            for r in rows
        ]

    async def distributions(self, principal: Principal) -> list[DistributionSummary]:
        return await self.db.run(lambda conn: self._summaries(conn, principal, None))

    def _view(
        self, conn: Connection, principal: Principal, distribution_id: int
    ) -> DistributionView | None:
        if self._visible(conn, principal, distribution_id) is None:
            return None
        summary = self._summaries(conn, principal, [distribution_id])
        if not summary:
            return None
        mine = principal.scope.school_id
        where: list[Any] = [distribution_recipients.c.distribution_id == distribution_id]
        if mine is not None:
            where.append(students.c.school_id == mine)
        rows = conn.execute(
            select(
                students.c.id,
                students.c.student_no,
                students.c.name,
                students.c.class_name,
                students.c.categories,
                schools.c.name.label("school"),
                distribution_recipients.c.delivered_at,
                distribution_recipients.c.delivered_by,
            )
            .join(students, students.c.id == distribution_recipients.c.student_id)
            .join(schools, schools.c.id == students.c.school_id)
            .where(*where)
            .order_by(schools.c.name, students.c.class_name, students.c.name, students.c.id)
        ).all()
        recipients = [
            Recipient(
                r.id,
                r.student_no,
                r.name,
                r.school,
                r.class_name,
                _split(r.categories),
                r.delivered_at,
                r.delivered_by,
            )
            for r in rows
        ]
        return DistributionView(summary[0], recipients)

    async def view(self, principal: Principal, distribution_id: int) -> DistributionView | None:
        return await self.db.run(lambda conn: self._view(conn, principal, distribution_id))

    # ------------------------------------------------------------------ writes
    async def create(
        self,
        principal: Principal,
        title: str,
        categories: Sequence[str],
        student_nos: Sequence[str],
        school_id: int | None,
        now: datetime,
    ) -> int:
        title = title.strip()
        if not title or len(title) > MAX_TITLE:
            raise DistributionError(_NO_TITLE.format(n=MAX_TITLE))
        cats = sorted({c.strip() for c in categories if c.strip()})
        nos = list(dict.fromkeys(n.strip() for n in student_nos if n.strip()))
        if not cats and not nos:
            raise DistributionError(_NOTHING_CHOSEN)
        if len(nos) > MAX_LISTED:
            raise DistributionError(_TOO_MANY.format(n=MAX_LISTED))
        mine = principal.scope.school_id
        school = mine if mine is not None else school_id

        def work(conn: Connection) -> int:
            if mine is None and school is not None:
                found = conn.execute(select(schools.c.id).where(schools.c.id == school)).first()
                if found is None:
                    raise DistributionError(_NO_SCHOOL)
            where: list[Any] = [students.c.active.is_(True)]
            if school is not None:
                where.append(students.c.school_id == school)
            chosen: set[int] = set()
            if cats:
                chosen |= set(
                    conn.execute(
                        select(students.c.id)
                        .join(student_categories, student_categories.c.student_id == students.c.id)
                        .where(*where, student_categories.c.category.in_(cats))
                    ).scalars()
                )
                if not chosen:
                    raise DistributionError(_EMPTY.format(cats="、".join(cats)[:200]))
            if nos:
                found_nos = dict(
                    conn.execute(
                        select(students.c.student_no, students.c.id).where(
                            *where, students.c.student_no.in_(nos)
                        )
                    ).all()
                )
                missing = [n for n in nos if n not in found_nos]
                if missing:
                    shown = "、".join(n[:64] for n in missing[:10])
                    more = f" 等 {len(missing)} 个" if len(missing) > 10 else ""
                    raise DistributionError(_UNKNOWN_NOS.format(nos=shown + more))
                chosen |= set(found_nos.values())
            new_id = conn.execute(
                insert(distributions)
                .values(
                    school_id=school,
                    title=title,
                    categories=",".join(cats),
                    created_by=principal.staff_no,
                    created_at=now,
                )
                .returning(distributions.c.id)
            ).scalar_one()
            conn.execute(
                insert(distribution_recipients),
                [{"distribution_id": new_id, "student_id": s} for s in sorted(chosen)],
            )
            audit.record(
                conn,
                at=now,
                actor=principal.staff_no,
                action="distribution_create",
                detail={"distribution": new_id, "recipients": len(chosen)},
                school_id=school,
            )
            return int(new_id)

        return await self.db.run(work)

    async def deliver(
        self,
        principal: Principal,
        distribution_id: int,
        student_ids: Sequence[int],
        now: datetime,
    ) -> int:
        mine = principal.scope.school_id

        def work(conn: Connection) -> int:
            if self._visible(conn, principal, distribution_id) is None:
                raise DistributionError(_GONE)
            in_scope = select(students.c.id).where(students.c.id.in_(list(student_ids)))
            if mine is not None:
                in_scope = in_scope.where(students.c.school_id == mine)
            marked = conn.execute(
                update(distribution_recipients)
                .where(
                    distribution_recipients.c.distribution_id == distribution_id,
                    distribution_recipients.c.student_id.in_(in_scope),
                    distribution_recipients.c.delivered_at.is_(None),
                )
                .values(delivered_at=now, delivered_by=principal.staff_no)
            ).rowcount
            if marked:
                audit.record(
                    conn,
                    at=now,
                    actor=principal.staff_no,
                    action="distribution_deliver",
                    detail={"distribution": distribution_id, "delivered": marked},
                    school_id=mine,
                )
            return int(marked)

        return await self.db.run(work)

    async def ledger(
        self, principal: Principal, distribution_id: int, now: datetime
    ) -> tuple[str, bytes] | None:
        def work(conn: Connection) -> DistributionView | None:
            found = self._view(conn, principal, distribution_id)
            if found is not None:  # a list of names leaves the system: audited like an export
                audit.record(
                    conn,
                    at=now,
                    actor=principal.staff_no,
                    action="distribution_ledger",
                    detail={"distribution": distribution_id, "rows": len(found.recipients)},
                    school_id=principal.scope.school_id,
                )
            return found

        found = await self.db.run(work)
        if found is None:
            return None
        return f"发放台账-{distribution_id}.xlsx", ledger_xlsx(found, self.tz)


def ledger_xlsx(found: DistributionView, tz: tzinfo) -> bytes:
    """The 发放台账 ready to print: a title, the table with borders, its header repeated on
    every page, the columns fitted to the page's width (A4 landscape)."""
    s = found.summary
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "发放台账"
    width = len(LEDGER_COLUMNS)
    sheet.append([safe_cell(xml_safe(f"发放台账：{s.title}"))])
    what = "、".join(s.categories) if s.categories else "指定名单"
    made = s.created_at.astimezone(tz).strftime("%Y-%m-%d")
    sheet.append([xml_safe(f"{s.school} · 对象：{what} · 共 {s.total} 人 · 创建 {made}")])
    sheet.append([h for h, _ in LEDGER_COLUMNS])
    for n, r in enumerate(found.recipients, start=1):
        done = r.delivered_at.astimezone(tz).strftime("%Y-%m-%d") if r.delivered_at else ""
        row = [n, r.school, r.class_name, r.student_no, r.name, "、".join(r.categories), s.title]
        cells = [safe_cell(xml_safe(v)) if isinstance(v, str) else v for v in row]
        sheet.append([*cells, done, "", ""])
    for top in (1, 2):
        sheet.merge_cells(start_row=top, start_column=1, end_row=top, end_column=width)
    sheet["A1"].font = Font(bold=True, size=14)
    sheet["A1"].alignment = Alignment(horizontal="center")
    for col, (_, chars) in enumerate(LEDGER_COLUMNS, start=1):
        sheet.column_dimensions[get_column_letter(col)].width = chars
    for row in sheet.iter_rows(min_row=3, max_row=sheet.max_row, max_col=width):
        for cell in row:
            cell.border = _BOX
            cell.alignment = Alignment(vertical="center", wrap_text=True)
    for cell in sheet[3]:
        cell.font = Font(bold=True)
    for n in range(4, sheet.max_row + 1):
        sheet.row_dimensions[n].height = 28  # room for a signature
    sheet.print_title_rows = "3:3"
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = 0
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.print_options.horizontalCentered = True
    sheet.oddFooter.center.text = "第 &P 页 / 共 &N 页"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
