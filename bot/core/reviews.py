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

    async def aid_list(self, principal: Principal, now: datetime) -> bytes:
        """The spring aid list as CSV: every active student with an aid category, a row per
        category with its source and since when; audited."""
        ...
