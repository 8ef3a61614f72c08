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
RECENT = 20  # upstream answers judged for "refused": more than half 401/403 -> failing


@dataclass
class RouteActivity:
    requests: list[int] = field(default_factory=lambda: [0] * WINDOW)
    errors: list[int] = field(default_factory=lambda: [0] * WINDOW)
    stamps: list[int] = field(default_factory=lambda: [-1] * WINDOW)
    unauthorized: Counter[str] = field(default_factory=Counter)
    last_unauthorized: float | None = None
    last_error: tuple[float, str] | None = None  # (when, reason)
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))  # 401/403?
    last_refusal: tuple[float, int, str | None] | None = None  # (when, status, its message)

    def answered(self, status: int, message: str | None, now: float) -> None:
        """One upstream answer; a 401/403 is remembered with the upstream's own message."""
        refused = status in (401, 403)
        self.recent.append(refused)
        if refused:
            self.last_refusal = (now, status, message)

    @property
    def refused(self) -> bool:
        """More than half of the last RECENT upstream answers (or of all, while fewer) were
        401/403: the route fails, whatever its token looks like from here."""
        return sum(self.recent) * 2 > len(self.recent)

    def _slot(self, second: int) -> int:
        index = second % WINDOW
        if self.stamps[index] != second:  # a slot from a previous lap: start it afresh
            self.stamps[index] = second
            self.requests[index] = 0
            self.errors[index] = 0
        return index

    def record(self, now: float, error: bool) -> None:
        index = self._slot(int(now))
        self.requests[index] += 1
        if error:
            self.errors[index] += 1

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

    def upstream_error(self, route: str, reason: str, now: float) -> None:
        self.route(route).last_error = (now, reason)
