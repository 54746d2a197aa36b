"""Aid reviews (资助认定) in chat (#15): a teacher reports a student who is on no list
(`新增学生 姓名 班级 说明`); coordinators and bureau see the open reviews (`待认定`, numbered)
and decide them (`认定 N 类别`, `不认定 N 原因`); the reporting teacher is told either way.

A review is also opened by the visit form (`aid_review` in the form file: "是" to the question
about new hardship because of the crisis). Numbers refer to the last 待认定 list shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.reviews import MAX_REASON, REVIEW_CATEGORIES, AidReview, teacher_message
from bot.core.types import StaffRole
from handlers.coordinate import SCOPE, Coordination, Ctx
from handlers.render import student_label
from handlers.states import Item, ItemKind, Listing, ListKind

LIST_LIMIT = 30
MAX_NAME = 20
MAX_CLASS = 30
MAX_NOTE = 300

REPORT_HOW = (
    "请写成：新增学生 姓名 班级 说明，例如：新增学生 李小花 三年级2班 父母都没能返岗，"
    "家里没有收入。学校资助专员认定后，这名学生会加入你的名单。"
)
REPORT_NO_SCHOOL = "你的账号没有所属学校，不能登记新增学生。"
REPORT_TOO_LONG = "姓名最多{name}字、班级最多{cls}字、说明最多{note}字，请缩短后再发。"
REPORT_TWICE = "{student}已经在等待资助认定了，不用重复登记。"
REPORTED = "已登记：{student}，说明：{note}。已转学校资助专员做资助认定，认定结果会通知你。"
VISIT_REVIEW_OPENED = "家庭有新的经济困难：已转学校资助专员做资助认定，结果会通知你。"
FOR_COORDINATORS = "“{word}”是学校资助协调员和教育局用的指令。"
NEW_REVIEW_MESSAGE = (
    "【资助认定】{teacher}登记了{student}（{origin}）：{note}。回复“待认定”查看并认定。"
)
NONE_OPEN = "{scope}目前没有待认定的学生。"
HEAD = "{scope}待资助认定{count}名："
LINE = "{n}. {student} · {origin} · 登记：{reporter} · 说明：{note}"
REPORTED_ORIGIN = "老师上报的新增学生"
VISIT_ORIGIN = "家访发现新困难"
MORE = "……只列出最早的{limit}名。"
FOOT = "回复“认定 序号 类别”认定（类别：{categories}），“不认定 序号 原因”不予认定。"
NO_LIST = "请先回复“待认定”看列表，再用序号："
NO_ITEM = "当前列表里没有第{n}项。列表已更新："
GONE = "第{n}项已经认定过了，或不在你的范围内。列表已更新："
APPROVE_HOW = "请写上序号和类别，例如：认定 1 低保。类别：{categories}"
BAD_CATEGORY = "没有“{category}”这个资助类别。可选：{categories}"
DECLINE_HOW = "请写上序号和原因，例如：不认定 1 家庭收入已恢复。"
REASON_TOO_LONG = "原因最多{limit}字（现在{length}字），请缩短后再发。"
APPROVED = "已认定：{student} · {category}（来源：家访发现）{added}。{told}"
ADDED = "，已加入名单（临时学籍号 {no}，班主任 {teacher}）"
DECLINED = "已不予认定：{student}。原因：{reason}。{told}"
TEACHER_TOLD = "已通知{teacher}。"
TEACHER_NOT_TOLD = "{teacher}没有可用的聊天账号，未能通知。"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Reviews:
    co: Coordination

    # ------------------------------------------------------------------ teachers
    def report(self, c: Ctx, text: str) -> list[str]:
        parts = text.split(maxsplit=2)
        if len(parts) < 3:
            return [REPORT_HOW]
        name, class_name, note = parts
        if len(name) > MAX_NAME or len(class_name) > MAX_CLASS or len(note) > MAX_NOTE:
            return [REPORT_TOO_LONG.format(name=MAX_NAME, cls=MAX_CLASS, note=MAX_NOTE)]
        if c.staff.school_id is None:
            return [REPORT_NO_SCHOOL]
        opened = c.t.store.open_review(c.staff, None, name, class_name, note, c.t.now)
        student = student_label(name, class_name)
        if opened is None:
            return [REPORT_TWICE.format(student=student)]
        self.tell_school(c, opened)
        return [REPORTED.format(student=student, note=note)]

    def tell_school(self, c: Ctx, opened: AidReview) -> int:
        """Tell the school's coordinators of a new review (once each); how many were told."""
        body = NEW_REVIEW_MESSAGE.format(
            teacher=opened.reporter_name,
            student=student_label(opened.student_name, opened.class_name),
            origin=REPORTED_ORIGIN if opened.reported else VISIT_ORIGIN,
            note=_clip(opened.note, 60) or "无",
        )
        people = c.t.store.coordinators_of(opened.school_id)
        key = f"review-new:{opened.id}"
        return sum(self.co.tell(c, p, f"{key}:{p.staff_no}", "review", body) for p in people)

    # ------------------------------------------------------------------ coordinators
    def allowed(self, c: Ctx) -> bool:
        return c.staff.role in (StaffRole.COORDINATOR, StaffRole.BUREAU)

    def pending(self, c: Ctx, head: str = "") -> list[str]:
        found = c.t.store.scoped_reviews(c.staff, LIST_LIMIT + 1)
        scope = SCOPE.get(c.staff.role, "")
        lines = [head] if head else []
        if not found:
            c.show(None)
            return ["\n".join([*lines, NONE_OPEN.format(scope=scope)])]
        shown = found[:LIST_LIMIT]
        count = f"{LIST_LIMIT}+" if len(found) > LIST_LIMIT else str(len(found))
        lines.append(HEAD.format(scope=scope, count=count))
        lines += [self._line(n, r) for n, r in enumerate(shown, 1)]
        if len(found) > LIST_LIMIT:
            lines.append(MORE.format(limit=LIST_LIMIT))
        lines.append(FOOT.format(categories="、".join(REVIEW_CATEGORIES)))
        items = tuple(Item(ItemKind.REVIEW, r.id) for r in shown)
        c.show(Listing(ListKind.REVIEWS, items, len(items)))
        return ["\n".join(lines)]

    def _line(self, n: int, r: AidReview) -> str:
        return LINE.format(
            n=n,
            student=student_label(r.student_name, r.class_name),
            origin=REPORTED_ORIGIN if r.reported else VISIT_ORIGIN,
            reporter=r.reporter_name,
            note=_clip(r.note) or "无",
        )

    def _pick(self, c: Ctx, n: int) -> tuple[int | None, list[str]]:
        listing = c.conv.listing
        if listing is None or listing.kind is not ListKind.REVIEWS:
            return None, self.pending(c, NO_LIST)
        item = listing.item(n)
        if item is None or item.kind is not ItemKind.REVIEW:
            return None, self.pending(c, NO_ITEM.format(n=n))
        return item.id, []

    def approve(self, c: Ctx, n: int | None, category: str) -> list[str]:
        choices = "、".join(REVIEW_CATEGORIES)
        if n is None or not category:
            return [APPROVE_HOW.format(categories=choices)]
        if category not in REVIEW_CATEGORIES:
            return [BAD_CATEGORY.format(category=_clip(category, 20), categories=choices)]
        review_id, refusal = self._pick(c, n)
        if review_id is None:
            return refusal
        decided = c.t.store.decide_review(c.staff, review_id, category, "", c.t.now)
        if decided is None:
            return self.pending(c, GONE.format(n=n))
        student = student_label(decided.student_name, decided.class_name)
        added = ""
        if decided.reported:
            added = ADDED.format(no=decided.student_no, teacher=decided.reporter_name)
        told = self._tell(c, decided, teacher_message(decided, c.staff.name))
        return [APPROVED.format(student=student, category=category, added=added, told=told)]

    def decline(self, c: Ctx, n: int | None, reason: str) -> list[str]:
        if n is None or not reason:
            return [DECLINE_HOW]
        if len(reason) > MAX_REASON:
            return [REASON_TOO_LONG.format(limit=MAX_REASON, length=len(reason))]
        review_id, refusal = self._pick(c, n)
        if review_id is None:
            return refusal
        decided = c.t.store.decide_review(c.staff, review_id, None, reason, c.t.now)
        if decided is None:
            return self.pending(c, GONE.format(n=n))
        student = student_label(decided.student_name, decided.class_name)
        told = self._tell(c, decided, teacher_message(decided, c.staff.name))
        return [DECLINED.format(student=student, reason=reason, told=told)]

    def _tell(self, c: Ctx, decided: AidReview, body: str) -> str:
        teacher = c.t.store.staff_member(decided.reporter_no)
        key = f"review:{decided.id}"
        told = teacher is not None and self.co.tell(c, teacher, key, "review", body)
        return (TEACHER_TOLD if told else TEACHER_NOT_TOLD).format(teacher=decided.reporter_name)
