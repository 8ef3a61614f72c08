"""Amperity's three REST APIs as route presets (issue 20): each sends exactly the headers its
API requires (asserted on what the fake recorded), the Streaming API's 1 MB body limit holds
before a byte goes upstream, and budgets follow the documentation (per tenant for the Profile
API, a sandbox on its production tenant's; each Streaming API sandbox on its own)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, load_yaml, parse_config
from proxy.config.presets import STREAMING_MAX_BODY
from proxy.testing import make_token
from tests.conftest import ProxyFactory, Upstream, acme_route, metric
from tests.support.clocks import FakeClock

ROOT = Path(__file__).resolve().parent.parent
TENANT_HEADERS = ("amperity-tenant", "x-amperity-tenant")


def _route(upstream: Upstream, api: str, prefix: str, **overrides: Any) -> dict[str, Any]:
    base = f"https://acme.amperity.com:{upstream.port}" + (
        "/stream/v0" if api == "streaming" else "/api"
    )
    return acme_route(upstream, prefix=prefix, api=api, base_url=base, **overrides)


def _tenant_and_version(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() in (*TENANT_HEADERS, "api-version")]


async def test_each_preset_sends_exactly_its_apis_headers(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(
        [
            _route(upstream, "amperity", "/amp"),
            _route(upstream, "profile", "/prof"),
            _route(upstream, "streaming", "/stream"),
        ]
    )
    spoofed = {"Amperity-Tenant": "other", "X-Amperity-Tenant": "other"}  # never passed on
    assert (await proxy.client.get("/amp/segments", headers=spoofed)).status == 200
    assert (await proxy.client.get("/prof/indexes/i1/profiles/p1", headers=spoofed)).status == 200
    posted = await proxy.client.post(
        "/stream/data/orders", data=b'{"order": 1}', headers={"Content-Type": "application/json"}
    )
    assert posted.status == 200
    amp, prof, stream = upstream.requests
    assert (amp.raw_path, prof.raw_path, stream.raw_path) == (
        "/api/segments",
        "/api/indexes/i1/profiles/p1",
        "/stream/v0/data/orders",
    )
    assert _tenant_and_version(amp.headers) == [
        ("Amperity-Tenant", "acme"),
        ("api-version", "2024-04-01"),
    ]
    assert _tenant_and_version(prof.headers) == [
        ("amperity-tenant", "acme"),
        ("api-version", "2025-07-31"),
    ]
    assert _tenant_and_version(stream.headers) == [("X-Amperity-Tenant", "acme")]  # no version
    text = await proxy.metrics_text()
    assert (
        metric(text, 'amperity_proxy_route_info{api="streaming",route="stream",tenant="acme"}') == 1
    )
    status = await (await proxy.admin.get("/status.json")).json()
    assert [r["api"] for r in status["routes"]] == ["amperity", "profile", "streaming"]


async def test_tenant_header_both_sends_both_spellings(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy([_route(upstream, "amperity", "/amp", tenant_header="both")])
    await proxy.client.get("/amp/segments")
    [seen] = upstream.requests
    assert [k for k, _ in _tenant_and_version(seen.headers) if k != "api-version"] == [
        "Amperity-Tenant",
        "X-Amperity-Tenant",
    ]


async def test_a_streaming_body_over_1_mb_never_reaches_amperity(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy([_route(upstream, "streaming", "/stream")])
    big = b"x" * (STREAMING_MAX_BODY + 1)
    fixed = await proxy.client.post("/stream/data/orders", data=io.BytesIO(big))
    assert fixed.status == 413  # refused by its Content-Length, before any byte goes up

    async def chunks() -> Any:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    chunked = await proxy.client.post("/stream/data/orders", data=chunks())
    assert chunked.status == 413  # cut as soon as it passed the limit
    exact = await proxy.client.post("/stream/data/orders", data=io.BytesIO(big[:-1]))
    assert exact.status == 200  # 1,048,576 bytes are allowed
    # The upstream received only the allowed one; the cut chunked body never completed there.
    assert [r.body_length for r in upstream.requests] == [STREAMING_MAX_BODY]


def _paced(upstream: Upstream, api: str, prefix: str, tenant: str, env: str) -> dict[str, Any]:
    return _route(
        upstream,
        api,
        prefix,
        tenant=tenant,
        token={"env": env},
        rate_limit={"requests_per_second": 1, "burst": 1, "max_wait": 0.1},
    )


@pytest.mark.parametrize(("api", "shared"), [("profile", True), ("streaming", False)])
async def test_a_sandbox_shares_its_production_budget_only_on_the_profile_api(
    make_proxy: ProxyFactory, upstream: Upstream, api: str, shared: bool
) -> None:
    env = {"PROD": make_token("acme"), "SB": make_token("acme-sb-1")}
    proxy = await make_proxy(
        [
            _paced(upstream, api, "/prod", "acme", "PROD"),
            _paced(upstream, api, "/sandbox", "acme-sb-1", "SB"),
        ],
        env=env,
        clock=FakeClock(),  # no token comes back during the test
    )
    path = "/indexes/i1/profiles/p1" if api == "profile" else "/data/orders"
    method = "GET" if api == "profile" else "POST"
    first = await proxy.client.request(
        method, "/prod" + path, data=b"{}" if method == "POST" else None
    )
    second = await proxy.client.request(
        method, "/sandbox" + path, data=b"{}" if method == "POST" else None
    )
    assert first.status == 200
    assert second.status == (429 if shared else 200)
    tenants = [
        r.header("amperity-tenant") or r.header("x-amperity-tenant") for r in upstream.requests
    ]
    assert tenants == (["acme"] if shared else ["acme", "acme-sb-1"])


def test_presets_take_precedence_over_defaults_but_not_over_the_route() -> None:
    raw = {
        "defaults": {"base_url": "https://app.amperity.com/api", "api_version": "2023-01-01"},
        "routes": [
            {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}},
            {"prefix": "/p", "tenant": "acme", "token": {"env": "T"}, "api": "profile"},
            {"prefix": "/s", "tenant": "acme", "token": {"env": "T"}, "api": "streaming"},
            {
                "prefix": "/s2",
                "tenant": "acme",
                "token": {"env": "T"},
                "api": "streaming",
                "max_body_bytes": 10,
                "rate_limit": "documented",
            },
        ],
    }
    a, p, s, s2 = parse_config(raw, env={}).routes
    assert (str(a.base_url), a.api_version) == ("https://app.amperity.com/api", "2023-01-01")
    assert (str(p.base_url), p.api_version) == ("https://app.amperity.com/api", "2025-07-31")
    assert (str(s.base_url), s.api_version) == ("https://acme.amperity.com/stream/v0", None)
    assert s.max_body_bytes == STREAMING_MAX_BODY and s2.max_body_bytes == 10  # the route's own
    assert s2.rate_limit is not None
    assert (s2.rate_limit.requests_per_second, s2.rate_limit.key) == (1000, "tenant")


def test_a_sandbox_tenant_maps_to_its_production_budget_and_says_so() -> None:
    route = {"prefix": "/p", "tenant": "acme-sb-3", "token": {"env": "T"}, "api": "profile"}
    config = parse_config({"routes": [{**route, "rate_limit": "documented"}]}, env={})
    [profile] = config.routes
    assert profile.rate_limit is not None and profile.rate_limit.budget_tenant == "acme"
    assert any("sandbox of acme" in w for w in config.warnings)
    explicit = {**route, "rate_limit": {"requests_per_second": 5, "budget_tenant": "other"}}
    [named] = parse_config({"routes": [explicit]}, env={}).routes
    assert named.rate_limit is not None
    assert (named.rate_limit.budget_tenant, named.rate_limit.key) == ("other", "tenant")
    with pytest.raises(ConfigError, match="expected one of amperity, profile, streaming"):
        parse_config({"routes": [{**route, "api": "graphql"}]}, env={})


def test_the_example_configs_commented_presets_are_valid() -> None:
    """config.example.yaml keeps one active route; each commented preset route, uncommented,
    is a valid config."""
    text = (ROOT / "config.example.yaml").read_text()
    block = text.split("# --- more of Amperity's APIs", 1)[1]
    lines = [
        line.replace("  # ", "  ", 1) for line in block.splitlines() if line.startswith("  # ")
    ]
    routes = load_yaml("\n".join(lines))
    assert {r.get("api", "amperity") for r in routes} >= {"profile", "streaming"}
    config = parse_config({"routes": routes}, env={"AMPERITY_TENANT": "acme"})
    assert {r.api for r in config.routes} >= {"profile", "streaming"}
    assert any(r.rate_limit and r.rate_limit.budget_tenant for r in config.routes)


def test_preset_routes_without_pacing_hear_of_the_option_once() -> None:
    routes = [
        {"prefix": f"/{api}", "tenant": "acme", "token": {"env": "T"}, "api": api}
        for api in ("amperity", "profile", "streaming")
    ]
    warnings = [w for w in parse_config({"routes": routes}, env={}).warnings if "paced" in w]
    assert warnings == [
        "route(s) profile, streaming are not paced; `rate_limit: documented` paces a preset "
        "route at its API's documented budget (README: Amperity's three APIs)"
    ]


async def test_the_fake_answers_429_past_the_budget_and_pacing_keeps_under_it(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """The fake enforces each API's budget (lowered here: the documented 2,000/s can't be
    measured on this machine); the same burst through a paced route is queued, not refused."""
    upstream.fake.budgets.enforce = True
    upstream.fake.budgets.rates["profile"] = 2
    env = {"SB": make_token("acme-sb-1")}
    # rate + burst per any second stays within the fake's 2 (its window and the proxy's clock
    # are not the same clock: the 1/3 s of slack keeps this from depending on scheduling)
    pace = {"requests_per_second": 1.5, "burst": 1, "max_wait": 5}
    proxy = await make_proxy(
        [
            _route(upstream, "profile", "/raw"),
            _route(
                upstream,
                "profile",
                "/paced",
                tenant="acme-sb-1",
                token={"env": "SB"},
                rate_limit=pace,
            ),
        ],
        env=env,
    )
    raw = [await proxy.client.get(f"/raw/indexes/i/profiles/{n}") for n in range(3)]
    assert [r.status for r in raw] == [200, 200, 429]  # Amperity's 429, as the fake gives it
    upstream.fake.budgets = type(upstream.fake.budgets)(upstream.fake.clock)  # a fresh second
    upstream.fake.budgets.enforce = True
    upstream.fake.budgets.rates["profile"] = 2
    paced = [await proxy.client.get(f"/paced/indexes/i/profiles/{n}") for n in range(4)]
    assert [r.status for r in paced] == [200] * 4  # the sandbox's route waited its turn
