"""What is judged across routes, once each route is parsed: where each bucket lives, budgets
paced at two speeds, the pacing hint for preset routes, and which clients may use which route."""

from __future__ import annotations

from proxy.config.budgets import check_budgets, resolve_stores
from proxy.config.clients import check_clients
from proxy.config.listen import Listen
from proxy.config.model import Route
from proxy.config.presets import pacing_hint
from proxy.config.readers import Errors


def across_routes(
    routes: tuple[Route, ...], written: object, listen: Listen, shared: bool, errs: Errors
) -> tuple[Route, ...]:
    """What is judged across routes: where each bucket lives, budgets paced at two speeds, the
    pacing hint for preset routes, and which clients may use which route."""
    routes = resolve_stores(routes, shared, errs)
    check_budgets(routes, errs)
    pacing_hint(routes, errs)
    check_clients(listen.clients, listen.client_token is not None, written, errs)
    return routes
