"""The console's aid reviews (/console/reviews): families found in new hardship and students
teachers reported, waiting for 资助认定 or decided (decided in chat: `认定 N 类别`), and the
spring aid list download (/console/reviews/aid-list.csv).

Like the other pages they pass the signed-in user to the store, which keeps to their scope.
"""

from __future__ import annotations

from aiohttp import web

from bot.console.auth import CONFIG, PREFIX, PRINCIPAL, check_csrf, page, signed_in
from bot.console.views import WIRING, _disposition, _int
from bot.core.console_ports import Principal
from bot.core.reviews import REVIEW_CATEGORIES, ReviewError, ReviewStatus, ReviewStore

REVIEWS = web.AppKey("console_reviews", ReviewStore)
STATUS_LABELS = {
    ReviewStatus.OPEN: "待认定",
    ReviewStatus.APPROVED: "已认定",
    ReviewStatus.DECLINED: "不予认定",
}


async def _list_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    me: Principal = request[PRINCIPAL]
    found = await request.config_dict[REVIEWS].reviews(me)
    return page(
        request,
        "reviews.html",
        {
            "waiting": [r for r in found if r.status is ReviewStatus.OPEN],
            "decided": [r for r in found if r.status is not ReviewStatus.OPEN],
            "labels": STATUS_LABELS,
            "categories": REVIEW_CATEGORIES,
            "tz": request.config_dict[WIRING].tz,
            "error": error,
            "done": request.query.get("done", "") if not error else "",
            "told": request.query.get("told") == "1",
        },
        status=status,
    )


@signed_in
async def review_list(request: web.Request) -> web.StreamResponse:
    return await _list_page(request)


@signed_in
async def review_decide(request: web.Request) -> web.StreamResponse:
    """认定 (a category) or 不认定 (a reason) one review, as `认定 N 类别` does in chat."""
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, fields.get("csrf_token"))
    review_id = _int(request.match_info["id"])
    if review_id is None:
        raise web.HTTPNotFound()
    approve = fields.get("decision") == "approve"
    category = fields.get("category", "")[:50] if approve else None
    try:
        decided, told = await request.config_dict[REVIEWS].decide(
            request[PRINCIPAL],
            review_id,
            category,
            fields.get("reason", "")[:1000] if not approve else "",
            request.config_dict[CONFIG].clock.now(),
        )
    except ReviewError as exc:
        return await _list_page(request, str(exc), 400)
    done = decided.status.value
    raise web.HTTPSeeOther(f"{PREFIX}/reviews?done={done}&told={int(told)}")


@signed_in
async def aid_list(request: web.Request) -> web.StreamResponse:
    me: Principal = request[PRINCIPAL]
    now = request.config_dict[CONFIG].clock.now()
    data = await request.config_dict[REVIEWS].aid_list(me, now)
    day = now.astimezone(request.config_dict[WIRING].tz).strftime("%Y%m%d")
    return web.Response(
        body=data,
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": _disposition(f"春季资助名单-{day}.csv", f"aid-list-{day}.csv"),
        },
    )
