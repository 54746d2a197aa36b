"""Aid reviews (资助认定): families found in new hardship on a visit, and students a teacher
reports who are not on any list, waiting for the school's coordinator to decide.

Approving one gives the student the category with source `家访发现` and the date; a reported
student is added to the roster with a provisional 学籍号 (`临时` + the review's number), which a
later roster import replaces with the real one (matched by name + school + class).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from bot.core.console_ports import Principal

FOUND_ON_VISIT = "家访发现"  # the source of a category a review approved
PROVISIONAL_PREFIX = "临时"
# The categories a review may give (the DESIGN's aid categories, and 临时困难 for a family in
# hardship because of the crisis that fits none of them yet).
REVIEW_CATEGORIES = ("建档立卡", "低保", "特困", "孤儿", "残疾", "大病", "留守", "临时困难")


APPROVED_MESSAGE = (
    "资助认定结果：{student}已认定为“{category}”（{who}认定）。{added}"
    "以后的家访提醒会包括这名学生。"
)
APPROVED_ADDED = "这名学生已加入你的名单。"
DECLINED_MESSAGE = "资助认定结果：{student}未予认定（{who}）。原因：{reason}"
MAX_REASON = 200


class ReviewError(Exception):
    """A decision that cannot be made (its message is shown as it is)."""


def provisional_no(review_id: int) -> str:
    return f"{PROVISIONAL_PREFIX}{review_id:06d}"


class ReviewStatus(StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    DECLINED = "declined"


@dataclass(frozen=True, slots=True)
class AidReview:
    id: int
    school_id: int
    student_id: int | None  # None: a reported student not yet approved
    student_name: str
    class_name: str
    note: str
    reporter_id: int
    reporter_no: str
    reporter_name: str
    status: ReviewStatus
    created_at: datetime
    reported: bool  # True: 新增学生 (not on the roster when reported)
    category: str | None = None
    reason: str | None = None
    student_no: str | None = None


class ReviewStore(Protocol):
    """The console's reviews page and spring aid list, in the signed-in user's scope."""

    async def reviews(self, principal: Principal, limit: int = 500) -> list[AidReview]:
        """Open reviews first (oldest first), then decided ones (newest first)."""
        ...

    async def decide(
        self,
        principal: Principal,
        review_id: int,
        category: str | None,
        reason: str,
        now: datetime,
    ) -> tuple[AidReview, bool]:
        """Approve (`category`, one of REVIEW_CATEGORIES) or decline (`reason`) an open review
        in scope, and queue the reporting teacher's message; (the review, whether the teacher
        could be told). Raises `ReviewError` (nothing changed) otherwise."""
        ...

    async def aid_list(self, principal: Principal, now: datetime) -> bytes:
        """The spring aid list as CSV: every active student with an aid category, a row per
        category with its source and since when; audited."""
        ...


def teacher_message(decided: AidReview, who: str) -> str:
    """What the reporting teacher is told of a decision (chat and console alike)."""
    student = f"{decided.student_name}（{decided.class_name}）"
    if decided.status is ReviewStatus.APPROVED:
        added = APPROVED_ADDED if decided.reported else ""
        return APPROVED_MESSAGE.format(
            student=student, category=decided.category, who=who, added=added
        )
    return DECLINED_MESSAGE.format(student=student, who=who, reason=decided.reason or "")
