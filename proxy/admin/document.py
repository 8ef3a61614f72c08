"""`/status.json`: the admin listener's document of every route's token, traffic and refusals.

The HTML page (`admin.page`) and `token-info --json` render the same token view
(`RouteStatus.as_dict`), so there is one source of truth. Schema in docs/status.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from proxy import __version__
from proxy.config import Config, Route
from proxy.observe.activity import STEP, WINDOW, Activity, RouteActivity
from proxy.tokens import Credential, RouteStatus
from proxy.tokens.health import EXPIRING, token_state


def route_state(status: RouteStatus, activity: RouteActivity, now: float) -> str:
    """The token's state, but `refused` when Amperity refuses most requests with a token
    that looks fine from here (another tenant's, a revoked one): never a green OK then."""
    state = token_state(status, now)
    if activity.refused and state in ("ok", "expiring", "failing"):
        return "refused"
    return state


def _token(shown: dict[str, Any], cred: Credential | None, now: float) -> dict[str, Any]:
    return {
        "source": shown["source"],
        "fingerprint": shown["fingerprint"],
        "subject": cred.subject if cred else None,
        "issued_at": (cred.issued_at or cred.loaded_at) if cred else None,
        "expires_at": shown["expires_at"],
        "seconds_left": round(cred.expires_at - now) if cred and cred.expires_at else None,
        "tokens": shown["tokens"],
    }


def _route(
    route: Route, status: RouteStatus, act: RouteActivity, now: float, limiter: str | None
) -> dict[str, Any]:
    """One route's part of the document."""
    requests, errors = act.totals(now)
    current = status.current
    cred = current.credential if current else None
    return {
        "name": route.name,
        "prefix": route.prefix,
        "tenant": route.tenant,
        "api": route.api,  # amperity, profile or streaming (the route's preset)
        "base_url": str(route.base_url),
        "state": route_state(status, act, now),
        "rate_limit": limiter,  # local, shared, fallback (Redis unreachable); None: no pacing
        "token": _token(status.as_dict(now, EXPIRING), cred, now),
        "traffic": {
            "window_seconds": WINDOW,
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "step_seconds": STEP,
            "series": act.series(now),  # per step, oldest first: requests, errors, unauthorized
        },
        "unauthorized": {
            "by_cause": dict(act.unauthorized),
            "last_at": act.last_unauthorized,
        },
        "refusals": {
            "recent": sum(act.recent),
            "of": len(act.recent),
            "forbidden": act.forbidden,
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
            {"at": act.last_error[0], "reason": act.last_error[1]} if act.last_error else None
        ),
    }


def status_document(
    config: Config,
    statuses: list[RouteStatus],
    activity: Activity,
    *,
    started_at: float,
    ready: bool,
    draining: bool,
    reload: dict[str, Any],
    limiter: Callable[[Route], str] = lambda route: "local",
    now: float | None = None,
) -> dict[str, Any]:
    """`/status.json` (schema in docs/status.md). Never a token, a secret or a query."""
    now = time.time() if now is None else now
    by_name = {s.route: s for s in statuses}
    routes = [
        _route(
            route,
            by_name.get(route.name) or RouteStatus(route.name, route.tenant, (), {}),
            activity.route(route.name),
            now,
            limiter(route) if route.rate_limit is not None else None,
        )
        for route in config.routes
    ]
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
