"""The console's aid reviews (/console/reviews): families found in new hardship and students
teachers reported, waiting for 资助认定 or decided (decided in chat: `认定 N 类别`), and the
spring aid list download (/console/reviews/aid-list.csv).

Like the other pages they pass the signed-in user to the store, which keeps to their scope.
"""

from __future__ import annotations

from aiohttp import web

from bot.console.auth import CONFIG, PRINCIPAL, page, signed_in
from bot.console.views import WIRING, _disposition
from bot.core.console_ports import Principal
from bot.core.reviews import REVIEW_CATEGORIES, ReviewStatus, ReviewStore

REVIEWS = web.AppKey("console_reviews", ReviewStore)
STATUS_LABELS = {
    ReviewStatus.OPEN: "待认定",
    ReviewStatus.APPROVED: "已认定",
    ReviewStatus.DECLINED: "不予认定",
}


@signed_in
async def review_list(request: web.Request) -> web.StreamResponse:
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
        },
    )


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
