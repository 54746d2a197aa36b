"""Aid in chat (#15): 库存, 发放 N, 入库 物品 数量 (coordinators and bureau), 送达 N (anyone).

A coordinator works on their school's stock and needs, a bureau member on the pool (教育局统筹)
and every school's needs. `库存` shows each item's stock and then the open needs it can meet,
most urgent first, numbered across items (a list kept with the session like 逾期's); `发放 N`
gives one of that item to need N. A number whose need was allocated or closed meanwhile is
refused and the list shown again, fresh. The teacher is told in the same turn's transaction,
keyed by the allocation: sent once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.core.aid import METHODS, AidItem, OpenNeed
from bot.core.types import StaffRole
from handlers.coordinate import Coordination, Ctx
from handlers.render import student_label
from handlers.states import AID_SLOT, Item, ItemKind, Listing, ListKind

NEEDS_PER_ITEM = 10
NEEDS_COUNTED = 200
MAX_ARRIVAL = 100_000
MAX_TRACKING = 100
HOLDER = {StaffRole.COORDINATOR: "本校", StaffRole.BUREAU: "教育局统筹"}
METHOD_WORDS = {"快递": "courier", "上门": "carrier", "安装": "carrier", "当面": "handed"}

HEAD = "{holder}物资库存与待发放的需求（最急的在前）："
ITEM_LINE = "【{item}】库存 {have}，待发放的需求 {count} 项"
ITEM_NO_NEEDS = "【{item}】库存 {have}（不对应跟进需求，按资助类别统一发放）"
NEED_LINE = "{n}. {student}{school} · {kind}：{detail} · {cats} · 已等{days}天 · 负责：{owner}"
MORE = "……只列出前{limit}项。"
FOOT = (
    "回复“发放 序号”当面交付一件，“发放 序号 快递 单号”快递，“发放 序号 上门”运营商上门安装；"
    "送到后回复“送达 序号”。"
)
NO_CATEGORY = "无资助类别"
NO_ITEMS = "还没有配置物资种类。"
NO_LIST = "请先发送“库存”看待发放的需求，再用序号："
NO_ITEM = "当前列表里没有第{n}项。列表已更新："
GONE = "第{n}项已经发放过、已经办结或已不在你的范围内。列表已更新："
NO_STOCK = "库存不足：{item}现有 {have}，没有发放。请先“入库 {item} 数量”。"
TAKEN = "第{n}项刚刚由别人发放了。列表已更新："
HOW = "请写发放方式：“发放 {n}”当面交付，“发放 {n} 快递 单号”，“发放 {n} 上门”。"
TRACKING_NEEDED = "快递请写上单号，例如：发放 {n} 快递 SF123456。"
TRACKING_TOO_LONG = "快递单号最多{limit}个字。"
ALLOCATED = "已发放第{n}项：{student} · {item}，{how}。{item}还剩 {left}。{told}"
TEACHER_TOLD = "已告知负责老师{owner}。"
TEACHER_NOT_TOLD = "负责老师{owner}没有绑定聊天账号，未能通知，请另行告知。"
ON_ITS_WAY = "【物资】学校为{student}安排了{item}，{how}。下次家访时请问一下是否收到、是否在用。"
ARRIVAL_HOW = "请写物品和数量，例如：入库 平板电脑 17。"
UNKNOWN_ITEM = "没有这种物品：{item}。可以入库的有：{items}。"
BAD_QUANTITY = "数量应为 1 到 {limit} 的整数。"
ARRIVED = "已入库 {item} {n}，{holder}现有 {have}。"
DELIVER_HOW = "请写序号，例如：送达 1（序号来自“待跟进”或“库存”的列表）。"
DELIVER_NO_LIST = "请先发送“待跟进”（协调员：“库存”）看列表，再用“送达 序号”。"
DELIVER_NO_ITEM = "当前列表里没有第{n}项。"
NOTHING_ALLOCATED = "第{n}项还没有发放物品，或不在你负责的范围内。"
DELIVERED_TWICE = "第{n}项的物品已经登记送达了。"
DELIVERED = "已登记第{n}项的{item}送达。下次家访时会问一下是否在用。"


@dataclass(frozen=True, slots=True)
class AidDesk:
    items: tuple[AidItem, ...]
    kinds: Mapping[str, str]
    coordination: Coordination

    def _holder(self, c: Ctx) -> str:
        return HOLDER.get(c.staff.role, "")

    # ------------------------------------------------------------------ 库存
    def stock(self, c: Ctx, head: str = "") -> list[str]:
        if not self.items:
            return [NO_ITEMS]
        store, now = c.t.store, c.t.now
        counts = store.aid_stock(c.staff)
        lines = [head] if head else []
        lines.append(HEAD.format(holder=self._holder(c)))
        listed: list[Item] = []
        for place, item in enumerate(self.items):
            have = counts.get(item.name, 0)
            if not item.meets:
                lines.append(ITEM_NO_NEEDS.format(item=item.name, have=have))
                continue
            needs = store.aid_needs(c.staff, item.meets, now, NEEDS_COUNTED)
            count = f"{len(needs)}+" if len(needs) == NEEDS_COUNTED else str(len(needs))
            lines.append(ITEM_LINE.format(item=item.name, have=have, count=count))
            for need in needs[:NEEDS_PER_ITEM]:
                listed.append(Item(ItemKind.AID_NEED, need.followup_id * AID_SLOT + place))
                lines.append(self._line(c, len(listed), need))
            if len(needs) > NEEDS_PER_ITEM:
                lines.append(MORE.format(limit=NEEDS_PER_ITEM))
        lines.append(FOOT)
        c.show(Listing(ListKind.AID, tuple(listed), len(listed)) if listed else None)
        return ["\n".join(lines)]

    def _line(self, c: Ctx, n: int, need: OpenNeed) -> str:
        bureau = c.staff.role is StaffRole.BUREAU
        return NEED_LINE.format(
            n=n,
            student=student_label(need.student_name, need.class_name),
            school=f"（{need.school}）" if bureau else "",
            kind=self.kinds.get(need.kind, need.kind),
            detail=need.detail.rstrip("。"),
            cats="、".join(need.aid_categories) or NO_CATEGORY,
            days=need.days_open,
            owner=need.owner_name,
        )

    def _picked(self, c: Ctx, n: int) -> tuple[int, AidItem] | None:
        listing = c.conv.listing
        if listing is None or listing.kind is not ListKind.AID:
            return None
        item = listing.item(n)
        if item is None or item.kind is not ItemKind.AID_NEED:
            return None
        followup, place = divmod(item.id, AID_SLOT)
        return (followup, self.items[place]) if place < len(self.items) else None

    # ------------------------------------------------------------------ 发放 N
    def allocate(self, c: Ctx, n: int | None, how: str) -> list[str]:
        if n is None:
            return [HOW.format(n=1)]
        listing = c.conv.listing
        if listing is None or listing.kind is not ListKind.AID:
            return self.stock(c, NO_LIST)
        picked = self._picked(c, n)
        if picked is None:
            return self.stock(c, NO_ITEM.format(n=n))
        words = how.split()
        method = METHOD_WORDS.get(words[0], "") if words else "handed"
        if not method:
            return [HOW.format(n=n)]
        tracking = " ".join(words[1:]) if method == "courier" else ""
        if method == "courier" and not tracking:
            return [TRACKING_NEEDED.format(n=n)]
        if len(tracking) > MAX_TRACKING:
            return [TRACKING_TOO_LONG.format(limit=MAX_TRACKING)]
        followup, item = picked
        store, now = c.t.store, c.t.now
        found = store.aid_needs(c.staff, item.meets, now, 1, followup)
        if not found:
            return self.stock(c, GONE.format(n=n))
        need = found[0]
        taken = store.allocate_aid(c.staff, item.name, followup, method, tracking, now)
        if taken.taken:
            return self.stock(c, TAKEN.format(n=n))
        if not taken.allocation_id:
            return [NO_STOCK.format(item=item.name, have=taken.left)]
        student = student_label(need.student_name, need.class_name)
        way = METHODS[method] + (f"（单号 {tracking}）" if tracking else "")
        body = ON_ITS_WAY.format(student=student, item=item.name, how=way)
        owner = store.staff_member(need.owner_no) if need.owner_no else None
        key = f"aid-allocated:{taken.allocation_id}"
        told = owner is not None and self.coordination.tell(c, owner, key, "aid", body)
        told_text = (TEACHER_TOLD if told else TEACHER_NOT_TOLD).format(owner=need.owner_name)
        return [
            ALLOCATED.format(
                n=n, student=student, item=item.name, how=way, left=taken.left, told=told_text
            )
        ]

    # ------------------------------------------------------------------ 入库 物品 数量
    def arrival(self, c: Ctx, quantity: int | None, name: str) -> list[str]:
        if quantity is None or not name:
            return [ARRIVAL_HOW]
        names = [i.name for i in self.items]
        if name not in names:
            return [UNKNOWN_ITEM.format(item=name[:20], items="、".join(names))]
        if not 1 <= quantity <= MAX_ARRIVAL:
            return [BAD_QUANTITY.format(limit=MAX_ARRIVAL)]
        have = c.t.store.change_aid_stock(c.staff, name, quantity, c.t.now)
        assert have is not None  # (an arrival only adds)
        return [ARRIVED.format(item=name, n=quantity, holder=self._holder(c), have=have)]

    # ------------------------------------------------------------------ 送达 N
    def delivered(self, c: Ctx, n: int | None, lists: Sequence[ListKind]) -> list[str]:
        if n is None:
            return [DELIVER_HOW]
        listing = c.conv.listing
        if listing is None or listing.kind not in lists:
            return [DELIVER_NO_LIST]
        item = listing.item(n)
        if item is None:
            return [DELIVER_NO_ITEM.format(n=n)]
        followup = item.id // AID_SLOT if item.kind is ItemKind.AID_NEED else item.id
        if item.kind not in (ItemKind.AID_NEED, ItemKind.FOLLOWUP):
            return [NOTHING_ALLOCATED.format(n=n)]
        done = c.t.store.deliver_aid(c.staff, followup, c.t.now)
        if done is None:
            return [NOTHING_ALLOCATED.format(n=n)]
        if not done:
            return [DELIVERED_TWICE.format(n=n)]
        return [DELIVERED.format(n=n, item=done)]
