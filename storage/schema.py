"""The database tables (SQLAlchemy Core). Migrations in `storage/migrations` must match these.

Times are stored as timezone-aware UTC (`UtcDateTime`), dates as local calendar dates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no tz support) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

schools = Table(
    "schools",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
)

staff = Table(
    "staff",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("staff_no", String(64), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("school_id", ForeignKey("schools.id"), nullable=True),
    Column("role", String(20), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    # A job chunk reads its schools' staff (and the bureau's, whose school is NULL): without it,
    # every chunk of a province scanned all of them.
    Index("ix_staff_school", "school_id"),
)

# One row per platform identity of a staff member (WeCom userid, DingTalk userid, ...).
identities = Table(
    "identities",
    metadata,
    Column("channel", String(20), primary_key=True),
    Column("external_id", String(128), primary_key=True),
    Column("staff_id", ForeignKey("staff.id", ondelete="CASCADE"), nullable=False, index=True),
    # Set when the identity was bound with a code (`绑定`), not listed by the roster: a roster
    # whose cell for it is empty does not know it, and keeps it.
    Column("bound_at", UtcDateTime, nullable=True),
)

students = Table(
    "students",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("student_no", String(64), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("school_id", ForeignKey("schools.id"), nullable=False, index=True),
    Column("class_name", String(100), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    # When a roster import deactivated the student: after the retention period, anonymised.
    Column("deactivated_at", UtcDateTime, nullable=True),
    # The latest submitted visit that reached the family, and that did not: kept by triggers on
    # `visits` (see `VISIT_TRIGGERS`), so that coverage of a whole city is a scan of this table.
    Column("last_reached_at", UtcDateTime, nullable=True),
    Column("last_unreached_at", UtcDateTime, nullable=True),
    # The student's aid categories as ",孤儿,低保," ("" for none), kept by triggers on
    # `student_categories` (see `CATEGORY_TRIGGERS`): coverage by category and the category
    # cycles need no join. (The roster splits categories on commas, so none contains one.)
    Column("categories", Text, nullable=False, server_default=""),
    # Covers the console's figures: a city's coverage is one scan of this index.
    Index(
        "ix_students_status",
        "school_id",
        "active",
        "class_name",
        "last_reached_at",
        "last_unreached_at",
        "categories",
    ),
    # The few inactive students: what a city's figures over visits and follow-ups leave out.
    Index(
        "ix_students_inactive",
        "id",
        sqlite_where=text("active = 0"),
        postgresql_where=text("active = false"),
    ),
)

student_categories = Table(
    "student_categories",
    metadata,
    Column("student_id", ForeignKey("students.id", ondelete="CASCADE"), primary_key=True),
    Column("category", String(50), primary_key=True),
    # Who said so: 'roster' (the roster import, which replaces only its own rows) or the
    # department of a screening list applied (民政, 残联 ...), and since when (None: before 0010).
    Column("source", String(50), nullable=False, server_default="roster"),
    Column("since", UtcDateTime, nullable=True),
    Index("ix_student_categories_category", "category", "student_id"),
)

assignments = Table(
    "assignments",
    metadata,
    Column("student_id", ForeignKey("students.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(20), primary_key=True),  # head_teacher | carer
    Column("staff_id", ForeignKey("staff.id"), nullable=False, index=True),
)

visits = Table(
    "visits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("student_id", ForeignKey("students.id"), nullable=False),
    Column("staff_id", ForeignKey("staff.id"), nullable=False),
    Column("form_id", String(64), nullable=False),
    Column("form_version", String(64), nullable=False),
    Column("status", String(20), nullable=False),  # draft | submitted | discarded
    Column("method", String(50), nullable=True),
    Column("reached", Boolean, nullable=True),  # False: family unreachable, not a real visit
    Column("answers", JSON, nullable=False),
    # Bumped by every write of the answers: a session that saw an older revision (the teacher
    # answered meanwhile on another channel) re-reads the draft instead of overwriting it.
    Column("revision", Integer, nullable=False, default=0, server_default="0"),
    Column("started_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("submitted_at", UtcDateTime, nullable=True),
    # When the retention job erased its sensitive answers and notes (None: not yet).
    Column("redacted_at", UtcDateTime, nullable=True),
    Index("ix_visits_student_status", "student_id", "status", "submitted_at"),
    Index("ix_visits_staff_status", "staff_id", "status"),
)

followups = Table(
    "followups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("visit_id", ForeignKey("visits.id"), nullable=False, index=True),
    Column("student_id", ForeignKey("students.id"), nullable=False, index=True),
    Column("owner_staff_id", ForeignKey("staff.id"), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("detail", Text, nullable=False),
    Column("due_date", Date, nullable=False),
    Column("status", String(20), nullable=False),  # open | done | escalated
    Column("created_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime, nullable=True),
    Column("closed_by", ForeignKey("staff.id"), nullable=True),
    Column("note", Text, nullable=True),
    Column("escalated_at", UtcDateTime, nullable=True),
    # The escalation ladder (#14): a coordinator (or bureau member) who acknowledged it holds it;
    # unacknowledged, it climbs to the bureau. `reopens`: the follow-up a next visit found unmet.
    Column("acknowledged_at", UtcDateTime, nullable=True),
    Column("acknowledged_by", ForeignKey("staff.id"), nullable=True),
    Column("climbed_at", UtcDateTime, nullable=True),
    Column("reopens", ForeignKey("followups.id"), nullable=True),
    Index("ix_followups_owner_status", "owner_staff_id", "status"),
    Index("ix_followups_status_due", "status", "due_date"),  # the ladder's steps
    Index("ix_followups_due", "due_date", "id"),  # the console's list, earliest due first
)

# Every step of a follow-up's life with its time and person: escalated (person: none), notified
# (the person told), acknowledged, climbed, reassigned (the new owner), done (who closed it).
followup_events = Table(
    "followup_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("followup_id", ForeignKey("followups.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(20), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("staff_id", ForeignKey("staff.id"), nullable=True),
    Column("actor_id", ForeignKey("staff.id"), nullable=True),  # who did it, when not the job
    Column("note", Text, nullable=True),
    Index("ix_followup_events_followup", "followup_id", "event", "staff_id"),
)

conversations = Table(
    "conversations",
    metadata,
    Column("channel", String(20), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    Column("state", String(30), nullable=False),
    Column("data", JSON, nullable=False),
    Column("listing", JSON, nullable=True),  # see bot.core.types.Session.listing
    Column("version", Integer, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Keyed by sender too: a message id is the client's word, and one teacher's id must never answer
# another with the first one's replies. `replies` is cleared once platforms stop retrying
# (`storage.maintenance`); the key stays longer, so a late retry is still recognised.
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("channel", String(20), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("replies", JSON, nullable=True),
    Column("received_at", UtcDateTime, nullable=False, index=True),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("idempotency_key", String(255), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("recipient", String(255), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("body", Text, nullable=False),
    # A numbered list the message shows (a reminder): once delivered, it becomes the recipient's
    # current list, so that replying `1` or `完成 2` refers to it.
    Column("listing", JSON, nullable=True),
    Column("status", String(20), nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime, nullable=True),
    # Fallback across channels: the [channel, recipient] pairs still to try when this channel
    # rejects the message for good or keeps failing; since when it has been on this channel; the
    # channel it was first meant for (set once it moved: the recipient was reached by fallback).
    Column("fallbacks", JSON, nullable=True),
    Column("channel_since", UtcDateTime, nullable=True),
    Column("fallback_from", String(20), nullable=True),
    UniqueConstraint("idempotency_key"),
    Index("ix_outbox_due", "status", "next_attempt_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(50), nullable=False),
    Column("detail", Text, nullable=False),
    # The school the entry is about (a student's, an upload's, the actor's); None: every school.
    # A coordinator's console shows their school's entries.
    Column("school_id", Integer, nullable=True),
    # The hash chain (`storage.audit`): the previous entry's hash, and this entry's.
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_school_at", "school_id", "at"),
)

# Console sign-in links: only the token's SHA-256 is kept; each is used at most once.
console_tokens = Table(
    "console_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("staff_id", ForeignKey("staff.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
)

# One-time binding codes (`homevisit bind code`, chat 绑定码): only the code's SHA-256 is kept.
binding_codes = Table(
    "binding_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("staff_id", ForeignKey("staff.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
)

# Wrong binding codes, for the rate limits: `subject` is "staff:<工号>" or "sender:<hash>".
bind_failures = Table(
    "bind_failures",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject", String(100), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_bind_failures_subject_at", "subject", "at"),
)

# Console sessions, revocable: the cookie's SHA-256, and the role and school at sign-in (a change
# of either, or deactivation, ends the session at its next request).
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("staff_id", ForeignKey("staff.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("role", String(20), nullable=False),
    Column("school_id", Integer, nullable=True),
    Column("csrf_token", String(64), nullable=False),
    Column("method", String(20), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
)

# Console sign-in attempts per client address, shared by every instance (the rate limit).
signin_attempts = Table(
    "signin_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("address", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_signin_attempts_address_at", "address", "at"),
)

# A roster upload between its preview and its apply: the files, for that session only.
console_uploads = Table(
    "console_uploads",
    metadata,
    Column("upload_hash", String(64), primary_key=True),
    Column("session_hash", String(64), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("files", JSON, nullable=False),  # [{"name": ..., "data": base64}]
)

# Aid stock: one row per holder and item, `school_id` 0 being the bureau's pool (so no foreign
# key). The CHECK and conditional updates (`storage.aid`) keep a count from ever going below zero.
aid_stock = Table(
    "aid_stock",
    metadata,
    Column("school_id", Integer, primary_key=True),
    Column("item", String(50), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("quantity >= 0", name="ck_aid_stock_quantity"),
)

# Every change of a stock count, with who and when, and the count after it.
aid_ledger = Table(
    "aid_ledger",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("school_id", Integer, nullable=False),
    Column("item", String(50), nullable=False),
    Column("change", Integer, nullable=False),
    Column("balance", Integer, nullable=False),
    Column("reason", String(20), nullable=False),  # arrival | correction
    Column("note", Text, nullable=True),
    Column("actor", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_aid_ledger_school_at", "school_id", "at"),
)

# An aid item given to one student against one open need (#15): how it goes out, whether it
# arrived, and what the next visit found. `active_followup_id` is the need while this allocation
# stands (allocated, delivered, in use) and NULL once the visit found it not received or unusable:
# being unique, it lets two coordinators at once never both allocate to one need.
aid_allocations = Table(
    "aid_allocations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("school_id", Integer, nullable=False),  # whose stock it came from (POOL: the bureau)
    Column("item", String(50), nullable=False),
    Column("followup_id", ForeignKey("followups.id"), nullable=False, index=True),
    Column("active_followup_id", Integer, nullable=True, unique=True),
    Column("student_id", ForeignKey("students.id"), nullable=False, index=True),
    Column("method", String(20), nullable=False),  # courier | carrier | handed
    Column("tracking", String(100), nullable=True),
    # allocated | delivered | in_use | not_received | unusable
    Column("status", String(20), nullable=False),
    Column("allocated_at", UtcDateTime, nullable=False),
    Column("allocated_by", String(64), nullable=False),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("delivered_by", String(64), nullable=True),
    Column("checked_at", UtcDateTime, nullable=True),
)

# Batch distributions ("每人两箱牛奶"): who gets one is fixed when it is created (every student of
# the chosen aid categories in scope, or a chosen list); each recipient is marked delivered once.
distributions = Table(
    "distributions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("school_id", ForeignKey("schools.id"), nullable=True),  # None: the bureau's, all schools
    Column("title", String(100), nullable=False),
    Column("categories", Text, nullable=False, server_default=""),  # "低保,孤儿"; "" for a list
    Column("created_by", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

distribution_recipients = Table(
    "distribution_recipients",
    metadata,
    Column("distribution_id", ForeignKey("distributions.id", ondelete="CASCADE"), primary_key=True),
    Column("student_id", ForeignKey("students.id", ondelete="CASCADE"), primary_key=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("delivered_by", String(64), nullable=True),
    Index("ix_distribution_recipients_student", "student_id"),
)

# Aid reviews (资助认定): a family in new hardship found on a visit (`student_id` set), or a
# student a teacher reported who is on no list (`name`/`class_name`; `student_id` set once
# approved, to the student added with a provisional 学籍号). Decided once by a coordinator.
aid_reviews = Table(
    "aid_reviews",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("school_id", ForeignKey("schools.id"), nullable=False),
    Column("student_id", ForeignKey("students.id", ondelete="CASCADE"), nullable=True),
    Column("name", String(100), nullable=True),
    Column("class_name", String(100), nullable=True),
    Column("note", Text, nullable=True),
    Column("reporter_id", ForeignKey("staff.id"), nullable=False),
    Column("status", String(20), nullable=False),  # open | approved | declined
    Column("category", String(50), nullable=True),
    Column("reason", Text, nullable=True),
    Column("decided_by", String(64), nullable=True),
    Column("decided_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_aid_reviews_school_status", "school_id", "status"),
)

# One row per scheduled job and local school day that completed: a job missed while the server was
# down is run once at start-up, and "needs found since the last digest" starts at the last run.
job_runs = Table(
    "job_runs",
    metadata,
    Column("job", String(30), primary_key=True),
    Column("run_date", Date, primary_key=True),
    Column("ran_at", UtcDateTime, nullable=False),
)

# A job run split into chunks of schools that instances claim with leases (`storage.chunks`):
# chunk 0 is the run's last step (the bureau's summary and the run's record), claimable once
# every other chunk is done or failed. `figures`: what a digest chunk found per school, for the
# bureau's summary; `error`: the exception type and place when it failed (never its message).
job_chunks = Table(
    "job_chunks",
    metadata,
    Column("job", String(30), primary_key=True),
    Column("run_date", Date, primary_key=True),
    Column("chunk", Integer, primary_key=True),
    Column("first_school", Integer, nullable=True),
    Column("last_school", Integer, nullable=True),
    Column("schools", Integer, nullable=False, default=0),
    Column("students", Integer, nullable=False, default=0),
    Column("status", String(20), nullable=False),  # pending | running | done | failed
    Column("owner", String(100), nullable=True),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("planned", Integer, nullable=False, default=0),
    Column("queued", Integer, nullable=False, default=0),
    Column("unreachable", Integer, nullable=False, default=0),
    Column("figures", JSON, nullable=True),
    Column("error", String(200), nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
)


# ---------------------------------------------------------------- triggers
# students.last_reached_at / last_unreached_at follow every write of a submitted visit, whoever
# makes it (the conversation, an import, an erasure, a future undo). The same statements are run
# by the migration that introduced them and by `metadata.create_all` (tests).
_RECOMPUTE = """UPDATE students SET
  last_reached_at = (SELECT max(v.submitted_at) FROM visits v
                     WHERE v.student_id = {who}.student_id AND v.status = 'submitted'
                       AND v.reached = {yes}),
  last_unreached_at = (SELECT max(v.submitted_at) FROM visits v
                       WHERE v.student_id = {who}.student_id AND v.status = 'submitted'
                         AND v.reached = {no})
WHERE id = {who}.student_id"""

SQLITE_TRIGGERS = (
    "CREATE TRIGGER visits_last_insert AFTER INSERT ON visits WHEN NEW.status = 'submitted' "
    f"BEGIN {_RECOMPUTE.format(who='NEW', yes=1, no=0)}; END",
    "CREATE TRIGGER visits_last_update AFTER UPDATE OF status, reached, submitted_at, student_id "
    f"ON visits BEGIN {_RECOMPUTE.format(who='NEW', yes=1, no=0)}; "
    f"{_RECOMPUTE.format(who='OLD', yes=1, no=0)}; END",
    "CREATE TRIGGER visits_last_delete AFTER DELETE ON visits WHEN OLD.status = 'submitted' "
    f"BEGIN {_RECOMPUTE.format(who='OLD', yes=1, no=0)}; END",
)
POSTGRESQL_TRIGGERS = (
    "CREATE FUNCTION visits_last_refresh() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"IF TG_OP <> 'DELETE' THEN {_RECOMPUTE.format(who='NEW', yes='true', no='false')}; END IF; "
    "IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.student_id <> NEW.student_id) THEN "
    f"{_RECOMPUTE.format(who='OLD', yes='true', no='false')}; END IF; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER visits_last_insert AFTER INSERT ON visits FOR EACH ROW "
    "WHEN (NEW.status = 'submitted') EXECUTE FUNCTION visits_last_refresh()",
    "CREATE TRIGGER visits_last_update AFTER UPDATE OF status, reached, submitted_at, student_id "
    "ON visits FOR EACH ROW EXECUTE FUNCTION visits_last_refresh()",
    "CREATE TRIGGER visits_last_delete AFTER DELETE ON visits FOR EACH ROW "
    "WHEN (OLD.status = 'submitted') EXECUTE FUNCTION visits_last_refresh()",
)
BACKFILL_LAST_VISITS = """UPDATE students SET
  last_reached_at = (SELECT max(v.submitted_at) FROM visits v WHERE v.student_id = students.id
                     AND v.status = 'submitted' AND v.reached = {yes}),
  last_unreached_at = (SELECT max(v.submitted_at) FROM visits v WHERE v.student_id = students.id
                       AND v.status = 'submitted' AND v.reached = {no})"""

# students.categories follows every write of `student_categories` (the roster import, an
# erasure, a test's own insert). The conversation never writes categories, so the chat path
# runs none of these.
_CATEGORIES_OF = {
    "sqlite": "coalesce((SELECT ',' || group_concat(category, ',') || ',' FROM "
    "(SELECT category FROM student_categories WHERE student_id = {id} "
    "ORDER BY category)), '')",
    "postgresql": "coalesce((SELECT ',' || string_agg(category, ',' ORDER BY category) || ',' "
    "FROM student_categories WHERE student_id = {id}), '')",
}


def _set_categories(dialect: str, who: str) -> str:
    of = _CATEGORIES_OF[dialect].format(id=f"{who}.student_id")
    return f"UPDATE students SET categories = {of} WHERE id = {who}.student_id"


CATEGORY_TRIGGERS = {
    "sqlite": (
        "CREATE TRIGGER student_categories_insert AFTER INSERT ON student_categories "
        f"BEGIN {_set_categories('sqlite', 'NEW')}; END",
        "CREATE TRIGGER student_categories_update AFTER UPDATE ON student_categories "
        f"BEGIN {_set_categories('sqlite', 'NEW')}; {_set_categories('sqlite', 'OLD')}; END",
        "CREATE TRIGGER student_categories_delete AFTER DELETE ON student_categories "
        f"BEGIN {_set_categories('sqlite', 'OLD')}; END",
    ),
    # Once per statement over its transition tables: a city's import inserts 100,000s of rows.
    "postgresql": (
        "CREATE FUNCTION student_categories_refresh() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF TG_OP <> 'DELETE' THEN UPDATE students SET categories = "
        + _CATEGORIES_OF["postgresql"].format(id="students.id")
        + " WHERE id IN (SELECT student_id FROM new_rows); END IF; "
        "IF TG_OP <> 'INSERT' THEN UPDATE students SET categories = "
        + _CATEGORIES_OF["postgresql"].format(id="students.id")
        + " WHERE id IN (SELECT student_id FROM old_rows); END IF; RETURN NULL; END $$",
        "CREATE TRIGGER student_categories_insert AFTER INSERT ON student_categories "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION student_categories_refresh()",
        "CREATE TRIGGER student_categories_update AFTER UPDATE ON student_categories "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION student_categories_refresh()",
        "CREATE TRIGGER student_categories_delete AFTER DELETE ON student_categories "
        "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION student_categories_refresh()",
    ),
}
BACKFILL_CATEGORIES = {
    dialect: "UPDATE students SET categories = " + of.format(id="students.id")
    for dialect, of in _CATEGORIES_OF.items()
}

for _dialect, _statements in CATEGORY_TRIGGERS.items():
    for _statement in _statements:
        event.listen(
            student_categories,
            "after_create",
            DDL(_statement).execute_if(dialect=_dialect),  # type: ignore[no-untyped-call]
        )
for _statement in SQLITE_TRIGGERS:
    event.listen(
        visits,
        "after_create",
        DDL(_statement).execute_if(dialect="sqlite"),  # type: ignore[no-untyped-call]
    )
for _statement in POSTGRESQL_TRIGGERS:
    event.listen(
        visits,
        "after_create",
        DDL(_statement).execute_if(dialect="postgresql"),  # type: ignore[no-untyped-call]
    )
