"""The admin listener: metrics values, readiness, health."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from proxy.testing import make_token
from tests.conftest import (
    ACME_TOKEN,
    Proxy,
    ProxyFactory,
    Upstream,
    acme_route,
    get,
    metric,
    raw_request,
)


async def samples(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await proxy.metrics_text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


ACME = (("route", "acme"), ("tenant", "acme"))
METRICS_DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


async def test_token_metrics_come_from_the_jwt_claims(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    iat = int(time.time()) - 86400
    token = make_token("acme", issued_at=iat, ttl=7 * 86400)
    proxy = await make_proxy(env={"ACME_TOKEN": token})
    values = await samples(proxy)
    assert values[("amperity_proxy_token_issued_timestamp_seconds", ACME)] == iat
    assert values[("amperity_proxy_token_expiry_timestamp_seconds", ACME)] == iat + 7 * 86400
    age = values[("amperity_proxy_token_age_seconds", ACME)]
    assert 86400 <= age < 86400 + 600
    assert values[("amperity_proxy_build_info", (("version", __version__),))] == 1


async def test_opaque_token_has_load_time_and_no_expiry(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    before = time.time()
    proxy = await make_proxy(env={"ACME_TOKEN": "opaque-token-value"})
    values = await samples(proxy)
    assert values[("amperity_proxy_token_issued_timestamp_seconds", ACME)] >= int(before)
    assert ("amperity_proxy_token_expiry_timestamp_seconds", ACME) not in values
    assert values[("amperity_proxy_token_age_seconds", ACME)] >= 0


async def test_request_metrics(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    routes = [acme_route(upstream), acme_route(upstream, prefix="/other", tenant="other")]
    proxy = await make_proxy(routes)
    values = await samples(proxy)
    other = (("route", "other"), ("tenant", "other"))
    # Pre-initialised at 0 for every route, before any request.
    for cause in ("expired", "rejected", "unknown", "tenant_mismatch"):
        for route in (ACME, other):
            key = ("amperity_proxy_upstream_unauthorized_total", (("cause", cause), *route))
            assert values[key] == 0
    assert (
        values[("amperity_proxy_upstream_retries_total", (("reason", "unauthorized"), *ACME))] == 0
    )
    assert values[("amperity_proxy_rejected_requests_total", (("reason", "no_route"),))] == 0
    assert (
        values[
            ("amperity_proxy_token_load_errors_total", (("reason", "missing"), ("route", "acme")))
        ]
        == 0
    )

    assert (await proxy.client.get("/acme/x")).status == 200
    assert (await proxy.client.get("/acme/_fake/status/404")).status == 404
    # The other route sends the acme token with tenant "other": the upstream answers 401.
    assert (await proxy.client.get("/other/x")).status == 401
    assert (await proxy.client.get("/nope")).status == 404
    assert (await raw_request(proxy.port, get("/acme/%2e%2e/x"))).status == 400

    values = await samples(proxy)
    assert values[("amperity_proxy_upstream_responses_total", (("code", "200"), *ACME))] == 1
    assert values[("amperity_proxy_upstream_responses_total", (("code", "404"), *ACME))] == 1
    assert values[("amperity_proxy_upstream_responses_total", (("code", "401"), *other))] == 1
    unauthorized = "amperity_proxy_upstream_unauthorized_total"
    # the fake says the tenant does not match, and the token names tenant acme: the cause
    # is known, not guessed ("rotated or revoked")
    assert values[(unauthorized, (("cause", "tenant_mismatch"), *other))] == 1
    assert values[(unauthorized, (("cause", "rejected"), *other))] == 0
    assert values[(unauthorized, (("cause", "tenant_mismatch"), *ACME))] == 0
    assert values[("amperity_proxy_rejected_requests_total", (("reason", "no_route"),))] == 1
    assert values[("amperity_proxy_rejected_requests_total", (("reason", "bad_path"),))] == 1
    assert values[("amperity_proxy_request_duration_seconds_count", ACME)] == 2
    assert values[("amperity_proxy_requests_in_flight", ())] == 0
    assert upstream.requests[2].status == 401


async def test_metrics_never_contain_the_token(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    await proxy.client.get("/acme/x?secret=1")
    text = await proxy.metrics_text()
    assert ACME_TOKEN not in text
    assert ACME_TOKEN.split(".")[1] not in text
    assert "secret" not in text and "/x" not in text


async def test_readiness_lists_routes_and_reports_expired_tokens(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    issued = time.time() - 7200  # once: a second boundary between two reads made this flaky
    expired = make_token("acme", issued_at=issued, ttl=3600)
    routes = [acme_route(upstream), acme_route(upstream, prefix="/old", token={"env": "OLD"})]
    proxy = await make_proxy(routes, env={"OLD": expired})
    response = await proxy.admin.get("/readyz")
    assert response.status == 200  # an expired token is reported, not made a readiness failure
    body = await response.json()
    assert body["ready"] is True and body["draining"] is False
    states = {r["route"]: (r["state"], r["expires_at"]) for r in body["routes"]}
    assert states["acme"][0] == "ok"
    assert states["old"] == ("expired", int(issued) + 3600)
    assert expired not in await response.text()


async def test_readiness_is_503_while_draining(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    proxy.draining(True)
    response = await proxy.admin.get("/readyz")
    assert response.status == 503
    assert (await response.json())["draining"] is True
    assert (await proxy.admin.get("/healthz")).status == 200
    assert (await proxy.admin.get("/livez")).status == 200


async def test_admin_is_not_on_the_proxy_port(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy()
    assert (await proxy.client.get("/metrics")).status == 404
    assert upstream.requests == []


async def test_docs_metrics_lists_every_exported_metric(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    families = {f.name for f in text_string_to_metric_families(await proxy.metrics_text())}
    documented = METRICS_DOC.read_text()
    for name in families:
        exported = name + ("_total" if f"{name}_total" in documented else "")
        assert f"`{exported}`" in documented, f"{name} is not documented in docs/metrics.md"
    assert "_created" not in await proxy.metrics_text()


async def test_process_and_runtime_metrics_are_exported(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    text = await proxy.metrics_text()
    assert metric(text, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert metric(text, "process_open_fds") > 0
    assert metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, 'python_gc_collections_total{generation="0"}') >= 0
