"""The console's pages: one handler per question a coordinator asks.

Handlers parse the query, call the `ConsoleStore` with the signed-in user's scope and render a
template. Nothing here decides who may see what beyond passing `principal.scope`: the store's
queries enforce it, so a URL edited by hand finds nothing outside the scope (404).
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from aiohttp import BodyPartReader, web

from bot.console import charts, labels
from bot.console.auth import (
    CONFIG,
    COOKIE,
    LIMITER,
    PREFIX,
    PRINCIPAL,
    STATE_COOKIE,
    check_csrf,
    new_session,
    page,
    set_session_cookie,
    signed_in,
)
from bot.console.cycle import cutoffs, per_school_day, window_start
from bot.core.console_ports import (
    ExportFormat,
    FollowUpQuery,
    Principal,
    StudentQuery,
    UploadedFile,
)
from bot.core.errors import HomevisitError
from bot.core.signin import new_secret, secret_hash
from config.forms import Form
from handlers.cadence import Cadence

MAX_UPLOAD = 10 * 1024 * 1024  # a roster workbook of a whole district fits easily
MAX_FILES = 4
PER_PAGE = 50
WECOM_AUTHORIZE = "https://open.weixin.qq.com/connect/oauth2/authorize"
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


@dataclass(frozen=True, slots=True)
class Wiring:
    """What the pages need besides the store (set up by `bot.console.install`)."""

    form: Form
    cadence: Cadence
    tz: ZoneInfo
    channels: tuple[str, ...]
    public_url: str
    wecom_corp_id: str | None = None
    wecom_agent_id: int | None = None
    wecom_user: Any = None  # async (code) -> userid | None; None when WeCom is off


WIRING = web.AppKey("console_wiring", Wiring)


def _today(request: web.Request) -> date:
    w = request.config_dict[WIRING]
    now: datetime = request.config_dict[CONFIG].clock.now()
    return now.astimezone(w.tz).date()


def _me(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


def _int(value: str | None, default: int | None = None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 9:
        return default
    return int(value)


def _link(path: str, **params: Any) -> str:
    query = {k: v for k, v in params.items() if v not in (None, "", 0, False)}
    return f"{PREFIX}{path}" + (f"?{urlencode(query)}" if query else "")


def _pager_links(request: web.Request, pages: int) -> list[tuple[str, str, bool]]:
    """(label, link, is current) for the first, last and nearby pages, keeping filters and sort."""
    current = _int(request.query.get("page"), 1) or 1
    numbers = sorted({1, pages, *range(max(1, current - 2), min(pages, current + 2) + 1)})
    out = []
    for n in numbers:
        params = dict(request.query)
        params["page"] = str(n)
        out.append((str(n), f"{request.path}?{urlencode(params)}", n == current))
    return out if pages > 1 else []


def _sort_links(request: web.Request, keys: list[str]) -> dict[str, str]:
    out = {}
    current, desc = request.query.get("sort", ""), request.query.get("desc") == "1"
    for key in keys:
        params = {k: v for k, v in request.query.items() if k not in ("sort", "desc", "page")}
        params["sort"] = key
        if key == current and not desc:
            params["desc"] = "1"
        out[key] = f"{request.path}?{urlencode(params)}"
    return out


# ---------------------------------------------------------------------------- sign-in
async def signin_help(request: web.Request) -> web.StreamResponse:
    w = request.config_dict[WIRING]
    return page(request, "signin.html", {"wecom": w.wecom_user is not None, "reason": ""})


async def _limited(request: web.Request) -> bool:
    config = request.config_dict[CONFIG]
    address = request.remote or "unknown"
    return not await request.config_dict[LIMITER].allow(address, config.clock.now())


def _signed_in_response(request: web.Request, raw: str) -> web.HTTPSeeOther:
    response = web.HTTPSeeOther(f"{PREFIX}/")
    set_session_cookie(response, request.config_dict[CONFIG], raw)
    response.del_cookie(STATE_COOKIE, path=f"{PREFIX}/signin/wecom")
    return response


async def _end_current(request: web.Request) -> None:
    old = request.cookies.get(COOKIE)
    if old:
        config = request.config_dict[CONFIG]
        await config.store.end_session(secret_hash(old), config.clock.now())


async def login(request: web.Request) -> web.StreamResponse:
    """Exchange a one-time link for a session (303 to the dashboard)."""
    if await _limited(request):
        return page(request, "signin.html", {"reason": "limited"}, status=429)
    token = request.query.get("token", "")
    config = request.config_dict[CONFIG]
    principal = None
    raw, session = new_session("link")
    if _TOKEN_SHAPE.match(token):
        principal = await config.store.redeem_token(secret_hash(token), session, config.clock.now())
    if principal is None:
        return page(request, "signin.html", {"reason": "bad_link"}, status=403)
    await _end_current(request)
    raise _signed_in_response(request, raw)


async def wecom_start(request: web.Request) -> web.StreamResponse:
    """Redirect to WeCom's web authorisation; `state` is bound to this browser by a cookie."""
    w = request.config_dict[WIRING]
    if w.wecom_user is None:
        raise web.HTTPNotFound()
    state = new_secret()
    query = urlencode(
        {
            "appid": w.wecom_corp_id,
            "redirect_uri": f"{w.public_url}{PREFIX}/signin/wecom/callback",
            "response_type": "code",
            "scope": "snsapi_base",
            "state": state,
            "agentid": w.wecom_agent_id,
        }
    )
    response = web.HTTPFound(f"{WECOM_AUTHORIZE}?{query}#wechat_redirect")
    response.set_cookie(
        STATE_COOKIE,
        state,
        path=f"{PREFIX}/signin/wecom",
        max_age=600,
        httponly=True,
        samesite="Lax",
        secure=request.config_dict[CONFIG].secure_cookies,
    )
    raise response


async def wecom_callback(request: web.Request) -> web.StreamResponse:
    w = request.config_dict[WIRING]
    if w.wecom_user is None:
        raise web.HTTPNotFound()
    if await _limited(request):
        return page(request, "signin.html", {"reason": "limited"}, status=429)
    state, expected = request.query.get("state", ""), request.cookies.get(STATE_COOKIE, "")
    code = request.query.get("code", "")
    if not state or not expected or not hmac.compare_digest(state.encode(), expected.encode()):
        return page(request, "signin.html", {"reason": "bad_state", "wecom": True}, status=403)
    user_id = None
    if code and len(code) <= 512:
        with contextlib.suppress(HomevisitError):  # WeCom down or refusing: no session
            user_id = await w.wecom_user(code)
    if not user_id:
        return page(request, "signin.html", {"reason": "wecom_refused", "wecom": True}, status=403)
    config = request.config_dict[CONFIG]
    raw, session = new_session("wecom")
    principal = await config.store.sign_in_identity("wecom", user_id, session, config.clock.now())
    if principal is None:
        return page(request, "signin.html", {"reason": "not_staff", "wecom": True}, status=403)
    await _end_current(request)
    raise _signed_in_response(request, raw)


@signed_in
async def logout(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    field = form.get("csrf_token")
    check_csrf(request, field if isinstance(field, str) else None)
    config = request.config_dict[CONFIG]
    await config.store.end_session(_me(request).session_hash, config.clock.now())
    response = web.HTTPSeeOther(f"{PREFIX}/signin?out=1")
    response.del_cookie(COOKIE, path=PREFIX)
    raise response


# ---------------------------------------------------------------------------- dashboard
@signed_in
async def dashboard(request: web.Request) -> web.StreamResponse:
    w, me, today = request.config_dict[WIRING], _me(request), _today(request)
    config = request.config_dict[CONFIG]
    cut = cutoffs(w.cadence, today, w.tz)
    d = await config.store.dashboard(me.scope, cut, today, window_start(today, w.tz), w.channels)
    by_school = me.scope.everything
    group_bars = [
        charts.Bar(
            g.label,
            g.visited,
            g.total,
            _link(
                "/students",
                state="unvisited",
                **({"school": g.key} if by_school else {"class": g.key}),
            ),
        )
        for g in d.groups
    ]
    category_bars = [
        charts.Bar(
            c.label, c.visited, c.total, _link("/students", state="unvisited", category=c.key)
        )
        for c in d.categories
    ]
    days = per_school_day(d.per_hour, today, w.tz, w.cadence.calendar)
    kinds = w.form.followup_kinds
    need_rows = [
        (
            kinds.get(n.kind, n.kind),
            n.open,
            n.done,
            _link("/followups", state="open", kind=n.kind),
            _link("/followups", state="done", kind=n.kind),
        )
        for n in d.needs
    ]
    context = {
        "d": d,
        "today": today,
        "by_school": by_school,
        "pct": charts.pct,
        "link": _link,
        "kinds": kinds,
        "group_bars": group_bars,
        "category_bars": category_bars,
        "days": days,
        "chart_groups": charts.coverage_bars(
            "按学校的覆盖率" if by_school else "按班级的覆盖率", group_bars
        ),
        "chart_categories": charts.coverage_bars("按资助类别的覆盖率", category_bars),
        "chart_days": charts.day_columns(
            "近八周每个上学日的家访次数", [(f"{x.month}/{x.day}", n) for x, n in days]
        ),
        "chart_needs": charts.need_bars("按类型的需求（待跟进/已完成）", need_rows),
    }
    return page(request, "dashboard.html", context)


# ---------------------------------------------------------------------------- lists
@signed_in
async def student_list(request: web.Request) -> web.StreamResponse:
    w, me, today = request.config_dict[WIRING], _me(request), _today(request)
    store = request.config_dict[CONFIG].store
    q = request.query
    query = StudentQuery(
        state=q.get("state", "") if q.get("state", "") in labels.STUDENT_FILTERS else "",
        class_name=q.get("class", "")[:100],
        category=q.get("category", "")[:50],
        teacher=q.get("teacher", "")[:64],
        school_id=_int(q.get("school")),
        sort=q.get("sort", "urgency"),
        descending=q.get("desc") == "1",
        page=_int(q.get("page"), 1) or 1,
        per_page=PER_PAGE,
    )
    cut = cutoffs(w.cadence, today, w.tz)
    result = await store.students(me.scope, cut, query)
    choices = await store.choices(me.scope)
    return page(
        request,
        "students.html",
        {
            "result": result,
            "query": query,
            "choices": choices,
            "filters": labels.STUDENT_FILTERS,
            "states": labels.VISIT_STATES,
            "pages": _pager_links(request, result.pages),
            "sorts": _sort_links(
                request, ["urgency", "student_no", "name", "class", "last_visit", "school"]
            ),
            "tz": w.tz,
            "by_school": me.scope.everything,
            "link": _link,
        },
    )


@signed_in
async def followup_list(request: web.Request) -> web.StreamResponse:
    w, me, today = request.config_dict[WIRING], _me(request), _today(request)
    store = request.config_dict[CONFIG].store
    q = request.query
    query = FollowUpQuery(
        state=q.get("state", "") if q.get("state", "") in labels.FOLLOWUP_FILTERS else "",
        kind=q.get("kind", "")[:30],
        owner=q.get("owner", "")[:64],
        school_id=_int(q.get("school")),
        sort=q.get("sort", "due"),
        descending=q.get("desc") == "1",
        page=_int(q.get("page"), 1) or 1,
        per_page=PER_PAGE,
    )
    result = await store.followups(me.scope, today, query)
    choices = await store.choices(me.scope)
    return page(
        request,
        "followups.html",
        {
            "result": result,
            "query": query,
            "choices": choices,
            "filters": labels.FOLLOWUP_FILTERS,
            "statuses": labels.FOLLOWUP_STATES,
            "kinds": w.form.followup_kinds,
            "pages": _pager_links(request, result.pages),
            "sorts": _sort_links(request, ["due", "created", "kind", "owner", "student"]),
            "today": today,
            "tz": w.tz,
            "by_school": me.scope.everything,
            "link": _link,
        },
    )


def answer_text(value: Any) -> str:
    if value is None:
        return "（跳过）"
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, list):
        return "、".join(answer_text(v) for v in value)
    return str(value)


def answer_lines(form: Form, answers: dict[str, Any]) -> list[tuple[str, str]]:
    """A visit's answers in the form's wording, in its order; keys the form no longer has last."""
    known = {q.key for q in form.questions}
    lines = [(q.label, answer_text(answers[q.key])) for q in form.questions if q.key in answers]
    lines += [(key, answer_text(v)) for key, v in answers.items() if key not in known]
    return lines


@signed_in
async def student_page(request: web.Request) -> web.StreamResponse:
    w, me, today = request.config_dict[WIRING], _me(request), _today(request)
    config = request.config_dict[CONFIG]
    student_id = _int(request.match_info["id"])
    if student_id is None:
        raise web.HTTPNotFound()
    cut = cutoffs(w.cadence, today, w.tz)
    detail = await config.store.student(me.scope, student_id, cut, me, config.clock.now())
    if detail is None:
        raise web.HTTPNotFound()
    return page(
        request,
        "student.html",
        {
            "s": detail,
            "states": labels.VISIT_STATES,
            "statuses": labels.FOLLOWUP_STATES,
            "roles": labels.ASSIGNMENT_ROLES,
            "kinds": w.form.followup_kinds,
            "answers": lambda v: answer_lines(w.form, dict(v.answers)),
            "tz": w.tz,
            "today": today,
            "link": _link,
            "erase_failed": request.query.get("erase") == "check",
        },
    )


async def _form_fields(request: web.Request) -> dict[str, str]:
    """A POST's fields, after its CSRF token is checked."""
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, fields.get("csrf_token"))
    return fields


@signed_in
async def student_data(request: web.Request) -> web.StreamResponse:
    """A guardian's access request: everything about the student, as JSON (audited)."""
    me, config = _me(request), request.config_dict[CONFIG]
    await _form_fields(request)
    student_id = _int(request.match_info["id"])
    found = None
    if student_id is not None:
        found = await config.store.student_data(me, student_id, config.clock.now())
    if found is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=found.data,
        headers={
            "Content-Type": found.content_type,
            "Content-Disposition": _disposition(found.filename, found.filename),
        },
    )


@signed_in
async def student_erase(request: web.Request) -> web.StreamResponse:
    """Erase a student on request: the 学籍号 typed again to confirm, and a reason."""
    me, config = _me(request), request.config_dict[CONFIG]
    fields = await _form_fields(request)
    student_id = _int(request.match_info["id"])
    if student_id is None:
        raise web.HTTPNotFound()
    reason = " ".join(fields.get("reason", "").split())[:500]
    done = await config.store.erase_student(
        me, student_id, fields.get("confirm", "")[:64], reason, config.clock.now()
    )
    if not done:
        raise web.HTTPSeeOther(f"/console/students/{student_id}?erase=check")
    raise web.HTTPSeeOther("/console/students")


# ---------------------------------------------------------------------------- roster upload
async def _read_upload(request: web.Request) -> tuple[dict[str, str], list[UploadedFile]]:
    """Fields and files of a multipart form, refusing more than MAX_UPLOAD bytes in all."""
    fields: dict[str, str] = {}
    files: list[UploadedFile] = []
    if not request.content_type.startswith("multipart/"):
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}, []
    reader = await request.multipart()
    size = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise web.HTTPBadRequest()
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_UPLOAD, actual_size=size)
            data.extend(chunk)
        if part.filename is not None:
            if data:
                files.append(UploadedFile(part.filename, bytes(data)))
        elif part.name:
            fields[part.name] = data.decode("utf-8", "replace")
    if len(files) > MAX_FILES:
        raise web.HTTPBadRequest()
    return fields, files


@signed_in
async def roster_form(request: web.Request) -> web.StreamResponse:
    return page(request, "roster.html", {"outcome": None, "counts": labels.ROSTER_COUNTS})


@signed_in
async def roster_post(request: web.Request) -> web.StreamResponse:
    fields, files = await _read_upload(request)
    check_csrf(request, fields.get("csrf_token"))
    config = request.config_dict[CONFIG]
    me = _me(request)
    apply = fields.get("action") == "apply"
    upload_id = fields.get("upload_id", "")[:100]
    if apply:
        outcome = await config.store.roster(me, None, upload_id, True, config.clock.now())
    elif files:
        outcome = await config.store.roster(me, files, "", False, config.clock.now())
    else:
        return page(
            request,
            "roster.html",
            {"outcome": None, "missing": True, "counts": labels.ROSTER_COUNTS},
            status=400,
        )
    status = 400 if outcome.problems else 200
    return page(
        request, "roster.html", {"outcome": outcome, "counts": labels.ROSTER_COUNTS}, status=status
    )


# ---------------------------------------------------------------------------- export, audit
def _disposition(filename: str, fallback: str) -> str:
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


@signed_in
async def export(request: web.Request) -> web.StreamResponse:
    """GET: without sensitive answers. POST (CSRF): with them, when a reason is given."""
    me, today = _me(request), _today(request)
    params: Mapping[str, str] = request.query
    reason: str | None = None
    if request.method == "POST":
        form = await request.post()
        field = form.get("csrf_token")
        check_csrf(request, field if isinstance(field, str) else None)
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        if params.get("include_sensitive"):
            reason = " ".join(params.get("reason", "").split())[:500]
            if not reason:
                return page(request, "export.html", {"error": "reason"}, status=400)
    fmt_text = params.get("format", "")
    if not fmt_text:
        return page(request, "export.html", {"error": ""})
    if fmt_text not in ("csv", "xlsx"):
        return page(request, "export.html", {"error": "format"}, status=400)
    fmt: ExportFormat = "csv" if fmt_text == "csv" else "xlsx"
    since = None
    if params.get("since"):
        try:
            since = date.fromisoformat(params["since"])
        except ValueError:
            return page(request, "export.html", {"error": "since"}, status=400)
    table = "followups" if params.get("table") == "followups" else "visits"
    config = request.config_dict[CONFIG]
    result = await config.store.export(me, fmt, since, table, config.clock.now(), reason)
    where = me.school_name if not me.scope.everything and me.school_name else "全区"
    what = "跟进事项" if fmt == "csv" and table == "followups" else "家访记录"
    span = f"{since.isoformat()}起" if since else "全部"
    name = f"{what}_{where}_{span}_{today.isoformat()}.{fmt}"
    fallback = f"homevisit-{table if fmt == 'csv' else 'export'}-{today.isoformat()}.{fmt}"
    return web.Response(
        body=result.data,
        headers={
            "Content-Type": result.content_type,
            "Content-Disposition": _disposition(name, fallback),
        },
    )


@signed_in
async def audit(request: web.Request) -> web.StreamResponse:
    me = _me(request)
    store = request.config_dict[CONFIG].store
    number = _int(request.query.get("page"), 1) or 1
    result = await store.audit(me.scope, number, PER_PAGE)
    return page(
        request,
        "audit.html",
        {
            "result": result,
            "actions": labels.AUDIT_ACTIONS,
            "pages": _pager_links(request, result.pages),
            "tz": request.config_dict[WIRING].tz,
        },
    )
