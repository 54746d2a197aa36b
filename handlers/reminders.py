"""What the scheduled jobs say: teacher reminders and coordinator / bureau digests.

Pure functions over a `Snapshot`; the job in `bot.jobs` loads it, calls these, and writes the
results to the outbox. Every message gets an idempotency key of recipient, kind and local date, so
running a job twice (or on two instances) sends nothing twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.aid import NeedSupply
from bot.core.channels import DINGTALK_GROUP as GROUP_CHANNEL
from bot.core.types import (
    FollowUpStatus,
    JobGap,
    RosterStaff,
    RosterStudent,
    Snapshot,
    StaffRole,
    TrackedFollowUp,
    followup_step,
)
from handlers import states, texts
from handlers.cadence import Cadence, is_due, last_attempt_unreached, overdue_days, urgency_key
from handlers.render import md, student_label
from handlers.states import Item, ItemKind, Listing, ListKind

REMINDER_LIST_LIMIT = 15
ESCALATION_LIST_LIMIT = 10
NAMES_LIMIT = 10  # children named per need kind in a coordinator's digest
BUREAU_SCHOOLS_LIMIT = 30  # schools listed one by one in the bureau's summary
JOB_GAP_LABELS = {
    "remind": "家访提醒没有发给这些学校的老师",
    "digest": "日报没有发给这些学校的协调员",
}
CHANNEL_LABELS = {"wecom": "企业微信", "dingtalk": "钉钉", "wechat": "微信公众号", "feishu": "飞书"}
OPEN = (FollowUpStatus.OPEN, FollowUpStatus.ESCALATED)


@dataclass(frozen=True, slots=True)
class Outgoing:
    key: str
    channel: str
    recipient: str
    kind: str
    body: str
    listing: dict[str, Any] | None = None  # the numbered list it shows (handlers.states)
    fallbacks: tuple[tuple[str, str], ...] = ()  # where to try next (bot.outbox)


@dataclass(frozen=True, slots=True)
class Plan:
    messages: list[Outgoing]
    unreachable: list[RosterStaff]  # had something to receive, but no usable channel identity


def reach_order(person: RosterStaff, channels: Sequence[str]) -> list[tuple[str, str]]:
    """Every configured channel the person has an identity on, as (channel, user id): the one
    they wrote from last first, then those they never wrote from, in `channels` order."""
    mine = [c for c in channels if c in person.identities]
    never = datetime.min.replace(tzinfo=UTC)
    mine.sort(key=lambda c: person.last_seen.get(c, never), reverse=True)  # stable for ties
    return [(c, person.identities[c]) for c in mine]


def pick_channel(person: RosterStaff, channels: Sequence[str]) -> tuple[str, str] | None:
    """The channel to reach the person on first (see `reach_order`)."""
    order = reach_order(person, channels)
    return order[0] if order else None


class View:
    """Derived facts over one snapshot for one local day."""

    def __init__(self, snap: Snapshot, today: date, tz: ZoneInfo, cadence: Cadence) -> None:
        self.snap, self.today, self.tz, self.cadence = snap, today, tz, cadence
        self.students = {s.id: s for s in snap.students}
        self.due = {s.id: self._due_date(s) for s in snap.students}

    def _local(self, moment: datetime | None) -> date | None:
        return None if moment is None else moment.astimezone(self.tz).date()

    def _due_date(self, s: RosterStudent) -> date | None:
        return self.cadence.due_date(
            s.categories, self._local(s.last_reached), self._local(s.last_unreached)
        )

    def is_due(self, s: RosterStudent) -> bool:
        return is_due(self.due[s.id], self.today)

    def covered(self, s: RosterStudent) -> bool:
        """Reached on a visit within the student's cycle (an unreachable attempt is no visit)."""
        return s.last_reached is not None and not self.is_due(s)

    def label(self, student_id: int) -> str:
        s = self.students[student_id]
        return student_label(s.name, s.class_name)

    def visit_status(self, s: RosterStudent) -> str:
        late = overdue_days(self.due[s.id], self.today)
        if s.last_reached is None and s.last_unreached is None:
            return "从未家访"
        text = f"已逾期{late}天" if late else "今天到期"
        if last_attempt_unreached(s.last_reached, s.last_unreached):
            text = "上次没联系上，" + ("请尽快再联系" if late is not None and late <= 0 else text)
        return text

    def followup_status(self, f: TrackedFollowUp) -> str:
        late = (self.today - f.due_date).days
        text = f"已逾期{late}天" if late > 0 else "今天到期"
        return text + ("（已上报）" if f.status is FollowUpStatus.ESCALATED else "")


# ------------------------------------------------------------------------------------ reminders
def plan_reminders(
    snap: Snapshot, view: View, channels: Sequence[str], kind_labels: Mapping[str, str]
) -> Plan:
    due_by_staff: dict[int, list[RosterStudent]] = defaultdict(list)
    for s in snap.students:
        if view.is_due(s):
            for staff_id in s.staff_ids:
                due_by_staff[staff_id].append(s)
    fu_by_staff: dict[int, list[TrackedFollowUp]] = defaultdict(list)
    for f in snap.followups:
        due = f.due_date <= view.today or f.reassigned_by is not None  # (handed over: at once)
        if f.status in OPEN and due and f.student_id in view.students:
            fu_by_staff[f.owner_staff_id].append(f)
    to_deliver: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for student_id, title in snap.undelivered:
        if student_id in view.students:
            for staff_id in view.students[student_id].staff_ids:
                to_deliver[staff_id].append((student_id, title))
    messages, unreachable = [], []
    for staff_id in sorted(set(due_by_staff) | set(fu_by_staff) | set(to_deliver)):
        person = snap.staff.get(staff_id)
        if person is None:
            continue
        order = reach_order(person, channels)
        if not order:
            unreachable.append(person)
            continue
        body, listing = reminder_text(
            person,
            due_by_staff[staff_id],
            fu_by_staff[staff_id],
            view,
            kind_labels,
            to_deliver[staff_id],
        )
        key = f"reminder:{person.staff_no}:{view.today.isoformat()}"
        (channel, recipient), *rest = order
        messages.append(
            Outgoing(
                key,
                channel,
                recipient,
                "reminder",
                body,
                states.dump_listing(listing),
                tuple(rest),
            )
        )
    return Plan(messages, unreachable)


def reminder_text(
    person: RosterStaff,
    due: list[RosterStudent],
    fus: list[TrackedFollowUp],
    view: View,
    kind_labels: Mapping[str, str],
    to_deliver: Sequence[tuple[int, str]] = (),
) -> tuple[str, Listing]:
    """The reminder, and its numbered items as the list `1` or `完成 N` will refer to once it
    is delivered: the students due first, then the follow-ups, in one numbering; then, not
    numbered, what batch distributions still have to bring to the teacher's students."""
    lines = [f"{person.name}老师，你好！{md(view.today)}的家访提醒："]
    items: list[Item] = []
    if due:
        due = sorted(due, key=lambda s: (urgency_key(view.due[s.id]), s.class_name, s.name))
        shown = due[:REMINDER_LIST_LIMIT]
        lines.append(texts.REMINDER_STUDENTS.format(count=len(due)))
        lines += [
            f"{i}. {view.label(s.id)} · {view.visit_status(s)}"
            for i, s in enumerate(shown, len(items) + 1)
        ]
        items += [Item(ItemKind.STUDENT, s.id) for s in shown]
        if len(due) > REMINDER_LIST_LIMIT:
            lines.append(f"……等共{len(due)}名，回复“家访”查看全部")
    first_followup = len(items) + 1
    if fus:
        shown_fus = fus[:REMINDER_LIST_LIMIT]
        lines.append(texts.REMINDER_FOLLOWUPS.format(count=len(fus)))
        lines += [
            f"{i}. {view.label(f.student_id)} · {kind_labels.get(f.kind, f.kind)}：{f.detail} · "
            f"{view.followup_status(f)}{_handed(f, view)}"
            for i, f in enumerate(shown_fus, len(items) + 1)
        ]
        items += [Item(ItemKind.FOLLOWUP, f.id) for f in shown_fus]
        if len(fus) > REMINDER_LIST_LIMIT:
            lines.append(f"……等共{len(fus)}项，回复“待跟进”查看全部")
    if to_deliver:
        lines += _deliveries(to_deliver, view)
    hints = []
    if due:
        hints.append(texts.REMINDER_PICK)
    if fus:
        hints.append(texts.REMINDER_DONE.format(n=first_followup))
    if hints:
        lines.append("；".join(hints) + "。")
    return "\n".join(lines), Listing(ListKind.REMINDER, tuple(items), len(items))


def _deliveries(to_deliver: Sequence[tuple[int, str]], view: View) -> list[str]:
    by_title: dict[str, list[int]] = defaultdict(list)
    for student_id, title in to_deliver:
        if student_id not in by_title[title]:
            by_title[title].append(student_id)
    lines = ["待送达的发放（送到后请告诉学校资助协调员，在后台登记送达）："]
    for title, ids in by_title.items():
        names = "、".join(view.label(i) for i in ids[:NAMES_LIMIT])
        more = f"等{len(ids)}名" if len(ids) > NAMES_LIMIT else ""
        lines.append(f"· {title}：{names}{more}")
    return lines


def _handed(f: TrackedFollowUp, view: View) -> str:
    """ "（甲协调转交）" for a follow-up handed to the teacher by a colleague."""
    who = view.snap.staff.get(f.reassigned_by) if f.reassigned_by is not None else None
    return f"（{who.name}转交）" if who else ""


# ------------------------------------------------------------------------------------ digests
@dataclass(frozen=True, slots=True)
class SchoolFigures:
    school_id: int
    name: str
    visited: int
    total: int
    by_category: dict[str, tuple[int, int]]
    new_needs: Counter[str]
    open_by_teacher: dict[int, tuple[int, int]]  # staff id -> (open, overdue)
    escalated: list[TrackedFollowUp]
    unreachable: list[RosterStaff]
    # for the coordinator's private digest (#14): who is behind each new need, each teacher's
    # coverage (staff id -> (visited, total)), families whose last attempt did not reach them
    need_students: dict[str, list[int]] = field(default_factory=dict)
    covered_by_teacher: dict[int, tuple[int, int]] = field(default_factory=dict)
    unreached_families: list[int] = field(default_factory=list)

    @property
    def open(self) -> int:
        return sum(o for o, _ in self.open_by_teacher.values())

    @property
    def overdue(self) -> int:
        return sum(d for _, d in self.open_by_teacher.values())

    def line(self) -> SchoolLine:
        return SchoolLine(
            self.school_id,
            self.name,
            self.visited,
            self.total,
            sum(self.new_needs.values()),
            self.open,
            self.overdue,
            len(self.escalated),
        )


@dataclass(frozen=True, slots=True)
class SchoolLine:
    """A school's counts in the bureau's summary: what a digest chunk keeps of each school (as
    a JSON list, `dump`/`load`) for the run's last step, which writes the summary."""

    school_id: int
    name: str
    visited: int
    total: int
    needs: int
    open: int
    overdue: int
    escalated: int

    def dump(self) -> list[int | str]:
        return [
            self.school_id,
            self.name,
            self.visited,
            self.total,
            self.needs,
            self.open,
            self.overdue,
            self.escalated,
        ]

    @classmethod
    def load(cls, row: Sequence[Any]) -> SchoolLine:
        sid, name, *counts = row
        return cls(int(sid), str(name), *(int(n) for n in counts))


def school_figures(
    snap: Snapshot,
    view: View,
    since: datetime,
    channels: Sequence[str],
    unreachable: Iterable[RosterStaff],
) -> dict[int, SchoolFigures]:
    """Coverage, new needs, open and overdue follow-ups, escalations: per school."""
    visited: Counter[int] = Counter()
    total: Counter[int] = Counter()
    by_cat: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    by_teacher: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    unreached: dict[int, list[int]] = defaultdict(list)
    for s in snap.students:
        ok = view.covered(s)
        total[s.school_id] += 1
        visited[s.school_id] += ok
        for staff_id in s.staff_ids:
            by_teacher[s.school_id][staff_id][0] += ok
            by_teacher[s.school_id][staff_id][1] += 1
        if last_attempt_unreached(s.last_reached, s.last_unreached):
            unreached[s.school_id].append(s.id)
        for c in s.categories:
            by_cat[s.school_id][c][0] += ok
            by_cat[s.school_id][c][1] += 1
    needs: dict[int, Counter[str]] = defaultdict(Counter)
    need_students: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    open_by: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    escalated: dict[int, list[TrackedFollowUp]] = defaultdict(list)
    for f in snap.followups:
        student = view.students.get(f.student_id)
        if student is None:
            continue
        school = student.school_id
        if f.created_at >= since:
            needs[school][f.kind] += 1
            if f.student_id not in need_students[school][f.kind]:
                need_students[school][f.kind].append(f.student_id)
        if f.status in OPEN:
            counts = open_by[school][f.owner_staff_id]
            counts[0] += 1
            counts[1] += f.due_date < view.today
        if f.status is FollowUpStatus.ESCALATED:
            escalated[school].append(f)
    lost: dict[int, list[RosterStaff]] = defaultdict(list)
    for person in unreachable:
        if person.school_id is not None:
            lost[person.school_id].append(person)
    return {
        sid: SchoolFigures(
            sid,
            name,
            visited[sid],
            total[sid],
            {c: (v[0], v[1]) for c, v in sorted(by_cat[sid].items())},
            needs[sid],
            {k: (v[0], v[1]) for k, v in open_by[sid].items()},
            escalated[sid],
            lost[sid],
            dict(need_students[sid]),
            {k: (v[0], v[1]) for k, v in by_teacher[sid].items()},
            unreached[sid],
        )
        for sid, name in sorted(snap.schools.items())
        if total[sid] or needs[sid] or open_by[sid]
    }


def _pct(a: int, b: int) -> str:
    return f"{a * 100 // b}%" if b else "-"


def _needs_text(needs: Counter[str], kind_labels: Mapping[str, str]) -> str:
    if not needs:
        return "无"
    order = list(kind_labels)
    ranked = sorted(needs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    return "，".join(f"{kind_labels.get(k, k)} {n}" for k, n in ranked)


def school_digest(
    fig: SchoolFigures,
    snap: Snapshot,
    view: View,
    since: datetime,
    kind_labels: Mapping[str, str],
    escalate_after_days: int,
    supply: Sequence[NeedSupply] = (),
) -> str:
    lines = [f"【家访日报】{fig.name} {md(view.today)}"]
    lines.append(f"家访覆盖：已访 {fig.visited}/{fig.total}（{_pct(fig.visited, fig.total)}）")
    if fig.by_category:
        lines.append(
            "按资助类别：" + " · ".join(f"{c} {v}/{t}" for c, (v, t) in fig.by_category.items())
        )
    lines.append(
        f"新发现需求（{md(since.astimezone(view.tz).date())}以来）："
        + _needs_text(fig.new_needs, kind_labels)
    )
    for kind, ids in fig.need_students.items():  # the children behind each count
        names = "、".join(view.label(i) for i in ids[:NAMES_LIMIT])
        more = f"等{len(ids)}名" if len(ids) > NAMES_LIMIT else ""
        lines.append(f"· {kind_labels.get(kind, kind)}：{names}{more}")
    lines.append(f"待跟进 {fig.open} 项，其中逾期 {fig.overdue} 项。" if fig.open else "待跟进：无")
    if supply:
        lines.append("物资需求与发放：")
        lines += [f"· {s.line()}" for s in supply]
    lines.append("各位老师：")
    teachers = set(fig.covered_by_teacher) | set(fig.open_by_teacher)
    for staff_id in sorted(
        teachers,
        key=lambda k: (
            -fig.open_by_teacher.get(k, (0, 0))[1],
            -fig.open_by_teacher.get(k, (0, 0))[0],
            k,
        ),
    ):
        person = snap.staff.get(staff_id)
        who = f"{person.name}（{person.staff_no}）" if person else f"#{staff_id}"
        v, t = fig.covered_by_teacher.get(staff_id, (0, 0))
        n_open, n_late = fig.open_by_teacher.get(staff_id, (0, 0))
        lines.append(f"· {who}：已访 {v}/{t}，待跟进 {n_open}，逾期 {n_late}")
    if fig.unreached_families:
        ids = fig.unreached_families
        names = "、".join(view.label(i) for i in ids[:NAMES_LIMIT])
        more = f"等{len(ids)}户" if len(ids) > NAMES_LIMIT else ""
        lines.append(f"上次没联系上的家庭：{names}{more}")
    if fig.escalated:
        lines.append(f"已上报（逾期超过{escalate_after_days}个上学日）{len(fig.escalated)} 项：")
        waiting = [f for f in fig.escalated if f.acknowledged_by is None]
        taken = [f for f in fig.escalated if f.acknowledged_by is not None]
        for title, group in (("未确认", waiting), ("已确认", taken)):
            if not group:
                continue
            lines.append(f"{title} {len(group)} 项：")
            for f in group[:ESCALATION_LIST_LIMIT]:
                holder = snap.staff.get(f.holder)
                late = (view.today - f.due_date).days
                climbed = "（已报教育局）" if f.climbed_at and f.acknowledged_by is None else ""
                lines.append(
                    f"· {view.label(f.student_id)} · {kind_labels.get(f.kind, f.kind)} · "
                    f"逾期{late}天 · 负责：{holder.name if holder else '-'}{climbed}"
                )
                if steps := history_line(snap, f.id, view.tz):
                    lines.append(f"  经过：{steps}")
    if fig.unreachable:
        lines.append(
            "收不到提醒的老师（没有可用的聊天账号，可发绑定码让其绑定）："
            + "、".join(f"{p.name}（{p.staff_no}）" for p in fig.unreachable)
        )
    failed = [
        f
        for f in snap.failures
        if (p := snap.staff.get(f.staff_id)) and p.school_id == fig.school_id
    ]
    if failed:
        refused = (
            f"{snap.staff[f.staff_id].name}（{CHANNEL_LABELS.get(f.channel, f.channel)}："
            f"{f.error}）"
            for f in failed
        )
        lines.append("消息发送失败（平台拒收）：" + "、".join(refused))
    moved = [
        r
        for r in snap.fell_back
        if (p := snap.staff.get(r.staff_id)) and p.school_id == fig.school_id
    ]
    if moved:
        lines.append(
            "只能经备用渠道联系到的老师："
            + "、".join(
                f"{snap.staff[r.staff_id].name}（{CHANNEL_LABELS.get(r.first, r.first)}→"
                f"{CHANNEL_LABELS.get(r.channel, r.channel)}）"
                for r in moved
            )
        )
    return "\n".join(lines)


def history_line(snap: Snapshot, followup_id: int, tz: ZoneInfo) -> str:
    """ "3月11日 上报学校 → 3月12日 确认负责 甲协调": the steps, without their notes (free text
    stays out of digests)."""
    parts = []
    for step in snap.steps.get(followup_id, ()):
        day = step.at.astimezone(tz).date()
        person = snap.staff.get(step.staff_id) if step.staff_id is not None else None
        parts.append(followup_step(step.event, day, person.name if person else None))
    return " → ".join(parts)


def bureau_digest(
    lines: Iterable[SchoolLine],
    view: View,
    supply: Sequence[NeedSupply] = (),
    gaps: Sequence[JobGap] = (),
) -> str:
    """The district's (or province's) summary: every school up to `BUREAU_SCHOOLS_LIMIT`,
    beyond that the schools with the lowest coverage; totals; aid; and, for the operators, the
    chunks of today's jobs that failed (`gaps`: the group digest gets none)."""
    figs = sorted(lines, key=lambda f: f.school_id)
    head = f"【家访日报】全区汇总 {md(view.today)}"
    out = [head]
    shown = figs
    if len(figs) > BUREAU_SCHOOLS_LIMIT:
        shown = sorted(figs, key=lambda f: (f.visited / f.total if f.total else 1.0, f.school_id))
        shown = shown[:BUREAU_SCHOOLS_LIMIT]
        out.append(f"共 {len(figs)} 所学校，家访覆盖率最低的 {len(shown)} 所：")
    for f in shown:
        out.append(
            f"· {f.name}：已访 {f.visited}/{f.total}，新需求 {f.needs}，"
            f"待跟进 {f.open}（逾期 {f.overdue}），上报 {f.escalated}"
        )
    visited, total = sum(f.visited for f in figs), sum(f.total for f in figs)
    out.append(
        f"合计：已访 {visited}/{total}（{_pct(visited, total)}），"
        f"新需求 {sum(f.needs for f in figs)}，"
        f"待跟进 {sum(f.open for f in figs)}（逾期 {sum(f.overdue for f in figs)}），"
        f"上报 {sum(f.escalated for f in figs)}"
    )
    if supply:
        out.append("全区物资需求与发放（库存含教育局统筹）：")
        out += [f"· {s.line()}" for s in supply]
    if gaps:
        out.append("今天的定时任务有部分没有完成（已写入日志，请运维人员处理）：")
        for gap in gaps:
            names = "、".join(gap.names)
            more = f"等{gap.schools}所学校" if gap.schools > len(gap.names) else ""
            out.append(f"· {JOB_GAP_LABELS.get(gap.job, gap.job)}：{names}{more}")
    return "\n".join(out)


def unreachable_teachers(snap: Snapshot, person_channels: Sequence[str]) -> list[RosterStaff]:
    """Teachers of a student who have no identity on any channel a person is reached on."""
    teachers = {sid for s in snap.students for sid in s.staff_ids}
    return [
        p
        for sid in sorted(teachers)
        if (p := snap.staff.get(sid)) and pick_channel(p, person_channels) is None
    ]


def plan_school_digests(
    snap: Snapshot,
    view: View,
    since: datetime,
    channels: Sequence[str],
    person_channels: Sequence[str],
    kind_labels: Mapping[str, str],
    escalate_after_days: int,
    supply: Mapping[int, Sequence[NeedSupply]] | None = None,
) -> tuple[Plan, list[SchoolLine]]:
    """One digest per coordinator of the snapshot's schools, and each school's line for the
    bureau's summary (`plan_bureau_digests`, once every school's line is in).

    `channels`: every configured channel, in order of preference; `person_channels`: those that
    reach one person (the group robot reaches nobody in particular). `supply`: need against
    supply of aid items by school, for the digests.
    """
    supply = supply or {}
    unreachable_staff = unreachable_teachers(snap, person_channels)
    figures = school_figures(snap, view, since, channels, unreachable_staff)
    day = view.today.isoformat()
    messages: list[Outgoing] = []
    unreachable: list[RosterStaff] = []
    school_texts = {
        sid: school_digest(
            fig, snap, view, since, kind_labels, escalate_after_days, supply.get(sid, ())
        )
        for sid, fig in figures.items()
    }
    for person in snap.staff.values():
        if person.role is StaffRole.COORDINATOR and person.school_id in school_texts:
            body = school_texts[person.school_id]
            _address(person, channels, "digest", body, day, messages, unreachable)
    return Plan(messages, unreachable), [f.line() for f in figures.values()]


def _address(
    person: RosterStaff,
    channels: Sequence[str],
    kind: str,
    body: str,
    day: str,
    messages: list[Outgoing],
    unreachable: list[RosterStaff],
) -> None:
    """The person's `kind` message of `day` on their first channel (the rest as fallbacks),
    or the person among the unreachable."""
    order = reach_order(person, channels)
    if not order:
        unreachable.append(person)
        return
    (channel, recipient), *rest = order
    key = f"{kind}:{person.staff_no}:{day}"
    messages.append(Outgoing(key, channel, recipient, kind, body, fallbacks=tuple(rest)))


def plan_bureau_digests(
    bureau: Iterable[RosterStaff],
    lines: Sequence[SchoolLine],
    view: View,
    channels: Sequence[str],
    supply: Sequence[NeedSupply] = (),
    gaps: Sequence[JobGap] = (),
) -> Plan:
    """One summary per bureau member, with the district's aid figures (`supply`) and the day's
    failed job chunks (`gaps`); one to the group robot with counts only."""
    day = view.today.isoformat()
    text = bureau_digest(lines, view, supply, gaps)
    messages: list[Outgoing] = []
    unreachable: list[RosterStaff] = []
    for person in bureau:
        if person.role is StaffRole.BUREAU:
            _address(person, channels, "bureau_digest", text, day, messages, unreachable)
    if GROUP_CHANNEL in channels:
        # A group chat is read by everyone in it: counts per school only, never a child's
        # name, a need's detail or a teacher's name (those go to each coordinator privately).
        # (nor the kinds of need: the aid figures stay in the bureau's own digest)
        group_text = bureau_digest(lines, view)
        messages.append(
            Outgoing(f"digest:group:{day}", GROUP_CHANNEL, "default", "digest", group_text)
        )
    return Plan(messages, unreachable)
