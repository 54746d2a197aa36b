"""Aid reviews (资助认定) over one connection, for `SqlStore` (chat) and `SqlReviews` (console).

Deciding is one conditional UPDATE (`status = 'open'`), so of two coordinators deciding one
review at once the second is told it is decided. Approving a reported student adds them with a
provisional 学籍号 and the teacher as head teacher; `storage.roster` merges them into the real
one when a roster import brings them (see `merge_provisional`).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from bot.core.console_ports import Principal
from bot.core.reviews import (
    FOUND_ON_VISIT,
    MAX_REASON,
    PROVISIONAL_PREFIX,
    REVIEW_CATEGORIES,
    AidReview,
    ReviewError,
    ReviewStatus,
    provisional_no,
    teacher_message,
)
from bot.core.text import xml_safe
from bot.core.types import RosterStaff, Staff, StaffRole
from storage import audit, outbox
from storage.db import Database
from storage.export import safe_cell
from storage.schema import (
    aid_reviews,
    assignments,
    identities,
    schools,
    staff,
    student_categories,
    students,
)
from storage.snapshot import last_seen

_COLS = (
    aid_reviews,
    func.coalesce(students.c.name, aid_reviews.c.name).label("student_name"),
    func.coalesce(students.c.class_name, aid_reviews.c.class_name).label("student_class"),
    students.c.student_no,
    staff.c.staff_no.label("reporter_no"),
    staff.c.name.label("reporter_name"),
)


def _query(viewer_school: int | None) -> Any:
    q = (
        select(*_COLS)
        .outerjoin(students, students.c.id == aid_reviews.c.student_id)
        .join(staff, staff.c.id == aid_reviews.c.reporter_id)
    )
    return q if viewer_school is None else q.where(aid_reviews.c.school_id == viewer_school)


def _review(r: Any) -> AidReview:
    return AidReview(
        r.id,
        r.school_id,
        r.student_id,
        r.student_name or "",
        r.student_class or "",
        r.note or "",
        r.reporter_id,
        r.reporter_no,
        r.reporter_name,
        ReviewStatus(r.status),
        r.created_at,
        r.name is not None,
        r.category,
        r.reason,
        r.student_no,
    )


def scope_of(viewer: Staff) -> int | bool | None:
    """The school a viewer decides for, None for every school, False for a teacher."""
    if viewer.role is StaffRole.BUREAU:
        return None
    return viewer.school_id if viewer.role is StaffRole.COORDINATOR else False


def open_review(
    conn: Connection,
    reporter: Staff,
    student_id: int | None,
    name: str,
    class_name: str,
    note: str,
    now: datetime,
) -> AidReview | None:
    if student_id is not None:
        school = conn.execute(
            select(students.c.school_id).where(students.c.id == student_id)
        ).scalar()
        same = and_(aid_reviews.c.student_id == student_id)
    else:
        school = reporter.school_id
        same = and_(
            aid_reviews.c.name == name,
            aid_reviews.c.class_name == class_name,
            aid_reviews.c.school_id == school,
            aid_reviews.c.student_id.is_(None),
        )
    if school is None:
        return None
    waiting = conn.execute(
        select(aid_reviews.c.id).where(same, aid_reviews.c.status == ReviewStatus.OPEN.value)
    ).first()
    if waiting is not None:  # one open review a student is enough
        return None
    new_id = conn.execute(
        insert(aid_reviews)
        .values(
            school_id=school,
            student_id=student_id,
            name=name if student_id is None else None,
            class_name=class_name if student_id is None else None,
            note=note or None,
            reporter_id=reporter.id,
            status=ReviewStatus.OPEN.value,
            created_at=now,
        )
        .returning(aid_reviews.c.id)
    ).scalar_one()
    return review(conn, None, int(new_id))


def review(conn: Connection, school: int | None, review_id: int) -> AidReview | None:
    row = conn.execute(_query(school).where(aid_reviews.c.id == review_id)).first()
    return _review(row) if row else None


def reviews(
    conn: Connection, school: int | None, statuses: Sequence[ReviewStatus], limit: int
) -> list[AidReview]:
    rows = conn.execute(
        _query(school)
        .where(aid_reviews.c.status.in_([s.value for s in statuses]))
        .order_by(aid_reviews.c.created_at, aid_reviews.c.id)
        .limit(limit)
    )
    return [_review(r) for r in rows]


def decide(
    conn: Connection,
    school: int | None,
    actor: str,
    review_id: int,
    category: str | None,
    reason: str,
    now: datetime,
) -> AidReview | None:
    """Approve (a `category`) or decline (a `reason`) an open review in scope; None when it is
    not open or not in scope (nothing changed)."""
    found = review(conn, school, review_id)
    if found is None or found.status is not ReviewStatus.OPEN:
        return None
    status = ReviewStatus.APPROVED if category else ReviewStatus.DECLINED
    changed = conn.execute(
        update(aid_reviews)
        .where(aid_reviews.c.id == review_id, aid_reviews.c.status == ReviewStatus.OPEN.value)
        .values(
            status=status.value,
            category=category,
            reason=None if category else reason,
            decided_by=actor,
            decided_at=now,
        )
    ).rowcount
    if not changed:
        return None
    student_id = found.student_id
    if category:
        if student_id is None:
            student_id = int(
                conn.execute(
                    insert(students)
                    .values(
                        student_no=provisional_no(review_id),
                        name=found.student_name,
                        school_id=found.school_id,
                        class_name=found.class_name,
                        active=True,
                    )
                    .returning(students.c.id)
                ).scalar_one()
            )
            conn.execute(
                insert(assignments).values(
                    student_id=student_id, role="head_teacher", staff_id=found.reporter_id
                )
            )
            conn.execute(
                update(aid_reviews)
                .where(aid_reviews.c.id == review_id)
                .values(student_id=student_id)
            )
        has = conn.execute(
            select(student_categories.c.category).where(
                student_categories.c.student_id == student_id,
                student_categories.c.category == category,
            )
        ).first()
        if has is None:
            conn.execute(
                insert(student_categories).values(
                    student_id=student_id, category=category, source=FOUND_ON_VISIT, since=now
                )
            )
    decided = review(conn, None, review_id)
    assert decided is not None
    audit.record(
        conn,
        at=now,
        actor=actor,
        action="aid_review",
        detail={
            "review": review_id,
            "decision": status.value,
            "category": category or "",
            "student_no": decided.student_no or "",
        },
        school_id=found.school_id,
    )
    return decided


def merge_provisional(conn: Connection, real: Sequence[tuple[str, str, int, str]]) -> int:
    """Give provisional students the real 学籍号 of new roster rows (student_no, name, school
    id, class) with the same name, school and class, when exactly one provisional student and
    one row match (never guessed); the student keeps its visits, reviews and categories. How
    many were merged."""
    provisional: dict[tuple[str, int, str], list[int]] = {}
    for r in conn.execute(
        select(students.c.id, students.c.name, students.c.school_id, students.c.class_name).where(
            students.c.student_no.startswith(PROVISIONAL_PREFIX, autoescape=True)
        )
    ):
        provisional.setdefault((r.name, r.school_id, r.class_name), []).append(r.id)
    rows: dict[tuple[str, int, str], list[str]] = {}
    for no, name, school_id, class_name in real:
        rows.setdefault((name, school_id, class_name), []).append(no)
    merged = 0
    for key, ids in provisional.items():
        nos = rows.get(key, [])
        if len(ids) == 1 and len(nos) == 1:
            conn.execute(update(students).where(students.c.id == ids[0]).values(student_no=nos[0]))
            merged += 1
    return merged


# ------------------------------------------------------------------------------ console
_LIST_HEADER = ("学校", "班级", "学籍号", "姓名", "资助类别", "来源", "认定日期")


_GONE = "这项认定已经处理过了，或不在你的范围内 / already decided, or not in your scope"
_BAD_CATEGORY = "请选择资助类别：{categories} / choose a category"
_NO_REASON = "不予认定请写明原因（最多 {n} 个字） / a reason please, at most {n} characters"

Reach = Callable[[RosterStaff], list[tuple[str, str]]]
Quiet = Callable[[datetime], datetime | None]


def _person(conn: Connection, staff_id: int) -> RosterStaff | None:
    row = conn.execute(
        select(staff.c.id, staff.c.staff_no, staff.c.name, staff.c.role, staff.c.school_id).where(
            staff.c.id == staff_id, staff.c.active.is_(True)
        )
    ).first()
    if row is None:
        return None
    ids = dict(
        conn.execute(
            select(identities.c.channel, identities.c.external_id).where(
                identities.c.staff_id == staff_id
            )
        ).all()
    )
    seen = last_seen(conn, [staff_id]).get(staff_id, {})
    return RosterStaff(
        row.id, row.staff_no, row.name, StaffRole(row.role), row.school_id, ids, seen
    )


class SqlReviews:
    """The console's reviews page and the spring aid list (implements
    `bot.core.reviews.ReviewStore`). `reach` orders a person's channels (the composition root
    passes the conversation's rule); `quiet` holds a message back over quiet hours."""

    def __init__(
        self,
        db: Database,
        tz: tzinfo,
        reach: Reach = lambda person: [],
        quiet: Quiet = lambda moment: None,
    ) -> None:
        self.db = db
        self.tz = tz
        self.reach = reach
        self.quiet = quiet

    async def decide(
        self,
        principal: Principal,
        review_id: int,
        category: str | None,
        reason: str,
        now: datetime,
    ) -> tuple[AidReview, bool]:
        reason = reason.strip()
        if category is not None and category not in REVIEW_CATEGORIES:
            raise ReviewError(_BAD_CATEGORY.format(categories="、".join(REVIEW_CATEGORIES)))
        if category is None and (not reason or len(reason) > MAX_REASON):
            raise ReviewError(_NO_REASON.format(n=MAX_REASON))
        school = principal.scope.school_id

        def work(conn: Connection) -> tuple[AidReview, bool]:
            decided = decide(conn, school, principal.staff_no, review_id, category, reason, now)
            if decided is None:
                raise ReviewError(_GONE)
            person = _person(conn, decided.reporter_id)
            order = self.reach(person) if person is not None else []
            if not order:
                return decided, False
            (channel, recipient), *rest = order
            outbox.enqueue(
                conn,
                key=f"review:{review_id}",
                channel=channel,
                recipient=recipient,
                kind="review",
                body=teacher_message(decided, principal.name),
                not_before=self.quiet(now) or now,
                now=now,
                fallbacks=rest,
            )
            return decided, True

        return await self.db.run(work)

    async def reviews(self, principal: Principal, limit: int = 500) -> list[AidReview]:
        school = principal.scope.school_id

        def work(conn: Connection) -> list[AidReview]:
            waiting = reviews(conn, school, (ReviewStatus.OPEN,), limit)
            decided = conn.execute(
                _query(school)
                .where(aid_reviews.c.status != ReviewStatus.OPEN.value)
                .order_by(aid_reviews.c.decided_at.desc(), aid_reviews.c.id.desc())
                .limit(limit)
            )
            return waiting + [_review(r) for r in decided]

        return await self.db.run(work)

    async def aid_list(self, principal: Principal, now: datetime) -> bytes:
        """Every active student in scope with an aid category, a row per category with its
        source and since when, as UTF-8 CSV with a BOM (Excel opens it); audited."""
        school = principal.scope.school_id

        def work(conn: Connection) -> list[Any]:
            where: list[Any] = [students.c.active.is_(True)]
            if school is not None:
                where.append(students.c.school_id == school)
            rows = conn.execute(
                select(
                    schools.c.name.label("school"),
                    students.c.class_name,
                    students.c.student_no,
                    students.c.name,
                    student_categories.c.category,
                    student_categories.c.source,
                    student_categories.c.since,
                )
                .join(students, students.c.id == student_categories.c.student_id)
                .join(schools, schools.c.id == students.c.school_id)
                .where(*where)
                .order_by(
                    schools.c.name,
                    students.c.class_name,
                    students.c.name,
                    students.c.student_no,
                    student_categories.c.category,
                )
            ).all()
            audit.record(
                conn,
                at=now,
                actor=principal.staff_no,
                action="aid_list",
                detail={"rows": len(rows)},
                school_id=school,
            )
            return list(rows)

        rows = await self.db.run(work)
        return await asyncio.to_thread(self._csv, rows)

    def _csv(self, rows: list[Any]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(_LIST_HEADER)
        for r in rows:
            source = "名单导入" if r.source == "roster" else r.source
            since = r.since.astimezone(self.tz).strftime("%Y-%m-%d") if r.since else ""
            cells = (r.school, r.class_name, r.student_no, r.name, r.category, source, since)
            writer.writerow([safe_cell(xml_safe(str(v))) for v in cells])
        return ("\ufeff" + out.getvalue()).encode("utf-8")
