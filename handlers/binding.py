"""`绑定 工号 码` (anyone, from any channel) and `绑定码 工号` (coordinators and bureau).

A teacher whose platform id is not in the roster binds the chat identity they write from with a
code their coordinator got for them. Wrong codes count against the sender and against the staff
number (`bot.core.binding` limits); past either limit every try is refused until the window
has passed, whether the code is right or not, so guessing gains nothing.
"""

from __future__ import annotations

import re

from bot.core.binding import (
    CODE_TTL,
    FAILURE_WINDOW,
    SENDER_FAILURES,
    STAFF_FAILURES,
    BindOutcome,
    code_hash,
    new_code,
    sender_subject,
    staff_subject,
)
from bot.core.channels import STAFF_NO_CHANNELS
from bot.core.engine import Turn
from bot.core.types import Staff, StaffRole
from handlers import coordinate, texts

_BIND = re.compile(r"^(?:绑定|bind)\s+(\S{1,64})\s+(\S{1,32})$", re.IGNORECASE)
_BIND_BARE = re.compile(r"^(?:绑定|bind)(?:\s.*)?$", re.IGNORECASE)
_ISSUE = re.compile(r"^(?:绑定码|bindcode)(?:\s+(\S{1,64}))?$", re.IGNORECASE)


def is_bind(text: str) -> bool:
    return bool(_BIND_BARE.match(text))


def is_issue(text: str) -> bool:
    return bool(_ISSUE.match(text))


def bind(t: Turn, text: str) -> list[str]:
    """Answer `绑定 …` (normalized text) from this sender."""
    if t.message.channel in STAFF_NO_CHANNELS:
        return [texts.BIND_NOT_NEEDED]
    m = _BIND.match(text)
    if m is None:
        return [texts.BIND_USAGE]
    staff_no, code = m.groups()
    store, now = t.store, t.now
    subjects = [sender_subject(t.message.channel, t.message.user_id), staff_subject(staff_no)]
    counts = store.bind_failures(subjects, now - FAILURE_WINDOW)
    if counts[subjects[0]] >= SENDER_FAILURES or counts[subjects[1]] >= STAFF_FAILURES:
        minutes = int(FAILURE_WINDOW.total_seconds() // 60)
        return [texts.BIND_LOCKED.format(minutes=minutes)]
    outcome, staff = store.redeem_binding_code(
        t.message.channel, t.message.user_id, staff_no, code_hash(code), now
    )
    if outcome is BindOutcome.WRONG:
        store.record_bind_failure(subjects, now, now - FAILURE_WINDOW)
        return [texts.BIND_WRONG]
    if outcome is BindOutcome.TAKEN:
        return [texts.BIND_TAKEN]
    assert staff is not None
    if outcome is BindOutcome.ALREADY:
        return [texts.BIND_ALREADY.format(name=staff.name)]
    return [texts.BIND_DONE.format(name=staff.name) + "\n\n" + coordinate.help_for(staff.role)]


def issue(t: Turn, staff: Staff, text: str) -> list[str]:
    """Answer `绑定码 工号`: a code for a staff member of the coordinator's school."""
    if staff.role not in (StaffRole.COORDINATOR, StaffRole.BUREAU):
        return [texts.BIND_CODE_NOT_FOR_TEACHERS]
    m = _ISSUE.match(text)
    if m is None or m.group(1) is None:
        return [texts.BIND_CODE_USAGE]
    scope = None if staff.role is StaffRole.BUREAU else staff.school_id
    if scope is None and staff.role is not StaffRole.BUREAU:
        return [texts.BIND_CODE_UNKNOWN.format(staff_no=m.group(1))]
    code = new_code()
    target = t.store.issue_binding_code(
        m.group(1), scope, code_hash(code), t.now + CODE_TTL, t.now, staff.staff_no
    )
    if target is None:
        return [texts.BIND_CODE_UNKNOWN.format(staff_no=m.group(1))]
    hours = int(CODE_TTL.total_seconds() // 3600)
    return [
        texts.BIND_CODE.format(name=target.name, staff_no=target.staff_no, code=code, hours=hours)
    ]
