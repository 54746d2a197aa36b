"""The console's aid pages: screening lists (/console/screen) and aid stock (/console/aid).

Like the other pages they only pass the signed-in user to the store (`bot.core.aid.AidStore`),
which keeps to their scope; every POST checks the session's CSRF token first.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from bot.console.auth import CONFIG, PREFIX, PRINCIPAL, check_csrf, page, signed_in
from bot.console.views import WIRING, _read_upload
from bot.core.aid import METHODS, POOL, STATUS_LABELS, AidStore, StockError
from bot.core.console_ports import Principal

AID = web.AppKey("console_aid", AidStore)
REASON_LABELS = {"arrival": "入库", "correction": "更正"}
_CHOOSE = "请从列表中选择学生和库存所在 / choose from the list"
LEDGER_LABELS = {**REASON_LABELS, "allocation": "发放"}


def _me(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


# ---------------------------------------------------------------------------- screening
@signed_in
async def screen_form(request: web.Request) -> web.StreamResponse:
    return page(request, "screen.html", {"outcome": None, "missing": False})


@signed_in
async def screen_post(request: web.Request) -> web.StreamResponse:
    fields, files = await _read_upload(request)
    check_csrf(request, fields.get("csrf_token"))
    aid, now = request.config_dict[AID], request.config_dict[CONFIG].clock.now()
    me = _me(request)
    if fields.get("action") == "apply":
        upload_id = fields.get("upload_id", "")[:100]
        outcome = await aid.screen(me, None, "", upload_id, True, now)
    elif files:
        outcome = await aid.screen(me, files, fields.get("source", "")[:100], "", False, now)
    else:
        return page(request, "screen.html", {"outcome": None, "missing": True}, status=400)
    status = 400 if outcome.problems else 200
    return page(request, "screen.html", {"outcome": outcome, "missing": False}, status=status)


# ---------------------------------------------------------------------------- stock
async def _stock_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    aid, me = request.config_dict[AID], _me(request)
    view = await aid.stock(me)
    linked = [s.item for s in view.supply if s.linked]
    item = request.query.get("item", "")
    item = item if item in linked else (linked[0] if linked else "")
    now = request.config_dict[CONFIG].clock.now()
    needs = await aid.open_needs(me, item, now) if item else []
    return page(
        request,
        "aid.html",
        {
            "view": view,
            "error": error,
            "done": request.query.get("done", ""),
            "reasons": REASON_LABELS,
            "ledger_labels": LEDGER_LABELS,
            "tz": request.config_dict[WIRING].tz,
            "pool": POOL,
            "item": item,
            "linked": linked,
            "needs": needs,
            "methods": METHODS,
            "allocations": await aid.allocations(me),
            "status_labels": STATUS_LABELS,
        },
        status=status,
    )


@signed_in
async def aid_page(request: web.Request) -> web.StreamResponse:
    return await _stock_page(request)


def _whole(text: str) -> int | None:
    text = text.strip().replace("＋", "+").replace("－", "-")
    digits = text.lstrip("+-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        return None
    return -int(digits) if text.startswith("-") else int(digits)


@signed_in
async def aid_post(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, fields.get("csrf_token"))
    change, holder = _whole(fields.get("change", "")), _whole(fields.get("school", ""))
    if change is None or holder is None:
        return await _stock_page(request, "数量和学校必须是整数 / whole numbers please", 400)
    try:
        await request.config_dict[AID].change_stock(
            _me(request),
            holder,
            fields.get("item", "")[:100],
            change,
            fields.get("reason", ""),
            fields.get("note", "").strip(),
            request.config_dict[CONFIG].clock.now(),
        )
    except StockError as exc:
        return await _stock_page(request, str(exc), 400)
    raise web.HTTPSeeOther(f"{PREFIX}/aid?done=1")


async def _fields(request: web.Request) -> tuple[dict[str, str], list[str]]:
    """The form's text fields, and every value of `need` (the students ticked)."""
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, fields.get("csrf_token"))
    return fields, [v for v in form.getall("need", []) if isinstance(v, str)]


@signed_in
async def allocate_post(request: web.Request) -> web.StreamResponse:
    fields, chosen = await _fields(request)
    holder = _whole(fields.get("school", ""))
    ids = [_whole(v) for v in chosen[:1000]]
    if holder is None or any(i is None or i <= 0 for i in ids):
        return await _stock_page(request, _CHOOSE, 400)
    item = fields.get("item", "")[:100]
    try:
        await request.config_dict[AID].allocate(
            _me(request),
            holder,
            item,
            [i for i in ids if i is not None],
            fields.get("method", ""),
            fields.get("tracking", "")[:200],
            request.config_dict[CONFIG].clock.now(),
        )
    except StockError as exc:
        return await _stock_page(request, str(exc), 400)
    raise web.HTTPSeeOther(f"{PREFIX}/aid?{urlencode({'done': 'allocated', 'item': item})}")


@signed_in
async def deliver_post(request: web.Request) -> web.StreamResponse:
    fields, _ = await _fields(request)
    allocation = _whole(fields.get("allocation", ""))
    if allocation is None or allocation <= 0:
        return await _stock_page(request, "没有这条发放记录 / no such allocation", 400)
    try:
        await request.config_dict[AID].deliver(
            _me(request), allocation, request.config_dict[CONFIG].clock.now()
        )
    except StockError as exc:
        return await _stock_page(request, str(exc), 400)
    raise web.HTTPSeeOther(f"{PREFIX}/aid?done=delivered")
