"""Coordinators and bureau staff in chat (#14): 逾期, 上报, 确认 N, 完成 N, 转交 N 工号, 催办 工号.

A coordinator acts on their school's follow-ups, a bureau member on every school's; a teacher
who sends one of these words is told it is for coordinators. Numbers refer to the last numbered
list the person was shown (an escalation message, 上报 or 逾期: stored with their session). A
number whatever list no longer matches (done meanwhile, taken by a colleague, moved to another
school) is refused and the list shown again, fresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from bot.core.engine import Turn
from bot.core.ports import Store
from bot.core.types import (
    FollowUpListing,
    FollowUpStatus,
    OutboxMessage,
    RosterStaff,
    ScopedFollowUp,
    Staff,
    StaffRole,
    StudentListing,
)
from handlers import texts
from handlers.reminders import pick_channel, reach_order
from handlers.render import followup_line, md, student_label, student_lines
from handlers.states import (
    Conversation,
    Item,
    ItemKind,
    LastAction,
    Listing,
    ListKind,
    dump_listing,
)

LIST_LIMIT = 30
MAX_NOTE = 500

FOR_COORDINATORS = "“{word}”是学校资助协调员和教育局用的指令。老师可以回复“待跟进”“进度”。"
HELP = (
    "协调员和教育局可以随时发送这些指令：\n"
    "概况 — 近一个周期的家访覆盖、需求和跟进（协调员按班级，教育局按学校）\n"
    "未访 — 近一个周期未访的学生，按班主任列出\n"
    "逾期 — 逾期未办的跟进（带序号）\n"
    "上报 — 已上报的跟进，谁已确认负责\n"
    "确认 N 备注 — 确认由你负责第 N 项上报，例如：确认 1 已联系家长（会告知负责老师）\n"
    "完成 N 备注 — 把第 N 项跟进标记为完成，例如：完成 1 平板已送到\n"
    "转交 N 工号 — 把第 N 项交给同校的另一位老师，例如：转交 1 T002（会通知对方）\n"
    "催办 工号 — 现在提醒这位老师（每位老师每天一次），例如：催办 T001\n"
    "库存 — 各物资的库存和它能解决的待发放需求（带序号，最急的在前）\n"
    "发放 N — 把一件物资发给第 N 项需求（当面交付；“发放 N 快递 单号”“发放 N 上门”），"
    "会通知负责老师\n"
    "入库 物品 数量 — 登记到货，例如：入库 平板电脑 17\n"
    "送达 N — 登记第 N 项发放的物资已送到\n"
    "待认定 — 等待资助认定的学生（家访发现的新困难、老师上报的新增学生）\n"
    "认定 N 类别 — 认定第 N 名，例如：认定 1 低保（会通知上报的老师）\n"
    "不认定 N 原因 — 不予认定，例如：不认定 1 家庭收入已恢复\n"
    "绑定码 工号 — 生成一次性绑定码，老师发“绑定 工号 绑定码”绑定聊天账号，例如：绑定码 T002\n"
    "后台 — 家访后台登录链接\n"
    "帮助 — 显示本说明"
)


def help_for(role: StaffRole) -> str:
    """`帮助` and the help after a greeting or a binding: each role its own commands."""
    return HELP if role in (StaffRole.COORDINATOR, StaffRole.BUREAU) else texts.HELP


SCOPE = {StaffRole.COORDINATOR: "本校", StaffRole.BUREAU: "全区"}
ESCALATED_HEAD = "{scope}已上报的跟进{count}项："
OVERDUE_HEAD = "{scope}逾期未办的跟进{count}项："
NONE_ESCALATED = "{scope}目前没有已上报的跟进。"
NONE_OVERDUE = "{scope}目前没有逾期的跟进。"
LINE = "{n}. {student} · {kind}：{detail} · 逾期{late}天 · 负责：{holder}{state}"
MORE = "……等共{count}项，只列出前{limit}项。"
FOOT = "回复“确认 序号 备注”确认由你负责；“完成 序号 备注”办结；“转交 序号 工号”转给同校老师。"
NO_LIST = "请先看列表，再用序号："
NO_ITEM = "当前列表里没有第{n}项。列表已更新："
GONE = "第{n}项已不在你负责的范围内（可能已转到其他学校）。列表已更新："
ALREADY_DONE = "第{n}项已经完成了。列表已更新："
NOT_ESCALATED = "第{n}项还没有上报，不需要确认；办完请回复“完成 {n} 备注”。"
TAKEN = "第{n}项已由{holder}确认负责，不用再确认。"
ACKED = "已确认由你负责第{n}项：{student} · {kind}：{detail}。{told}"
TEACHER_TOLD = "已告知负责老师{owner}。"
TEACHER_NOT_TOLD = "负责老师{owner}没有可用的聊天账号，未能通知。"
ACK_MESSAGE = "{holder}已确认负责你的跟进：{student} · {kind}：{detail}。{note}"
NOTE = "备注：{note}"
NOTE_NEEDED = "请写上备注，例如：完成 {n} 平板已送到。"
NOTE_TOO_LONG = "备注最多{limit}字（现在{length}字），请缩短后再发。"
DONE = "已完成第{n}项：{student} · {kind}：{detail}。备注：{note}"
REASSIGN_HOW = "请写上序号和工号，例如：转交 1 T002。"
NO_SUCH_STAFF = "没有工号为{no}的在职老师，请核对工号。"
OTHER_SCHOOL = "{name}（{no}）不是这名学生学校的老师；只能转交给同校老师。"
SAME_OWNER = "第{n}项本来就由{name}负责。"
REASSIGNED = "已把第{n}项转交给{name}（{no}）：{student} · {kind}。{told}"
NEW_OWNER_TOLD = "已通知对方。"
NEW_OWNER_NOT_TOLD = "对方没有可用的聊天账号，未能通知，请另行告知。"
REASSIGN_MESSAGE = (
    "{who}把一项跟进转交给你：{student} · {kind}：{detail}（{due}前）。"
    "回复“待跟进”查看，办完回复“完成 序号 备注”。"
)
NUDGE_HOW = "请写上老师的工号，例如：催办 T001。"
NUDGE_OTHER_SCHOOL = "{name}（{no}）不是本校老师。"
NUDGE_TWICE = "今天已经催办过{name}（{no}）了，每位老师每天一次。"
NUDGE_UNREACHABLE = (
    "{name}（{no}）没有可用的聊天账号，无法催办。可发送“绑定码 {no}”生成绑定码，请其绑定。"
)
NUDGED = "已催办{name}（{no}）：已访 {visited}/{total}，待跟进 {open} 项（逾期 {overdue} 项）。"
NUDGE_MESSAGE = (
    "【催办】{who}提醒你：你名下的学生已访 {visited}/{total}，待跟进 {open} 项"
    "（逾期 {overdue} 项）。"
)
NUDGE_LIMIT = 15  # as many students, and follow-ups, as a reminder lists
# the teacher's due students (most urgent first) and the function that gives each one's due date
DueList = Callable[
    [Store, int, date], tuple[list[StudentListing], Callable[[StudentListing], date | None]]
]


OVERVIEW_HEAD = "{scope}家访概况（近{days}天）："
OVERVIEW_COVERAGE = "已访 {visited}/{total}（{pct}）"
OVERVIEW_GROUPS = "按{by}：{groups}"
OVERVIEW_NEEDS = "需求（近{days}天新发现 / 仍未办结）：{needs}"
OVERVIEW_FOLLOWUPS = "逾期跟进 {overdue} 项；已上报 {escalated} 项，其中未确认 {unacked} 项。"
OVERVIEW_FOOT = "回复“未访”“逾期”“上报”查看明细。"
UNVISITED_HEAD = "{scope}近{days}天未访的学生{count}名（按班主任，从未家访和最久未访在前）："
UNVISITED_NONE = "{scope}近{days}天的学生都已家访。"
UNVISITED_LINE = "{teacher}（{no}）{count}名：{students}"
UNVISITED_NEVER = "从未家访"
UNVISITED_MAX = 500
NAMES_PER_TEACHER = 8


class Ctx(Protocol):
    """The turn as `handlers.checkin` holds it."""

    t: Turn
    staff: Staff
    conv: Conversation

    def show(self, listing: Listing | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Coordination:
    kinds: Mapping[str, str]
    tz: ZoneInfo
    channels: tuple[str, ...]  # the channels that reach a person, in order of preference
    quiet: Callable[[datetime], datetime | None]
    cycle_days: int = 14

    # ------------------------------------------------------------------ lists
    def today(self, c: Ctx) -> date:
        return c.t.now.astimezone(self.tz).date()

    def escalated(self, c: Ctx) -> list[str]:
        return [self._list(c, escalated_only=True)]

    def overdue(self, c: Ctx) -> list[str]:
        return [self._list(c, escalated_only=False)]

    def _list(self, c: Ctx, escalated_only: bool, head: str = "") -> str:
        today = self.today(c)
        store = c.t.store
        found = store.scoped_followups(c.staff, escalated_only, today, LIST_LIMIT)
        scope = SCOPE.get(c.staff.role, "")
        if not found:
            c.show(None)
            empty = NONE_ESCALATED if escalated_only else NONE_OVERDUE
            return (head + "\n" if head else "") + empty.format(scope=scope)
        shown, total = found, len(found)
        if total == LIST_LIMIT:  # (maybe more: count them)
            overdue, escalated, _ = store.scoped_counts(c.staff, today)
            total = escalated if escalated_only else overdue
        title = ESCALATED_HEAD if escalated_only else OVERDUE_HEAD
        lines = [head] if head else []
        lines.append(title.format(scope=scope, count=total))
        lines += [self._line(n, f, today) for n, f in enumerate(shown, 1)]
        if total > LIST_LIMIT:
            lines.append(MORE.format(count=total, limit=LIST_LIMIT))
        lines.append(FOOT)
        items = tuple(Item(ItemKind.FOLLOWUP, f.id) for f in shown)
        c.show(Listing(ListKind.ESCALATIONS, items, len(items)))
        return "\n".join(lines)

    def _line(self, n: int, f: ScopedFollowUp, today: date) -> str:
        if f.status is FollowUpStatus.ESCALATED:
            state = f" · 已确认（{f.holder_name}）" if f.holder_name else " · 未确认"
            state += " · 已报教育局" if f.climbed and not f.holder_name else ""
        else:
            state = ""
        return LINE.format(
            n=n,
            student=student_label(f.student_name, f.class_name),
            kind=self.kinds.get(f.kind, f.kind),
            detail=f.detail.rstrip("。"),
            late=max((today - f.due_date).days, 0),
            holder=f.holder_name or f.owner_name,
            state=state,
        )

    def _again(self, c: Ctx, head: str) -> list[str]:
        """Refuse a number, showing the list it should have come from, fresh."""
        return [self._list(c, escalated_only=True, head=head)]

    def _pick(self, c: Ctx, n: int) -> tuple[ScopedFollowUp | None, list[str]]:
        """The follow-up number `n` of the current list means, or the refusal to give."""
        listing = c.conv.listing
        if listing is None or listing.kind not in (ListKind.ESCALATIONS, ListKind.FOLLOWUPS):
            return None, self._again(c, NO_LIST)
        item = listing.item(n)
        if item is None or item.kind is not ItemKind.FOLLOWUP:
            return None, self._again(c, NO_ITEM.format(n=n))
        f = c.t.store.scoped_followup(c.staff, item.id)
        if f is None:
            return None, self._again(c, GONE.format(n=n))
        if f.status is FollowUpStatus.DONE:
            return None, self._again(c, ALREADY_DONE.format(n=n))
        return f, []

    def overview(self, c: Ctx) -> list[str]:
        since = c.t.now - timedelta(days=self.cycle_days)
        store, scope = c.t.store, SCOPE.get(c.staff.role, "")
        groups = store.scoped_coverage(c.staff, since)
        visited, total = sum(g.visited for g in groups), sum(g.total for g in groups)
        overdue, escalated, unacked = store.scoped_counts(c.staff, self.today(c))
        needs = store.scoped_needs(c.staff, since)
        pct = f"{visited * 100 // total}%" if total else "-"
        lines = [
            OVERVIEW_HEAD.format(scope=scope, days=self.cycle_days),
            OVERVIEW_COVERAGE.format(visited=visited, total=total, pct=pct),
        ]
        if groups:
            by = "学校" if c.staff.role is StaffRole.BUREAU else "班级"
            text = " · ".join(f"{g.label} {g.visited}/{g.total}" for g in groups)
            lines.append(OVERVIEW_GROUPS.format(by=by, groups=text))
        need_text = "，".join(
            f"{self.kinds.get(n.kind, n.kind)} {n.found}/{n.still_open}" for n in needs
        )
        lines.append(OVERVIEW_NEEDS.format(days=self.cycle_days, needs=need_text or "无"))
        lines.append(
            OVERVIEW_FOLLOWUPS.format(overdue=overdue, escalated=escalated, unacked=unacked)
        )
        lines.append(OVERVIEW_FOOT)
        return ["\n".join(lines)]

    def unvisited(self, c: Ctx) -> list[str]:
        since = c.t.now - timedelta(days=self.cycle_days)
        scope = SCOPE.get(c.staff.role, "")
        found = c.t.store.scoped_unvisited(c.staff, since, UNVISITED_MAX)
        if not found:
            return [UNVISITED_NONE.format(scope=scope, days=self.cycle_days)]
        by_teacher: dict[tuple[str, str], list[str]] = {}
        for u in found:
            when = md(u.last_reached.astimezone(self.tz).date()) if u.last_reached else None
            label = f"{u.student_name}（{u.class_name}，{when or UNVISITED_NEVER}）"
            by_teacher.setdefault((u.teacher_name, u.teacher_no), []).append(label)
        count = len(found)
        lines = [
            UNVISITED_HEAD.format(
                scope=scope,
                days=self.cycle_days,
                count=f"{count}+" if count == UNVISITED_MAX else count,
            )
        ]
        for (name, no), students in by_teacher.items():
            shown = "、".join(students[:NAMES_PER_TEACHER])
            if len(students) > NAMES_PER_TEACHER:
                shown += f"等{len(students)}名"
            lines.append(
                UNVISITED_LINE.format(teacher=name, no=no, count=len(students), students=shown)
            )
        return ["\n".join(lines)]

    # ------------------------------------------------------------------ acting on one
    def acknowledge(self, c: Ctx, n: int, note: str) -> list[str]:
        if len(note) > MAX_NOTE:
            return [NOTE_TOO_LONG.format(limit=MAX_NOTE, length=len(note))]
        f, refusal = self._pick(c, n)
        if f is None:
            return refusal
        if f.status is not FollowUpStatus.ESCALATED:
            return [NOT_ESCALATED.format(n=n)]
        store = c.t.store
        if not store.acknowledge_followup(c.staff, f.id, note, c.t.now):
            fresh = store.scoped_followup(c.staff, f.id)
            if fresh is not None and fresh.holder_name:
                return [TAKEN.format(n=n, holder=fresh.holder_name)]
            return self._again(c, GONE.format(n=n))
        body = ACK_MESSAGE.format(
            holder=c.staff.name,
            student=student_label(f.student_name, f.class_name),
            kind=self.kinds.get(f.kind, f.kind),
            detail=f.detail.rstrip("。"),
            note=NOTE.format(note=note) if note else "",
        )
        owner = store.staff_member(f.owner_no)
        told = owner is not None and self._tell_person(c, owner, f"ack:{f.id}", "ack", body)
        return [
            ACKED.format(
                n=n,
                student=student_label(f.student_name, f.class_name),
                kind=self.kinds.get(f.kind, f.kind),
                detail=f.detail.rstrip("。"),
                told=(TEACHER_TOLD if told else TEACHER_NOT_TOLD).format(owner=f.owner_name),
            )
        ]

    def close(self, c: Ctx, n: int, note: str) -> list[str]:
        if not note:
            return [NOTE_NEEDED.format(n=n)]
        if len(note) > MAX_NOTE:
            return [NOTE_TOO_LONG.format(limit=MAX_NOTE, length=len(note))]
        f, refusal = self._pick(c, n)
        if f is None:
            return refusal
        closed: FollowUpListing | None = c.t.store.close_scoped_followup(
            c.staff, f.id, note, c.t.now
        )
        if closed is None:
            return self._again(c, ALREADY_DONE.format(n=n))
        c.conv = replace(c.conv, last=LastAction(ItemKind.FOLLOWUP, f.id, c.t.now))  # 撤销
        return [
            DONE.format(
                n=n,
                student=student_label(closed.student_name, closed.class_name),
                kind=self.kinds.get(closed.kind, closed.kind),
                detail=closed.detail.rstrip("。"),
                note=note,
            )
        ]

    def reassign(self, c: Ctx, n: int | None, staff_no: str) -> list[str]:
        if n is None or not staff_no:
            return [REASSIGN_HOW]
        f, refusal = self._pick(c, n)
        if f is None:
            return refusal
        store = c.t.store
        to = store.staff_member(staff_no)
        if to is None:
            return [NO_SUCH_STAFF.format(no=staff_no)]
        if to.school_id != f.school_id:
            return [OTHER_SCHOOL.format(name=to.name, no=to.staff_no)]
        if to.id == f.owner_id:
            return [SAME_OWNER.format(n=n, name=to.name)]
        if not store.reassign_followup(c.staff, f.id, to.id, c.t.now):
            return self._again(c, GONE.format(n=n))
        kind = self.kinds.get(f.kind, f.kind)
        student = student_label(f.student_name, f.class_name)
        body = REASSIGN_MESSAGE.format(
            who=c.staff.name, student=student, kind=kind, detail=f.detail, due=md(f.due_date)
        )
        key = f"reassign:{f.id}:{to.staff_no}:{c.t.now.isoformat()}"
        told = self._tell_person(c, to, key, "reassign", body)
        return [
            REASSIGNED.format(
                n=n,
                name=to.name,
                no=to.staff_no,
                student=student,
                kind=kind,
                told=NEW_OWNER_TOLD if told else NEW_OWNER_NOT_TOLD,
            )
        ]

    def nudge(self, c: Ctx, staff_no: str, due: DueList | None = None) -> list[str]:
        """Send that teacher their reminder now: the students due and the open follow-ups,
        numbered as a reminder is, so that replying 1 or 完成 N works on it once delivered.
        `due` gives the teacher's due students, most urgent first, and each one's due date."""
        if not staff_no:
            return [NUDGE_HOW]
        store = c.t.store
        to = store.staff_member(staff_no)
        if to is None:
            return [NO_SUCH_STAFF.format(no=staff_no)]
        if c.staff.role is not StaffRole.BUREAU and to.school_id != c.staff.school_id:
            return [NUDGE_OTHER_SCHOOL.format(name=to.name, no=to.staff_no)]
        if pick_channel(to, self.channels) is None:
            return [NUDGE_UNREACHABLE.format(name=to.name, no=to.staff_no)]
        today = self.today(c)
        cov = store.coverage(to.id, c.t.now - timedelta(days=self.cycle_days), today)
        figures = {
            "visited": cov.visited,
            "total": cov.total,
            "open": cov.open_followups,
            "overdue": cov.overdue_followups,
        }
        body = NUDGE_MESSAGE.format(who=c.staff.name, **figures)
        listing = None
        if due is not None:
            body, listing = self._nudge_list(c, to, body, due, today)
        # One a teacher a day, whoever sends it: the outbox key says so.
        key = f"nudge:{to.staff_no}:{today.isoformat()}"
        if not self._tell_person(c, to, key, "nudge", body, listing):
            return [NUDGE_TWICE.format(name=to.name, no=to.staff_no)]
        return [NUDGED.format(name=to.name, no=to.staff_no, **figures)]

    def _nudge_list(
        self, c: Ctx, to: RosterStaff, head: str, due: DueList, today: date
    ) -> tuple[str, Listing | None]:
        students, due_date = due(c.t.store, to.id, today)
        followups = c.t.store.open_followups(to.id)
        shown = students[:NUDGE_LIMIT]
        lines = [head]
        if shown:
            lines.append(texts.REMINDER_STUDENTS.format(count=len(students)))
            lines += student_lines(shown, 1, today, self.tz, due_date)
        first_followup = len(shown) + 1
        shown_fus = followups[:NUDGE_LIMIT]
        if shown_fus:
            lines.append(texts.REMINDER_FOLLOWUPS.format(count=len(followups)))
            lines += [
                followup_line(n, f, self.kinds, today)
                for n, f in enumerate(shown_fus, first_followup)
            ]
        if not shown and not shown_fus:
            return head, None
        hints = [texts.REMINDER_PICK] if shown else []
        hints += [texts.REMINDER_DONE.format(n=first_followup)] if shown_fus else []
        lines.append("；".join(hints) + "。")
        items = (
            *(Item(ItemKind.STUDENT, s.id) for s in shown),
            *(Item(ItemKind.FOLLOWUP, f.id) for f in shown_fus),
        )
        return "\n".join(lines), Listing(ListKind.REMINDER, items, len(items))

    # ------------------------------------------------------------------ telling people
    def tell(self, c: Ctx, to: RosterStaff, key: str, kind: str, body: str) -> bool:
        """Queue `body` for `to` (see `_tell_person`), for the other coordinators' words."""
        return self._tell_person(c, to, key, kind, body)

    def _tell_person(
        self,
        c: Ctx,
        to: RosterStaff,
        key: str,
        kind: str,
        body: str,
        listing: Listing | None = None,
    ) -> bool:
        """Queue `body` for `to` outside quiet hours; False when they cannot be reached or the
        key was there already."""
        order = reach_order(to, self.channels)
        if not order:
            return False
        not_before = self.quiet(c.t.now) or c.t.now
        (channel, recipient), *rest = order
        message = OutboxMessage(
            key,
            channel,
            recipient,
            kind,
            body,
            dump_listing(listing) if listing is not None else None,
            tuple(rest),
        )
        return c.t.store.queue_message(message, not_before, c.t.now)
