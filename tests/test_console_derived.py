"""`students.categories` (kept by triggers for the console's figures) stays right, and the
dashboard's numbers stay equal to counts made independently from `student_categories`, visits
and follow-ups, through a roster re-import, a visit submitted in chat and a deactivation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import insert, select

from bot.console.cycle import cutoffs, window_start
from bot.core.console_ports import Dashboard, Scope, StudentQuery, VisitState
from bot.deps import Deps, cadence
from config.settings import Settings
from handlers.reminders import View, school_figures
from storage.demo import demo_roster
from storage.roster import Roster, import_roster
from storage.schema import followups, staff, student_categories, students, visits
from storage.snapshot import load_snapshot
from tests.conftest import ChatDriver, FakeClock
from tests.test_console_pages import console_store, visit_zhou


def derived_matches_categories(deps: Deps) -> None:
    """Every student's derived column names exactly their `student_categories` rows."""
    with deps.db.begin() as conn:
        truth: dict[int, set[str]] = {}
        for sid, cat in conn.execute(
            select(student_categories.c.student_id, student_categories.c.category)
        ):
            truth.setdefault(sid, set()).add(cat)
        for sid, text in conn.execute(select(students.c.id, students.c.categories)):
            assert set(filter(None, text.split(","))) == truth.get(sid, set()), sid
            assert text == "" or (text.startswith(",") and text.endswith(",")), text


async def figures(settings: Settings, deps: Deps, clock: FakeClock) -> Dashboard:
    """The bureau's dashboard, checked against the digest's figures and plain SQL counts."""
    derived_matches_categories(deps)
    now = clock.now()
    today = now.astimezone(settings.tz).date()
    cad = cadence(settings, deps.calendar)
    with deps.db.begin() as conn:
        snap = load_snapshot(conn, now - timedelta(days=1), now)
        open_kinds = Counter(
            kind
            for (kind,) in conn.execute(
                select(followups.c.kind)
                .join(students, students.c.id == followups.c.student_id)
                .where(students.c.active.is_(True), followups.c.status.in_(("open", "escalated")))
            )
        )
    view = View(snap, today, settings.tz, cad)
    expected = school_figures(snap, view, now, [], [])
    cut = cutoffs(cad, today, settings.tz)
    d = await console_store(settings, deps).dashboard(
        Scope(None), cut, today, window_start(today, settings.tz), []
    )
    assert d.total == len(snap.students)
    assert {int(g.key): (g.visited, g.total) for g in d.groups} == {
        sid: (f.visited, f.total) for sid, f in expected.items()
    }
    by_category: dict[str, tuple[int, int]] = {}
    for f in expected.values():
        for c, (v, n) in f.by_category.items():
            was = by_category.get(c, (0, 0))
            by_category[c] = (was[0] + v, was[1] + n)
    assert {c.key: (c.visited, c.total) for c in d.categories} == by_category
    assert {n.kind: n.open for n in d.needs if n.open} == dict(open_kinds)
    assert d.open_followups == sum(open_kinds.values())
    page = await console_store(settings, deps).students(Scope(None), cut, StudentQuery())
    for row in page.rows:
        s = view.students[row.id]
        assert (row.state is VisitState.VISITED) == view.covered(s), row.student_no
    return d


def reimport(deps: Deps, clock: FakeClock, roster: Roster) -> None:
    with deps.db.begin() as conn:
        import_roster(conn, roster, now=clock.now())


def with_students(roster: Roster, changes: dict[str, tuple[str, ...] | None]) -> Roster:
    """The roster with some students' categories changed (None: the student left)."""
    kept = []
    for st in roster.students:
        if st.student_no not in changes:
            kept.append(st)
        elif (cats := changes[st.student_no]) is not None:
            kept.append(replace(st, categories=cats))
    return replace(roster, students=tuple(kept))


async def test_derived_categories_follow_import_visit_and_deactivation(
    settings: Settings, deps: Deps, bot: ChatDriver, clock: FakeClock
) -> None:
    # DEMO0001 (建档立卡, 14-day cycle) was reached 10 days ago: covered, until it becomes 孤儿.
    with deps.db.begin() as conn:
        sid = conn.execute(
            select(students.c.id).where(students.c.student_no == "DEMO0001")
        ).scalar_one()
        teacher = conn.execute(select(staff.c.id).where(staff.c.staff_no == "T001")).scalar_one()
        at = clock.now() - timedelta(days=10)
        conn.execute(
            insert(visits).values(
                student_id=sid,
                staff_id=teacher,
                form_id="home_visit",
                form_version="2026.1",
                status="submitted",
                method="电话",
                reached=True,
                answers={},
                started_at=at,
                updated_at=at,
                submitted_at=at,
            )
        )
    first = await figures(settings, deps, clock)
    assert first.visited == 1 and first.total == 12

    # A re-import: DEMO0001 gains 孤儿 (now due), DEMO0002 loses every category.
    roster = with_students(demo_roster(), {"DEMO0001": ("孤儿", "建档立卡"), "DEMO0002": ()})
    reimport(deps, clock, roster)
    second = await figures(settings, deps, clock)
    assert second.visited == 0
    assert ("孤儿", 0, 2) in [(c.key, c.visited, c.total) for c in second.categories]
    assert "留守" in {c.key for c in second.categories}

    # A visit submitted in chat (周小禾, DEMO0003: 残疾) with a tablet missing.
    await visit_zhou(bot)
    third = await figures(settings, deps, clock)
    assert third.visited == 1 and third.open_followups == 1
    assert ("残疾", 1, 2) in [(c.key, c.visited, c.total) for c in third.categories]

    # DEMO0003 leaves the roster: deactivated, out of coverage and of the open needs.
    reimport(deps, clock, with_students(roster, {"DEMO0003": None}))
    fourth = await figures(settings, deps, clock)
    assert (fourth.visited, fourth.total, fourth.open_followups) == (0, 11, 0)
    assert ("残疾", 0, 1) in [(c.key, c.visited, c.total) for c in fourth.categories]

    # Back again with new categories: the trigger follows, the visit counts again.
    reimport(deps, clock, with_students(roster, {"DEMO0003": ("大病",)}))
    fifth = await figures(settings, deps, clock)
    assert (fifth.visited, fifth.total, fifth.open_followups) == (1, 12, 1)
    assert ("残疾", 0, 1) in [(c.key, c.visited, c.total) for c in fifth.categories]


async def test_every_write_of_student_categories_keeps_the_column(deps: Deps) -> None:
    """Inserts, an update and deletes made outside the importer (the triggers, not the code)."""
    with deps.db.begin() as conn:
        sid = conn.execute(
            select(students.c.id).where(students.c.student_no == "DEMO0005")
        ).scalar_one()
        conn.execute(insert(student_categories), [{"student_id": sid, "category": "A类"}])
        conn.execute(
            student_categories.update()
            .where(student_categories.c.student_id == sid, student_categories.c.category == "孤儿")
            .values(category="a类")
        )
    derived_matches_categories(deps)
    with deps.db.begin() as conn:
        assert conn.execute(
            select(students.c.categories).where(students.c.id == sid)
        ).scalar_one() in (",A类,a类,", ",a类,A类,")
        conn.execute(student_categories.delete().where(student_categories.c.student_id == sid))
        assert (
            conn.execute(select(students.c.categories).where(students.c.id == sid)).scalar_one()
            == ""
        )
    derived_matches_categories(deps)
