"""Which requests draw on one rate budget: Amperity counts calls per origin, tenant and
endpoint, whichever route (or process) they came through.

`rate_limit.key: endpoint` (the default) puts a route's buckets in the scope of its upstream
origin and tenant, so two routes for one tenant (a read-only one and a full one) share each
endpoint's bucket; `key: route` keeps one bucket for the route alone, as before. Routes that
share a scope must agree on the rate, or one bucket would be paced at two speeds: that is a
config error naming both routes.
"""

from __future__ import annotations

import dataclasses

from proxy.config.model import Route
from proxy.config.readers import Errors
from proxy.config.traffic import RateStore

Scope = tuple[str, ...]


def check_budgets(routes: tuple[Route, ...], errs: Errors) -> None:
    """Routes that share a budget scope but pace it differently are an error."""
    first: dict[Scope, tuple[int, Route]] = {}
    for i, route in enumerate(routes):
        limit = route.rate_limit
        if limit is None:
            continue
        scope = route.budget
        if scope not in first:
            first[scope] = (i, route)
            continue
        j, other = first[scope]
        theirs = other.rate_limit
        assert theirs is not None
        mine = (limit.requests_per_second, limit.burst, limit.store)
        if mine != (theirs.requests_per_second, theirs.burst, theirs.store):
            errs.add(
                f"routes[{i}].rate_limit",
                f"route {route.name} and route {other.name} (routes[{j}]) draw on the same "
                f"budget ({' '.join(scope[1:])}), but pace it differently ({_pace(limit)} vs "
                f"{_pace(theirs)}); give both the same requests_per_second, burst and store, or "
                "set key: route on one",
            )


def _pace(limit: object) -> str:
    rate, burst, store = (getattr(limit, k) for k in ("requests_per_second", "burst", "store"))
    return f"{rate:g}/s, burst {burst}, {store}"


def resolve_stores(routes: tuple[Route, ...], shared: bool, errs: Errors) -> tuple[Route, ...]:
    """Resolve each `rate_limit.store`: shared when `shared:` is configured, else local."""
    resolved = []
    for i, route in enumerate(routes):
        limit = route.rate_limit
        if limit is not None and limit.store == "shared" and not shared:
            errs.add(
                f"routes[{i}].rate_limit.store",
                "shared needs a shared.redis section (url: redis://host:6379/0); "
                "or write store: local",
            )
        elif limit is not None and limit.store is None:
            store: RateStore = "shared" if shared else "local"
            route = dataclasses.replace(route, rate_limit=dataclasses.replace(limit, store=store))
        resolved.append(route)
    return tuple(resolved)
