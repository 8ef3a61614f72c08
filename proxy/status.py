"""The status page's data: tokens, upstream health and the last five minutes of traffic.

`Activity` counts each route's requests and errors in one-second slots (a fixed 300-slot ring
per route, so memory does not grow with traffic), its upstream 401s by cause, and its last
upstream error. `status_document` assembles `/status.json`; the HTML page and `token-info --json`
render the same token view (`RouteStatus.as_dict`), so there is one source of truth.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from proxy import __version__
from proxy.config import Config
from proxy.tokens import RouteStatus

WINDOW = 300  # seconds of traffic the page shows
EXPIRING = 7 * 86400
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


def token_state(status: RouteStatus, now: float) -> str:
    """ok, expiring (within 7 days), expired, failing (a source can't be read), missing."""
    current = status.current
    if current is None or current.credential is None:
        return "missing"
    state = current.state(now, EXPIRING)
    if state in ("expired", "expiring"):
        return state
    return "failing" if any(t.failing for t in status.tokens) else "ok"


def route_state(status: RouteStatus, activity: RouteActivity, now: float) -> str:
    """The token's state, but `refused` when Amperity refuses most requests with a token
    that looks fine from here (another tenant's, a revoked one): never a green OK then."""
    state = token_state(status, now)
    if activity.refused and state in ("ok", "expiring", "failing"):
        return "refused"
    return state


def status_document(
    config: Config,
    statuses: list[RouteStatus],
    activity: Activity,
    *,
    started_at: float,
    ready: bool,
    draining: bool,
    reload: dict[str, Any],
    now: float | None = None,
) -> dict[str, Any]:
    """`/status.json` (schema in docs/status.md). Never a token, a secret or a query."""
    now = time.time() if now is None else now
    by_name = {s.route: s for s in statuses}
    routes = []
    for route in config.routes:
        status = by_name.get(route.name) or RouteStatus(route.name, route.tenant, (), {})
        act = activity.route(route.name)
        requests, errors = act.totals(now)
        token = status.as_dict(now, EXPIRING)
        current = status.current
        cred = current.credential if current else None
        routes.append(
            {
                "name": route.name,
                "prefix": route.prefix,
                "tenant": route.tenant,
                "base_url": str(route.base_url),
                "state": route_state(status, act, now),
                "token": {
                    "source": token["source"],
                    "fingerprint": token["fingerprint"],
                    "subject": cred.subject if cred else None,
                    "issued_at": (cred.issued_at or cred.loaded_at) if cred else None,
                    "expires_at": token["expires_at"],
                    "seconds_left": round(cred.expires_at - now)
                    if cred and cred.expires_at
                    else None,
                    "tokens": token["tokens"],
                },
                "traffic": {
                    "window_seconds": WINDOW,
                    "requests": requests,
                    "errors": errors,
                    "error_rate": round(errors / requests, 4) if requests else 0.0,
                },
                "unauthorized": {
                    "by_cause": dict(act.unauthorized),
                    "last_at": act.last_unauthorized,
                },
                "refusals": {
                    "recent": sum(act.recent),
                    "of": len(act.recent),
                    "last": (
                        {
                            "at": act.last_refusal[0],
                            "status": act.last_refusal[1],
                            "message": act.last_refusal[2],
                        }
                        if act.last_refusal
                        else None
                    ),
                },
                "last_upstream_error": (
                    {"at": act.last_error[0], "reason": act.last_error[1]}
                    if act.last_error
                    else None
                ),
            }
        )
    return {
        "version": __version__,
        "now": now,
        "started_at": started_at,
        "uptime_seconds": round(now - started_at),
        "ready": ready,
        "draining": draining,
        "reload": reload,
        "routes": routes,
    }
