"""Amperity's three REST APIs as route presets (`api: amperity | profile | streaming`).

A preset sets what its API needs where the route does not say otherwise: precedence is a route's
own keys > its preset's values > `defaults` (so a streaming route does not inherit a
`defaults.base_url` ending in `/api`, nor a `defaults.api_version`). The `amperity` preset sets
nothing: a config without `api:` means what it meant before presets existed.

| API | base | tenant header | api-version | documented budget |
|---|---|---|---|---|
| amperity | `https://{tenant}.amperity.com/api` (defaults) | `Amperity-Tenant` | `2024-04-01` | 10/s per endpoint |
| profile | the same | `amperity-tenant` | `2025-07-31` | 2,000/s per tenant, sandboxes on production's |
| streaming | `https://{tenant}.amperity.com/stream/v0` | `X-Amperity-Tenant` | none | 1,000/s per tenant, each sandbox its own |

The Streaming API's layout (`/stream/v0/data/<stream-id>` on the tenant host, JSON or XML
bodies) is Amperity's streaming-ingest documentation's
(https://docs.amperity.com/datagrid/api_streaming_ingest.html); the Profile API's
(`/api/indexes/{id}/profiles/...` with `amperity-tenant` and `api-version: 2025-07-31`) is its
API reference's (https://docs.amperity.com/api/endpoint_get_profile.html).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from proxy.config.model import RouteDefaults
from proxy.config.readers import Errors
from proxy.config.traffic import RateKey

API_NAMES = ("amperity", "profile", "streaming")
BOTH = ("Amperity-Tenant", "X-Amperity-Tenant")  # tenant_header: both
# 1 MB as the Streaming API's documentation says it: taken as 1,048,576 bytes. If Amperity means
# 10^6, the few bodies in between get Amperity's own 413; the smaller reading would refuse bodies
# Amperity accepts.
STREAMING_MAX_BODY = 1024 * 1024
_SANDBOX = re.compile(r"(?P<production>[a-z0-9][a-z0-9-]*?)-sb-[0-9]+")


@dataclass(frozen=True)
class Documented:
    """An API's documented rate budget: `rate_limit: documented` paces at it, with a burst of
    one: a bucket lets through at most rate + burst in any one second, so a burst as large as
    the rate would double a sliding-window limit; with one, requests are spaced evenly."""

    requests_per_second: float
    burst: int
    key: RateKey  # endpoint or tenant
    sandbox_shares_production: bool  # a sandbox draws on its production tenant's budget


@dataclass(frozen=True)
class Preset:
    overrides: dict[str, Any]  # RouteDefaults fields the preset sets (over `defaults`)
    tenant_headers: tuple[str, ...]
    documented: Documented
    probe: str | None  # doctor --probe's read-only request, after the base URL; None: none


PRESETS = {
    "amperity": Preset(
        {}, ("Amperity-Tenant",), Documented(10, 1, "endpoint", False), "/segments?limit=1"
    ),
    "profile": Preset(
        {"api_version": "2025-07-31"},
        ("amperity-tenant",),
        Documented(2000, 1, "tenant", True),
        "/indexes?limit=1",
    ),
    "streaming": Preset(
        {
            "base_url": "https://{tenant}.amperity.com/stream/v0",
            "api_version": None,
            "max_body_bytes": STREAMING_MAX_BODY,
        },
        ("X-Amperity-Tenant",),
        Documented(1000, 1, "tenant", False),
        None,  # no read-only call: DNS and TLS only
    ),
}


def production_tenant(tenant: str) -> str | None:
    """`acme` for a sandbox id of the documented `<tenant>-sb-<n>` shape, else None."""
    match = _SANDBOX.fullmatch(tenant)
    return match.group("production") if match else None


def apply_preset(
    own: RouteDefaults, written: Collection[str], tenant: str, name: str, errs: Errors
) -> tuple[RouteDefaults, tuple[str, ...]]:
    """The route's settings with its preset applied under its own keys (`written`), and the
    tenant header(s) it sends."""
    preset = PRESETS[own.api]
    changes = {k: v for k, v in preset.overrides.items() if k not in written}
    own = dataclasses.replace(own, **changes)
    headers = preset.tenant_headers
    if own.tenant_header == "both":
        headers = BOTH
    elif own.tenant_header:
        headers = (own.tenant_header,)
    limit = own.rate_limit
    if limit is not None:
        documented = preset.documented
        if limit.documented:
            limit = dataclasses.replace(
                limit,
                requests_per_second=documented.requests_per_second,
                burst=documented.burst,
            )
        key = limit.key or documented.key
        budget = limit.budget_tenant
        if key == "tenant" and budget is None and documented.sandbox_shares_production:
            budget = production_tenant(tenant)
            if budget is not None:
                errs.warnings.append(
                    f"route {name}: tenant {tenant} is a sandbox of {budget}; its {own.api} API "
                    f"budget is {budget}'s (set rate_limit.budget_tenant to change that)"
                )
        own = dataclasses.replace(
            own, rate_limit=dataclasses.replace(limit, key=key, budget_tenant=budget)
        )
    return own, headers


def pacing_hint(routes: Collection[Any], errs: Errors) -> None:
    """Once, for routes on the Profile or Streaming API without pacing: the option exists.
    Pacing stays opt-in: a tool paced elsewhere, or a benchmark, must not be slowed by surprise."""
    names = [r.name for r in routes if r.api != "amperity" and r.rate_limit is None]
    if names:
        errs.warnings.append(
            f"route(s) {', '.join(names)} are not paced; `rate_limit: documented` paces a "
            "preset route at its API's documented budget (README: Amperity's three APIs)"
        )
