"""The status page's two pictures, drawn on the server as inline SVG: a token's lifetime (issued
to expires, with now marked and the last 7 days and last day shaded) and a route's last five
minutes of traffic.

Inline SVG needs nothing the page's strict Content-Security-Policy forbids: no style attributes
(presentation attributes only), no scripts, no external images. Each picture is readable
without colour: zones are hatched and labelled, lines are solid or dashed, 401s are triangles,
and each SVG has a text title for screen readers.
"""

from __future__ import annotations

from html import escape

from proxy.tokens.health import EXPIRING

LAST_DAY = 86400  # seconds: the critical zone, as the 1-day alert and log warning
WIDTH = 320
_INK, _MUTED, _OK, _WARN, _BAD = "#1d2330", "#5b6478", "#1f9d55", "#b07d00", "#d42f2f"

_PATTERNS = f"""<defs>
<pattern id="warn" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
<rect width="6" height="6" fill="#fff1c2"/><line x1="0" y1="0" x2="0" y2="6" stroke="{_WARN}" stroke-width="2"/></pattern>
<pattern id="bad" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#fde0e0"/><path d="M0 0L6 6M6 0L0 6" stroke="{_BAD}" stroke-width="1.2"/></pattern>
</defs>"""


def lifetime(issued: float | None, expires: float | None, now: float) -> str:
    """The token's lifetime bar; "" for a token without both claims."""
    if issued is None or expires is None or expires <= issued:
        return ""
    span = expires - issued

    def x(t: float) -> float:
        return round(max(0.0, min(1.0, (t - issued) / span)) * WIDTH, 1)

    warn, bad = x(expires - EXPIRING), x(expires - LAST_DAY)
    marker = x(now)
    expired = now >= expires
    parts = [
        f'<rect x="0" y="14" width="{WIDTH}" height="12" fill="#dcf3e5" stroke="{_MUTED}"/>',
        f'<rect x="{warn}" y="14" width="{bad - warn}" height="12" fill="url(#warn)"/>',
        f'<rect x="{bad}" y="14" width="{WIDTH - bad}" height="12" fill="url(#bad)"/>',
        f'<line x1="{marker}" y1="8" x2="{marker}" y2="30" stroke="{_INK}" stroke-width="2"/>',
        f'<text x="{_label_x(marker)}" y="8" font-size="11" fill="{_INK}" '
        f'text-anchor="middle">{"expired" if expired else "now"}</text>',
        f'<text x="0" y="40" font-size="11" fill="{_MUTED}">issued</text>',
        f'<text x="{WIDTH}" y="40" font-size="11" fill="{_MUTED}" text-anchor="end">expires</text>',
    ]
    # Zone labels where they fit between "issued" (left) and "expires" (right) and each other.
    if bad - warn >= 18 and 34 <= warn <= WIDTH - 64:
        parts.append(f'<text x="{warn + 2}" y="40" font-size="11" fill="{_WARN}">7 d</text>')
    if 34 <= bad <= WIDTH - 64 and bad - warn >= 22:
        parts.append(f'<text x="{bad + 2}" y="40" font-size="11" fill="{_BAD}">1 d</text>')
    title = "token expired" if expired else f"{(expires - now) / span:.0%} of the lifetime left"
    return _svg("lifetime", 42, title, _PATTERNS + "".join(parts))


def sparkline(series: dict[str, list[int]], step: int) -> str:
    """Requests (solid), errors (dashed) and upstream 401s (triangles) per `step` seconds."""
    requests, errors, denied = series["requests"], series["errors"], series["unauthorized"]
    points = len(requests)
    if points < 2:
        return ""
    top = max(max(requests), 1)
    height, base = 34, 36

    def xy(i: int, value: int) -> str:
        return f"{round(i * WIDTH / (points - 1), 1)},{round(base - value * height / top, 1)}"

    line = " ".join(xy(i, v) for i, v in enumerate(requests))
    dashed = " ".join(xy(i, v) for i, v in enumerate(errors))
    marks = "".join(
        f'<path d="M{round(i * WIDTH / (points - 1), 1)} 38l-4 6h8z" fill="{_BAD}"/>'
        for i, v in enumerate(denied)
        if v
    )
    body = (
        f'<line x1="0" y1="{base}" x2="{WIDTH}" y2="{base}" stroke="#c9cfdb"/>'
        f'<polyline points="{line}" fill="none" stroke="{_OK}" stroke-width="2"/>'
        f'<polyline points="{dashed}" fill="none" stroke="{_BAD}" stroke-width="1.5" '
        f'stroke-dasharray="4 3"/>{marks}'
        f'<text x="0" y="56" font-size="11" fill="{_MUTED}">{points * step // 60} min: '
        f"— requests (max {top}/{step} s) · - - errors · ▲ 401s</text>"
    )
    title = f"{sum(requests)} requests, {sum(errors)} errors, {sum(denied)} upstream 401s"
    return _svg("sparkline", 58, title, body)


def _label_x(marker: float) -> float:
    return max(20.0, min(WIDTH - 24.0, marker))  # "expired" stays inside the picture


def _svg(kind: str, height: int, title: str, body: str) -> str:
    return (
        f'<svg class="{kind}" role="img" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )
