"""Named client tokens (`listen.clients`) with per-route authorisation (issue 17): in a shared
deployment each tool has its own token, a route lists the clients that may use it, and the
name (never the token) goes into the access log and metrics."""

from __future__ import annotations

import logging

import pytest

from proxy.config import ConfigError, parse_config
from tests.conftest import ProxyFactory, Upstream, acme_route, metric
from tests.support.envelope import message

CI, BI = "ci-token-3c1f9a7be2", "bi-token-84d02e6f51"


async def test_a_client_uses_only_the_routes_that_name_it(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="amperity_proxy.access")
    clients = [{"name": "ci", "token": {"env": "CI_T"}}, {"name": "bi", "token": {"env": "BI_T"}}]
    proxy = await make_proxy(
        [
            acme_route(upstream, prefix="/exports", clients=["ci"]),
            acme_route(upstream, prefix="/reports", clients=["ci", "bi"], methods=["GET"]),
        ],
        extra={"listen": {"clients": clients}},
        env={"CI_T": CI, "BI_T": BI},
    )
    ci_exports = await proxy.client.get("/exports/segments", headers={"X-Proxy-Token": CI})
    bi_reports = await proxy.client.get("/reports/segments", headers={"X-Proxy-Token": BI})
    bi_exports = await proxy.client.get("/exports/segments", headers={"X-Proxy-Token": BI})
    nobody = await proxy.client.get("/reports/segments", headers={"X-Proxy-Token": "guess"})
    assert (ci_exports.status, bi_reports.status) == (200, 200)
    assert bi_exports.status == 403
    assert message(await bi_exports.read()) == (
        "client 'bi' may not use route exports; add it to that route's clients in the proxy's "
        "config, or use a route that lists it"
    )
    assert nobody.status == 403
    assert "listen.clients" in message(await nobody.read())
    assert len(upstream.requests) == 2  # the refused ones never left
    assert all(r.header("X-Proxy-Token") is None for r in upstream.requests)
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_client_requests_total{client="ci",route="exports"}') == 1
    assert metric(text, 'amperity_proxy_client_requests_total{client="bi",route="reports"}') == 1
    assert metric(text, 'amperity_proxy_rejected_requests_total{reason="client_route"}') == 1
    names = [
        r.fields.get("client_name")  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "amperity_proxy.access"
    ]
    assert names[:2] == ["ci", "bi"]
    seen = caplog.text + text
    assert CI not in seen and BI not in seen


@pytest.mark.parametrize(
    ("listen", "routes", "error"),
    [
        (
            {"clients": [{"name": "ci", "token": {"env": "A"}}]},
            [{"prefix": "/a"}],
            "routes[0].clients: missing: listen.clients is set",
        ),
        (
            {"clients": [{"name": "ci", "token": {"env": "A"}}]},
            [{"prefix": "/a", "clients": ["bi"]}],
            "routes[0].clients: unknown client 'bi'; defined in listen.clients: ci",
        ),
        (
            {},
            [{"prefix": "/a", "clients": ["ci"]}],
            "routes[0].clients: names clients, but listen.clients defines none",
        ),
        (
            {"clients": [{"name": "ci", "token": {"env": "A"}}], "client_token": {"env": "B"}},
            [{"prefix": "/a", "clients": ["ci"]}],
            "listen.client_token: use one of listen.client_token",
        ),
        (
            {"clients": [{"name": "ci", "token": {"value": "inline-secret"}}]},
            [{"prefix": "/a", "clients": ["ci"]}],
            "listen.clients[0].token",
        ),
    ],
    ids=["route-without-clients", "unknown-name", "no-clients-defined", "both-kinds", "inline"],
)
def test_client_settings_are_checked(
    listen: dict[str, object], routes: list[dict[str, object]], error: str
) -> None:
    raw = {
        "listen": listen,
        "routes": [{"tenant": "acme", "token": {"env": "T"}, **r} for r in routes],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert error in str(info.value)
    assert "inline-secret" not in str(info.value)
