"""Binding codes in the database: issue, count wrong tries, redeem (see `bot.core.binding`).

Functions over a connection, inside the caller's transaction: `SqlStore` calls them within a
conversation turn, `homevisit bind code` within its own. Every binding and every code issued is
an audit entry; the entries name the channel, never the platform id.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from bot.core.binding import BindOutcome
from bot.core.types import Staff, StaffRole
from storage import audit
from storage.schema import bind_failures, binding_codes, identities, staff

_COLS = (staff.c.id, staff.c.staff_no, staff.c.name, staff.c.role, staff.c.school_id)


def _staff_by_no(conn: Connection, staff_no: str) -> Staff | None:
    row = conn.execute(
        select(*_COLS).where(staff.c.staff_no == staff_no, staff.c.active.is_(True))
    ).first()
    return (
        None
        if row is None
        else Staff(row.id, row.staff_no, row.name, StaffRole(row.role), row.school_id)
    )


def _audit(
    conn: Connection,
    now: datetime,
    actor: str,
    action: str,
    detail: dict[str, object],
    school_id: int | None,
) -> None:
    audit.record(conn, at=now, actor=actor, action=action, detail=detail, school_id=school_id)


def issue_code(
    conn: Connection,
    staff_no: str,
    school_id: int | None,
    code_hash: str,
    expires_at: datetime,
    now: datetime,
    actor: str,
) -> Staff | None:
    """Store a code for the active staff member with this 工号 (in `school_id`, None: any
    school), withdrawing their unused codes; None, nothing written, when there is none."""
    target = _staff_by_no(conn, staff_no)
    if target is None or (school_id is not None and target.school_id != school_id):
        return None
    conn.execute(
        delete(binding_codes).where(
            binding_codes.c.staff_id == target.id, binding_codes.c.used_at.is_(None)
        )
    )
    conn.execute(
        insert(binding_codes).values(
            code_hash=code_hash, staff_id=target.id, created_at=now, expires_at=expires_at
        )
    )
    _audit(conn, now, actor, "binding_code", {"staff_no": target.staff_no}, target.school_id)
    return target


def failures(conn: Connection, subjects: Sequence[str], since: datetime) -> dict[str, int]:
    rows = conn.execute(
        select(bind_failures.c.subject, func.count())
        .where(bind_failures.c.subject.in_(list(subjects)), bind_failures.c.at >= since)
        .group_by(bind_failures.c.subject)
    ).all()
    counts = {subject: 0 for subject in subjects}
    counts.update({subject: int(n) for subject, n in rows})
    return counts


def record_failure(
    conn: Connection, subjects: Sequence[str], now: datetime, forget_before: datetime
) -> None:
    conn.execute(delete(bind_failures).where(bind_failures.c.at < forget_before))
    conn.execute(insert(bind_failures), [{"subject": s, "at": now} for s in subjects])


def redeem(
    conn: Connection, channel: str, user_id: str, staff_no: str, code_hash: str, now: datetime
) -> tuple[BindOutcome, Staff | None]:
    """Bind (channel, user_id) to the staff member whose valid code this is."""
    target = _staff_by_no(conn, staff_no)
    if target is None:
        return BindOutcome.WRONG, None
    owner = conn.execute(
        select(identities.c.staff_id).where(
            identities.c.channel == channel, identities.c.external_id == user_id
        )
    ).scalar_one_or_none()
    if owner == target.id:  # the sender knows this already: no code needed to be told
        return BindOutcome.ALREADY, target
    code = conn.execute(
        select(binding_codes.c.code_hash).where(
            binding_codes.c.code_hash == code_hash,
            binding_codes.c.staff_id == target.id,
            binding_codes.c.used_at.is_(None),
            binding_codes.c.expires_at > now,
        )
    ).first()
    if code is None:
        return BindOutcome.WRONG, None
    if owner is not None:
        return BindOutcome.TAKEN, None
    replaced = conn.execute(
        delete(identities).where(
            identities.c.staff_id == target.id, identities.c.channel == channel
        )
    ).rowcount
    conn.execute(
        insert(identities).values(
            channel=channel, external_id=user_id, staff_id=target.id, bound_at=now
        )
    )
    conn.execute(
        update(binding_codes).where(binding_codes.c.code_hash == code_hash).values(used_at=now)
    )
    detail: dict[str, object] = {
        "staff_no": target.staff_no,
        "channel": channel,
        "replaced": bool(replaced),
    }
    _audit(conn, now, target.staff_no, "binding", detail, target.school_id)
    return (BindOutcome.REPLACED if replaced else BindOutcome.BOUND), target
