"""Each route's recent activity, for the status page: the last five minutes of traffic.

`Activity` counts each route's requests and errors in one-second slots (a fixed 300-slot ring
per route, so memory does not grow with traffic), its upstream 401s by cause, its last 20
upstream answers (refused or not) with the last refusal's message, and its last upstream
error. Kept across config reloads (keyed by route name).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

WINDOW = 300  # seconds of traffic the page shows
STEP = 10  # seconds per point of the page's traffic sparkline (30 points)
RECENT = 20  # upstream answers judged for "refused": more than half 401/403 -> failing


@dataclass
class RouteActivity:
    requests: list[int] = field(default_factory=lambda: [0] * WINDOW)
    errors: list[int] = field(default_factory=lambda: [0] * WINDOW)
    stamps: list[int] = field(default_factory=lambda: [-1] * WINDOW)
    denied: list[int] = field(default_factory=lambda: [0] * WINDOW)  # upstream 401s
    unauthorized: Counter[str] = field(default_factory=Counter)
    last_unauthorized: float | None = None
    last_error: tuple[float, str] | None = None  # (when, reason)
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))  # the token's fault?
    last_refusal: tuple[float, int, str | None] | None = None  # (when, status, its message)
    forbidden: int = 0  # upstream 403s since start: shown, never judged

    def answered(self, status: int, message: str | None, now: float, blames_token: bool) -> None:
        """One upstream answer; a 401/403 is remembered with the upstream's own message.
        `blames_token`: a 401 whose cause is the token's (`tokens.health.TOKEN_CAUSES`)."""
        self.recent.append(blames_token)
        if status in (401, 403):
            self.last_refusal = (now, status, message)
            self.forbidden += status == 403

    @property
    def refused(self) -> bool:
        """More than half of the last RECENT upstream answers (or of all, while fewer) were
        401s that blame the token: the route fails, whatever its token looks like from here.
        403s (what the key's role may not do) and a request's own faults never count: any
        client could otherwise make a healthy route look revoked."""
        return sum(self.recent) * 2 > len(self.recent)

    def slot(self, second: int) -> int:
        """The ring index for `second`, emptied first when it holds an older lap's counts."""
        index = second % WINDOW
        if self.stamps[index] != second:  # a slot from a previous lap: start it afresh
            self.stamps[index] = second
            self.requests[index] = 0
            self.errors[index] = 0
            self.denied[index] = 0
        return index

    def record(self, now: float, error: bool) -> None:
        index = self.slot(int(now))
        self.requests[index] += 1
        if error:
            self.errors[index] += 1

    def series(self, now: float) -> dict[str, list[int]]:
        """Requests, errors and upstream 401s per STEP seconds over the window, oldest first."""
        end = int(now)
        out: dict[str, list[int]] = {"requests": [], "errors": [], "unauthorized": []}
        for start in range(end - WINDOW + 1, end + 1, STEP):
            live = [s % WINDOW for s in range(start, start + STEP) if self.stamps[s % WINDOW] == s]
            out["requests"].append(sum(self.requests[i] for i in live))
            out["errors"].append(sum(self.errors[i] for i in live))
            out["unauthorized"].append(sum(self.denied[i] for i in live))
        return out

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now) - WINDOW
        live = [i for i, stamp in enumerate(self.stamps) if stamp > oldest]
        return sum(self.requests[i] for i in live), sum(self.errors[i] for i in live)


class Activity:
    """Per-route activity, kept across config reloads (keyed by route name)."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteActivity] = {}

    def route(self, name: str) -> RouteActivity:
        activity = self.routes.get(name)
        if activity is None:
            activity = self.routes[name] = RouteActivity()
        return activity

    def unauthorized(self, route: str, cause: str, now: float) -> None:
        activity = self.route(route)
        activity.unauthorized[cause] += 1
        activity.last_unauthorized = now
        activity.denied[activity.slot(int(now))] += 1

    def upstream_error(self, route: str, reason: str, now: float) -> None:
        self.route(route).last_error = (now, reason)
