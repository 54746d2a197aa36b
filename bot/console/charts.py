"""Charts as SVG drawn on the server: no script, no web font, nothing fetched.

Hand-written rather than a chart library: the console needs three simple shapes (coverage bars,
a column per school day, stacked need bars), each bar must be a link to the list behind it, and
the page's Content-Security-Policy forbids inline styles, which the SVG of chart libraries such as
pygal relies on (and pygal's interactivity is JavaScript). Colours are presentation attributes;
sizes come from the viewBox, so a chart scales to a 375 px phone and to paper. Every chart has a
<title> and its numbers are also printed beside or below it in text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

DONE = "#2e7d32"
TODO = "#c62828"
OPEN = "#ef6c00"
TRACK = "#e0e0e0"
INK = "#212121"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    total: int
    href: str


def pct(value: int, total: int) -> str:
    return f"{value * 100 // total}%" if total else "-"


def _svg(title: str, width: int, height: int, body: list[str]) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" class="chart" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def coverage_bars(title: str, bars: Sequence[Bar]) -> Markup:
    """One horizontal bar per row: the visited share in green over the total, label and
    'visited/total (pct)' as text; each row links to its list."""
    width, row_h, label_w, bar_w = 360, 26, 110, 160
    body = []
    for i, bar in enumerate(bars):
        y = i * row_h
        share = bar.value / bar.total if bar.total else 0
        body.append(
            f'<a href="{escape(bar.href)}"><g>'
            f'<text x="0" y="{y + 17}" font-size="12" fill="{INK}">{escape(bar.label[:9])}</text>'
            f'<rect x="{label_w}" y="{y + 5}" width="{bar_w}" height="14" fill="{TRACK}"/>'
            f'<rect x="{label_w}" y="{y + 5}" width="{bar_w * share:.1f}" height="14" '
            f'fill="{DONE}"/>'
            f'<text x="{label_w + bar_w + 6}" y="{y + 17}" font-size="12" fill="{INK}">'
            f"{bar.value}/{bar.total} {pct(bar.value, bar.total)}</text></g></a>"
        )
    return _svg(title, width, max(row_h, len(bars) * row_h), body)


def day_columns(title: str, days: Sequence[tuple[str, int]]) -> Markup:
    """A column per day (label 'M/D'); the first day of each week is labelled."""
    width, height, top, bottom = 360, 150, 14, 22
    peak = max((n for _, n in days), default=0) or 1
    step = (width - 30) / max(len(days), 1)
    body = [
        f'<line x1="28" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        f'stroke="{INK}" stroke-width="0.5"/>',
        f'<text x="0" y="{top + 4}" font-size="10" fill="{INK}">{peak}</text>',
        f'<text x="0" y="{height - bottom}" font-size="10" fill="{INK}">0</text>',
    ]
    for i, (label, n) in enumerate(days):
        h = (height - top - bottom) * n / peak
        x = 30 + i * step
        body.append(
            f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{max(step - 1.5, 1):.1f}" '
            f'height="{h:.1f}" fill="{DONE}"><title>{escape(label)}：{n}</title></rect>'
        )
        if i % 5 == 0:
            body.append(
                f'<text x="{x:.1f}" y="{height - 6}" font-size="9" fill="{INK}">'
                f"{escape(label)}</text>"
            )
    return _svg(title, width, height, body)


def need_bars(title: str, rows: Sequence[tuple[str, int, int, str, str]]) -> Markup:
    """(label, open, done, open href, done href): a stacked bar per kind, open then done."""
    width, row_h, label_w, bar_w = 360, 26, 90, 190
    peak = max((o + d for _, o, d, _, _ in rows), default=0) or 1
    body = []
    for i, (label, n_open, n_done, open_href, done_href) in enumerate(rows):
        y = i * row_h
        w_open = bar_w * n_open / peak
        w_done = bar_w * n_done / peak
        body.append(
            f'<text x="0" y="{y + 17}" font-size="12" fill="{INK}">{escape(label)}</text>'
            f'<a href="{escape(open_href)}"><rect x="{label_w}" y="{y + 5}" '
            f'width="{w_open:.1f}" height="14" fill="{OPEN}"><title>待跟进 {n_open}</title>'
            f"</rect></a>"
            f'<a href="{escape(done_href)}"><rect x="{label_w + w_open:.1f}" y="{y + 5}" '
            f'width="{w_done:.1f}" height="14" fill="{DONE}"><title>已完成 {n_done}</title>'
            f"</rect></a>"
            f'<text x="{label_w + w_open + w_done + 6:.1f}" y="{y + 17}" font-size="12" '
            f'fill="{INK}">{n_open}/{n_open + n_done}</text>'
        )
    return _svg(title, width, max(row_h, len(rows) * row_h), body)
