"""One student's data: all of it, for a guardian's access request, and its erasure on request.

`student_record` gathers everything held about one student (the roster entry, the staff assigned,
every visit with its answers, every follow-up with its notes, and the audit entries about them).
`erase_student` removes it: the student, their categories and assignments, visits and
follow-ups, aid reviews and distribution rows, the conversation sessions that still hold a draft
or a list with them, and the stored texts of messages that named them. What stays is one audit
entry with a pseudonym (a hash of the 学籍号, so that a later question "was this student erased?"
can be answered) and counts; earlier audit entries keep the bare 学籍号 they were written with (a
hash chain cannot be edited).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, null, select, update
from sqlalchemy.engine import Connection

from bot.core.errors import HomevisitError
from storage.audit import record
from storage.schema import (
    aid_reviews,
    assignments,
    audit_log,
    conversations,
    distribution_recipients,
    distributions,
    followups,
    inbound_messages,
    outbox,
    schools,
    staff,
    student_categories,
    students,
    visits,
)

ERASED_TEXT = "（内容已按要求删除）"


def pseudonym(student_no: str) -> str:
    """What the audit log keeps of an erased student: not the number, but a way to check it."""
    return hashlib.sha256(f"homevisit-student:{student_no}".encode()).hexdigest()[:16]


def _student(conn: Connection, student_no: str) -> Any:
    row = conn.execute(
        select(students, schools.c.name.label("school_name"))
        .join(schools, schools.c.id == students.c.school_id)
        .where(students.c.student_no == student_no)
    ).first()
    if row is None:
        raise HomevisitError(f"学籍号 {student_no} 不存在 / no student with number {student_no!r}")
    return row


def _when(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def student_record(conn: Connection, student_no: str) -> dict[str, Any]:
    """Everything held about the student, as JSON-able data; HomevisitError when unknown."""
    s = _student(conn, student_no)
    staff_no = {r.id: r.staff_no for r in conn.execute(select(staff.c.id, staff.c.staff_no))}
    visit_rows = conn.execute(
        select(visits).where(visits.c.student_id == s.id).order_by(visits.c.id)
    ).all()
    followup_rows = conn.execute(
        select(followups).where(followups.c.student_id == s.id).order_by(followups.c.id)
    ).all()
    return {
        "student": {
            "student_no": s.student_no,
            "name": s.name,
            "school": s.school_name,
            "class": s.class_name,
            "active": bool(s.active),
            "categories": sorted(
                conn.execute(
                    select(student_categories.c.category).where(
                        student_categories.c.student_id == s.id
                    )
                ).scalars()
            ),
            "staff": [
                {"role": r.role, "staff_no": staff_no.get(r.staff_id)}
                for r in conn.execute(select(assignments).where(assignments.c.student_id == s.id))
            ],
        },
        "visits": [
            {
                "id": v.id,
                "status": v.status,
                "teacher": staff_no.get(v.staff_id),
                "form": f"{v.form_id} {v.form_version}",
                "method": v.method,
                "reached": v.reached,
                "answers": v.answers,
                "started_at": _when(v.started_at),
                "submitted_at": _when(v.submitted_at),
            }
            for v in visit_rows
        ],
        "followups": [
            {
                "id": f.id,
                "visit": f.visit_id,
                "kind": f.kind,
                "detail": f.detail,
                "owner": staff_no.get(f.owner_staff_id),
                "due_date": f.due_date.isoformat(),
                "status": f.status,
                "created_at": _when(f.created_at),
                "closed_at": _when(f.closed_at),
                "closed_by": staff_no.get(f.closed_by) if f.closed_by else None,
                "note": f.note,
            }
            for f in followup_rows
        ],
        "aid_reviews": [
            {
                "status": r.status,
                "note": r.note,
                "category": r.category,
                "reason": r.reason,
                "created_at": _when(r.created_at),
                "decided_at": _when(r.decided_at),
            }
            for r in conn.execute(select(aid_reviews).where(aid_reviews.c.student_id == s.id))
        ],
        "distributions": [
            {"title": d.title, "created_at": _when(d.created_at), "delivered_at": _when(d.at)}
            for d in conn.execute(
                select(
                    distributions.c.title,
                    distributions.c.created_at,
                    distribution_recipients.c.delivered_at.label("at"),
                )
                .join(
                    distribution_recipients,
                    distribution_recipients.c.distribution_id == distributions.c.id,
                )
                .where(distribution_recipients.c.student_id == s.id)
            )
        ],
        "audit": [
            {"at": _when(a.at), "actor": a.actor, "action": a.action}
            for a in conn.execute(
                select(audit_log).where(audit_log.c.detail.contains(f'"{s.student_no}"'))
            )
            if json.loads(a.detail).get("student_no") == s.student_no
        ],
    }


def access_request(conn: Connection, student_no: str, now: datetime, actor: str = "cli") -> bytes:
    """The student's record as UTF-8 JSON, its release recorded in the audit log."""
    data = student_record(conn, student_no)
    s = _student(conn, student_no)
    record(
        conn,
        at=now,
        actor=actor,
        action="student_export",
        detail={"student_no": student_no},
        school_id=s.school_id,
    )
    return json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")


def student_no_in_scope(conn: Connection, student_id: int, school_id: int | None) -> str | None:
    """The 学籍号 of the student with this id, if they are in the school (None: any school)."""
    query = select(students.c.student_no).where(students.c.id == student_id)
    if school_id is not None:
        query = query.where(students.c.school_id == school_id)
    return conn.execute(query).scalar()


def export_student(conn: Connection, student_no: str, out: Path, now: datetime) -> int:
    """Write the student's record to `out` as JSON (temporary name, then renamed) and audit it;
    the number of visits written."""
    if not out.parent.is_dir():
        raise HomevisitError(f"文件夹 {out.parent} 不存在 / folder {out.parent} does not exist")
    if out.is_dir():
        raise HomevisitError(f"{out} 是文件夹，请给出文件名 / {out} is a folder: give a file name")
    body = access_request(conn, student_no, now)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(name, out)
    except BaseException as exc:
        Path(name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise HomevisitError(f"无法写入 {out} / cannot write {out}") from exc
        raise
    return len(json.loads(body)["visits"])


@dataclass(frozen=True, slots=True)
class Erased:
    visits: int
    followups: int
    sessions: int
    messages: int


def erase_student(
    conn: Connection, student_no: str, reason: str, now: datetime, actor: str = "cli"
) -> Erased:
    """Remove everything about the student in the caller's transaction (see the module doc)."""
    if not reason.strip():
        raise HomevisitError("erasing a student needs --reason TEXT (it goes in the audit log)")
    s = _student(conn, student_no)
    visit_ids = set(conn.execute(select(visits.c.id).where(visits.c.student_id == s.id)).scalars())
    followup_ids = set(
        conn.execute(select(followups.c.id).where(followups.c.student_id == s.id)).scalars()
    )
    sessions = forget_sessions(conn, s.id, visit_ids, followup_ids)
    messages = blank_messages(conn, s.name)
    conn.execute(delete(followups).where(followups.c.student_id == s.id))
    conn.execute(delete(visits).where(visits.c.student_id == s.id))
    conn.execute(delete(student_categories).where(student_categories.c.student_id == s.id))
    conn.execute(delete(aid_reviews).where(aid_reviews.c.student_id == s.id))
    conn.execute(
        delete(distribution_recipients).where(distribution_recipients.c.student_id == s.id)
    )
    conn.execute(delete(assignments).where(assignments.c.student_id == s.id))
    conn.execute(delete(students).where(students.c.id == s.id))
    erased = Erased(len(visit_ids), len(followup_ids), sessions, messages)
    record(
        conn,
        at=now,
        actor=actor,
        action="student_erase",
        detail={
            "student": pseudonym(student_no),
            "reason": reason.strip(),
            "visits": erased.visits,
            "followups": erased.followups,
        },
        school_id=s.school_id,
    )
    return erased


def forget_sessions(
    conn: Connection, student_id: int, visit_ids: set[int], followup_ids: set[int]
) -> int:
    """Sessions holding a draft of, or a numbered list with, the student start over idle."""
    gone = 0
    for row in conn.execute(
        select(conversations.c.channel, conversations.c.user_id, conversations.c.data,
               conversations.c.listing)
    ).all():  # fmt: skip
        if _mentions(row.data, student_id, visit_ids) or _lists(
            row.listing, student_id, followup_ids
        ):
            conn.execute(
                delete(conversations).where(
                    conversations.c.channel == row.channel,
                    conversations.c.user_id == row.user_id,
                )
            )
            gone += 1
    return gone


def _mentions(value: Any, student_id: int, visit_ids: set[int]) -> bool:
    if isinstance(value, dict):
        student = value.get("student")
        if isinstance(student, dict) and student.get("id") == student_id:
            return True
        if value.get("visit") in visit_ids:
            return True
        return any(_mentions(v, student_id, visit_ids) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, student_id, visit_ids) for v in value)
    return False


def _lists(listing: Any, student_id: int, followup_ids: set[int]) -> bool:
    items = listing.get("items", []) if isinstance(listing, dict) else []
    for item in items:
        if isinstance(item, list) and len(item) == 2:
            kind, ident = item
            if (kind == "student" and ident == student_id) or (
                kind != "student" and ident in followup_ids
            ):
                return True
    return False


def blank_messages(conn: Connection, name: str) -> int:
    """Stored texts naming the student: sent or failed outbox messages and stored replies."""
    changed = conn.execute(
        update(outbox)
        .where(outbox.c.status != "pending", outbox.c.body.contains(name))
        .values(body=ERASED_TEXT, listing=null())
    ).rowcount
    for row in conn.execute(
        select(inbound_messages).where(inbound_messages.c.replies.is_not(None))
    ).all():
        if any(name in str(r) for r in row.replies or []):
            conn.execute(
                update(inbound_messages)
                .where(
                    inbound_messages.c.channel == row.channel,
                    inbound_messages.c.user_id == row.user_id,
                    inbound_messages.c.message_id == row.message_id,
                )
                .values(replies=[ERASED_TEXT])
            )
            changed += 1
    return int(changed)
