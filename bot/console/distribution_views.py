"""The console's distribution pages: batch distributions (/console/distributions), each one's
recipients and progress, delivery marks, and the printable 发放台账 (.xlsx).

Like the other pages they pass the signed-in user to the store
(`bot.core.distributions.DistributionStore`), which keeps to their scope; every POST checks the
session's CSRF token first.
"""

from __future__ import annotations

import re

from aiohttp import web

from bot.console.auth import CONFIG, PREFIX, PRINCIPAL, check_csrf, page, signed_in
from bot.console.views import WIRING, _disposition, _int
from bot.core.console_ports import Principal
from bot.core.distributions import DistributionError, DistributionStore

DISTRIBUTIONS = web.AppKey("console_distributions", DistributionStore)
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_NOS = re.compile(r"[\s,，、;；]+")
_NOTHING_MARKED = "请勾选已送达的学生 / tick the students who received it"


def _me(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


async def _list_page(
    request: web.Request, error: str = "", status: int = 200, title: str = ""
) -> web.Response:
    store = request.config_dict[DISTRIBUTIONS]
    me = _me(request)
    return page(
        request,
        "distributions.html",
        {
            "items": await store.distributions(me),
            "form": await store.form(me),
            "error": error,
            "title": title,
            "tz": request.config_dict[WIRING].tz,
        },
        status=status,
    )


@signed_in
async def distribution_list(request: web.Request) -> web.StreamResponse:
    return await _list_page(request)


@signed_in
async def distribution_create(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form.get("csrf_token")
    check_csrf(request, token if isinstance(token, str) else "")
    title = str(form.get("title", ""))[:200]
    categories = [str(c)[:50] for c in form.getall("category", []) if isinstance(c, str)][:50]
    nos = [n for n in _NOS.split(str(form.get("student_nos", ""))[:100_000]) if n]
    school_text = str(form.get("school", "")).strip()
    school = _int(school_text) if school_text else None
    if school_text and school is None:
        return await _list_page(request, "学校不对 / no such school", 400, title)
    try:
        new_id = await request.config_dict[DISTRIBUTIONS].create(
            _me(request), title, categories, nos, school, request.config_dict[CONFIG].clock.now()
        )
    except DistributionError as exc:
        return await _list_page(request, str(exc), 400, title)
    raise web.HTTPSeeOther(f"{PREFIX}/distributions/{new_id}?created=1")


async def _detail_page(
    request: web.Request, distribution_id: int | None, error: str = "", status: int = 200
) -> web.Response:
    found = None
    if distribution_id is not None:
        found = await request.config_dict[DISTRIBUTIONS].view(_me(request), distribution_id)
    if found is None:
        raise web.HTTPNotFound()
    return page(
        request,
        "distribution.html",
        {
            "d": found,
            "error": error,
            "created": request.query.get("created") == "1",
            "marked": request.query.get("marked", ""),
            "tz": request.config_dict[WIRING].tz,
        },
        status=status,
    )


@signed_in
async def distribution_page(request: web.Request) -> web.StreamResponse:
    return await _detail_page(request, _int(request.match_info["id"]))


@signed_in
async def distribution_deliver(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form.get("csrf_token")
    check_csrf(request, token if isinstance(token, str) else "")
    distribution_id = _int(request.match_info["id"])
    ids = [_int(str(v)) for v in form.getall("student", [])][:5000]
    chosen = [i for i in ids if i is not None]
    if distribution_id is None:
        raise web.HTTPNotFound()
    if not chosen:
        return await _detail_page(request, distribution_id, _NOTHING_MARKED, 400)
    try:
        marked = await request.config_dict[DISTRIBUTIONS].deliver(
            _me(request), distribution_id, chosen, request.config_dict[CONFIG].clock.now()
        )
    except DistributionError:
        raise web.HTTPNotFound() from None
    raise web.HTTPSeeOther(f"{PREFIX}/distributions/{distribution_id}?marked={marked}")


@signed_in
async def distribution_ledger(request: web.Request) -> web.StreamResponse:
    distribution_id = _int(request.match_info["id"])
    found = None
    if distribution_id is not None:
        found = await request.config_dict[DISTRIBUTIONS].ledger(
            _me(request), distribution_id, request.config_dict[CONFIG].clock.now()
        )
    if found is None:
        raise web.HTTPNotFound()
    name, data = found
    return web.Response(
        body=data,
        headers={
            "Content-Type": XLSX,
            "Content-Disposition": _disposition(name, f"ledger-{distribution_id}.xlsx"),
        },
    )
