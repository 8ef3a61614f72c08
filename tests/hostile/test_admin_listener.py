"""The admin listener is as guarded as the proxy listener: Host (DNS rebinding), browsers
(Origin, Sec-Fetch-Site), who may see what (`admin.allow_clients`), a JSON-only reload, a
header deadline and a connection cap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import ACME_TOKEN, Proxy, ProxyFactory, RawResponse, raw_request
from tests.hostile.conftest import LEDGER

ENDPOINTS = ("/", "/status.json", "/readyz", "/metrics", "/healthz", "/livez")


def _admin_port(proxy: Proxy) -> int:
    port = proxy.admin.server.port
    assert port is not None
    return port


def _request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *headers, "Connection: close"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode() + body


async def _admin(
    proxy: Proxy, method: str, path: str, *headers: str, body: bytes = b""
) -> RawResponse:
    LEDGER.tried("admin listener")
    return await raw_request(_admin_port(proxy), _request(method, path, *headers, body=body))


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "host",
    ["attacker.example:9090", "attacker.example", "127.0.0.1.attacker.example", "localhost.evil"],
)
async def test_a_rebound_host_name_gets_nothing(
    make_proxy: ProxyFactory, path: str, host: str
) -> None:
    proxy = await make_proxy()
    response = await _admin(proxy, "GET", path, f"Host: {host}")
    assert response.status == 403
    assert b"DNS rebinding" in response.body
    assert b"acme" not in response.body and ACME_TOKEN.encode() not in response.body


@pytest.mark.parametrize(
    "host", ["127.0.0.1:9090", "10.1.2.3:9090", "[::1]:9090", "localhost:9090"]
)
async def test_ip_literal_hosts_and_localhost_reach_the_probes(
    make_proxy: ProxyFactory, host: str
) -> None:
    """The kubelet and Prometheus send `Host: <pod IP>:<port>`; rebinding needs a name."""
    proxy = await make_proxy()
    for path in ("/metrics", "/readyz", "/healthz"):
        assert (await _admin(proxy, "GET", path, f"Host: {host}")).status == 200


async def test_an_allowed_host_name_is_accepted(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra={"admin": {"allowed_hosts": ["proxy.internal"]}})
    assert (await _admin(proxy, "GET", "/status.json", "Host: proxy.internal:9090")).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        ("Origin: http://attacker.example",),
        ("Origin: null",),
        ("Sec-Fetch-Site: cross-site",),
        ("Sec-Fetch-Site: same-site",),
        ("Origin: http://127.0.0.1:1", "Sec-Fetch-Site: same-origin"),
    ],
)
async def test_other_web_pages_are_refused(
    make_proxy: ProxyFactory, headers: tuple[str, ...]
) -> None:
    proxy = await make_proxy()
    for path in ("/status.json", "/metrics"):
        response = await _admin(proxy, "GET", path, "Host: 127.0.0.1", *headers)
        assert response.status == 403, (path, headers)


async def test_the_status_pages_own_requests_pass(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    host = f"127.0.0.1:{_admin_port(proxy)}"
    response = await _admin(
        proxy,
        "GET",
        "/status.json",
        f"Host: {host}",
        f"Origin: http://{host}",
        "Sec-Fetch-Site: same-origin",
    )
    assert response.status == 200


async def _reload_count(proxy: Proxy) -> float:
    return proxy.app.lifecycle.reload_success_at


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (("Origin: http://attacker.example", "Content-Type: text/plain"), 403),
        (("Sec-Fetch-Site: cross-site", "Content-Type: text/plain"), 403),
        (("Content-Type: text/plain",), 415),
        (("Content-Type: application/x-www-form-urlencoded",), 415),
        ((), 415),
    ],
)
async def test_reload_needs_json_and_refuses_cross_site(
    make_proxy: ProxyFactory, headers: tuple[str, ...], status: int
) -> None:
    proxy = await make_proxy(extra={"admin": {"enable_reload": True}})
    proxy.app.config_loader = lambda: proxy.config
    before = proxy.app.lifecycle.reload_success_at
    response = await _admin(proxy, "POST", "/-/reload", "Host: 127.0.0.1", *headers, body=b"{}")
    assert response.status == status
    assert proxy.app.lifecycle.reload_success_at == before  # nothing was reloaded
    ok = await _admin(
        proxy, "POST", "/-/reload", "Host: 127.0.0.1", "Content-Type: application/json", body=b"{}"
    )
    assert ok.status == 200 and proxy.app.lifecycle.reload_success_at > before


async def test_sensitive_views_answer_only_to_allowed_clients(make_proxy: ProxyFactory) -> None:
    # The test client is 127.0.0.1; allow only another network to play a pod-IP client.
    proxy = await make_proxy(
        extra={"admin": {"allow_clients": ["10.0.0.0/8"], "enable_reload": True}}
    )
    for method, path in (("GET", "/"), ("GET", "/status.json"), ("POST", "/-/reload")):
        response = await _admin(
            proxy, method, path, "Host: 127.0.0.1", "Content-Type: application/json", body=b"{}"
        )
        assert response.status == 403 and b"admin.allow_clients" in response.body, path
    metrics = await _admin(proxy, "GET", "/metrics", "Host: 10.1.2.3:9090")
    assert metrics.status == 200 and b"amperity_proxy_token_expiry" in metrics.body
    ready = await _admin(proxy, "GET", "/readyz", "Host: 10.1.2.3:9090")
    assert ready.status == 200
    body: dict[str, Any] = json.loads(ready.body)
    assert body["routes"] == [{"route": "acme", "tenant": "acme", "ok": True}]
    # No file paths, subjects, sources or fingerprints in /readyz for a client outside
    # allow_clients, and no file path or variable name in any metric label.
    for word in (b"source", b"subject", b"fingerprint", b"environment variable", b"ACME_TOKEN"):
        assert word not in ready.body
    assert b"ACME_TOKEN" not in metrics.body and b'source="env"' in metrics.body


async def test_half_sent_admin_requests_get_408_at_the_header_deadline(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(extra={"admin": {"header_timeout": 0.3}})
    reader, writer = await asyncio.open_connection("127.0.0.1", _admin_port(proxy))
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # the bug: held open forever
    finally:
        writer.close()
    LEDGER.tried("admin listener")
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_admin_connections_are_capped(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra={"admin": {"max_connections": 5}})
    port = _admin_port(proxy)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        for _, w in idle:
            w.close()
    LEDGER.tried("admin listener")
    assert data.startswith(b"HTTP/1.1 503 ") and b"max_connections" in data
