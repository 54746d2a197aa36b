"""The escalation ladder's messages (#14): who is told of which escalated follow-up, and how.

A follow-up overdue by more than `HOMEVISIT_ESCALATE_AFTER_DAYS` school days is escalated (by
`storage.ladder`); every coordinator of its school is told once, in one message per run listing
what is new to them, numbered so that `确认 N` refers to it. Unacknowledged for
`HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS` school days, it climbs: every bureau member is told the
same way. Who was told is stored as a `notified` event, so a later run tells nobody twice.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from bot.core.types import FollowUpStatus, RosterStaff, Snapshot, StaffRole, TrackedFollowUp
from handlers import states
from handlers.reminders import Outgoing, View, reach_order
from handlers.states import Item, ItemKind, Listing, ListKind

SCHOOL_HEAD = "【跟进上报】以下跟进已逾期超过{days}个上学日，请确认由谁负责："
BUREAU_HEAD = "【跟进上报·教育局】以下跟进上报学校后{days}个上学日仍无人确认，已上报教育局："
LINE = "{n}. {student}{school} · {kind}：{detail} · 逾期{late}天 · 负责老师：{owner}"
FOOT = "回复“确认 序号 备注”表示由你负责，例如：确认 1 已联系家长；“转交 序号 工号”转给同校老师。"
MORE = "……等共{count}项，回复“上报”查看全部。"
LIST_LIMIT = 20  # lines in one message; the rest are counted (and all are in 上报)


@dataclass(frozen=True, slots=True)
class Notices:
    messages: list[Outgoing]
    told: list[tuple[int, int]]  # (follow-up, person) pairs these messages tell
    unreachable: list[RosterStaff]


def plan_escalations(
    snap: Snapshot,
    view: View,
    already: Set[tuple[int, int]],
    channels: Sequence[str],
    kind_labels: Mapping[str, str],
    after_days: int,
    bureau_after_days: int,
    tell: Set[StaffRole] = frozenset({StaffRole.COORDINATOR, StaffRole.BUREAU}),
    totals: Mapping[int, int] | None = None,
) -> Notices:
    """One message to each coordinator (their school's escalations) and bureau member (every
    climbed one) who has not been told of them yet; only to the roles in `tell` (a job run
    chunk by chunk tells coordinators school by school and the bureau once, at the end).
    `totals`: how many each person has to be told of, when the snapshot holds only the first
    few (the bureau at the end of a run; the caller records the rest as told)."""
    coordinators: dict[int, list[RosterStaff]] = defaultdict(list)
    bureau: list[RosterStaff] = []
    for person in snap.staff.values():
        if person.role not in tell:
            continue
        if person.role is StaffRole.COORDINATOR and person.school_id is not None:
            coordinators[person.school_id].append(person)
        elif person.role is StaffRole.BUREAU:
            bureau.append(person)
    todo: dict[int, list[TrackedFollowUp]] = defaultdict(list)
    for f in snap.followups:
        student = view.students.get(f.student_id)
        escalated = f.status is FollowUpStatus.ESCALATED and f.escalated_at is not None
        if not escalated or f.acknowledged_by is not None or student is None:
            continue
        people = list(coordinators.get(student.school_id, ()))
        if f.climbed_at is not None:
            people += bureau
        for person in people:
            if (f.id, person.id) not in already:
                todo[person.id].append(f)
    messages, told, unreachable = [], [], []
    for staff_id, fus in sorted(todo.items()):
        person = snap.staff[staff_id]
        order = reach_order(person, channels)  # the first, then the fallbacks (bot.outbox)
        if not order:
            unreachable.append(person)
            continue
        climbed = person.role is StaffRole.BUREAU
        head = (BUREAU_HEAD if climbed else SCHOOL_HEAD).format(
            days=bureau_after_days if climbed else after_days
        )
        lines = [head]
        shown = fus[:LIST_LIMIT]
        for n, f in enumerate(shown, 1):
            owner = snap.staff.get(f.owner_staff_id)
            school = snap.schools.get(view.students[f.student_id].school_id, "")
            school = f" · {school}" if climbed else ""  # (a coordinator knows their school)
            lines.append(
                LINE.format(
                    n=n,
                    student=view.label(f.student_id),
                    school=school,
                    kind=kind_labels.get(f.kind, f.kind),
                    detail=f.detail.rstrip("。"),
                    late=(view.today - f.due_date).days,
                    owner=f"{owner.name}（{owner.staff_no}）" if owner else "-",
                )
            )
        count = (totals or {}).get(staff_id, len(fus))  # (counted in the database)
        if count > len(shown):
            lines.append(MORE.format(count=count))
        lines.append(FOOT)
        ids = ",".join(str(f.id) for f in fus)
        digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
        key = f"escalation:{person.staff_no}:{digest}"
        items = tuple(Item(ItemKind.FOLLOWUP, f.id) for f in shown)
        listing = Listing(ListKind.ESCALATIONS, items, len(items))
        messages.append(
            Outgoing(
                key,
                *order[0],
                "escalation",
                "\n".join(lines),
                states.dump_listing(listing),
                tuple(order[1:]),
            )
        )
        told += [(f.id, staff_id) for f in fus]
    return Notices(messages, told, unreachable)
