"""Forward-proxy mode: clients whose HTTP_PROXY is the proxy send absolute-form requests."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.testing import make_token
from tests.conftest import ACME_TOKEN, Proxy, ProxyFactory, Upstream, acme_route, get, raw_request
from tests.support.envelope import message

T1, T2 = make_token("tenant-one"), make_token("tenant-two")


def aws_routes(upstream: Upstream) -> list[dict[str, Any]]:
    base = upstream.url(host="app.amperity.com")
    return [
        {"prefix": "/one", "tenant": "tenant-one", "base_url": base, "token": {"env": "T1"}},
        {"prefix": "/two", "tenant": "tenant-two", "base_url": base, "token": {"env": "T2"}},
    ]


async def through_proxy(
    proxy: Proxy, url: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, bytes, dict[str, str]]:
    """A real HTTP client configured with the proxy as its HTTP proxy."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(
            URL(url, encoded=True),
            proxy=f"http://127.0.0.1:{proxy.port}",
            headers=headers,
            allow_redirects=False,
            **kwargs,
        ) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


def urllib_status(port: int, userinfo: str, url: str) -> int:
    handler = urllib.request.ProxyHandler({"http": f"http://{userinfo}@127.0.0.1:{port}"})
    opener = urllib.request.build_opener(handler)
    try:
        with opener.open(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


async def test_azure_style_host_is_forwarded_over_https(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    url = f"http://ACME.amperity.com.:{upstream.port}/api/segments?limit=2"
    status, _, _ = await through_proxy(proxy, url, {"Amperity-Tenant": "acme"})
    assert status == 200
    [seen] = upstream.requests
    assert seen.raw_path == "/api/segments?limit=2"
    assert seen.header_all("Authorization") == [f"Bearer {ACME_TOKEN}"]
    assert seen.header_all("Amperity-Tenant") == ["acme"]
    assert seen.header("Host") == f"acme.amperity.com:{upstream.port}"
    assert seen.header("Proxy-Connection") is None


async def test_two_aws_tenants_on_one_host_are_picked_by_the_tenant_header(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(aws_routes(upstream), env={"T1": T1, "T2": T2})
    url = f"http://app.amperity.com:{upstream.port}/api/segments"
    assert (await through_proxy(proxy, url, {"Amperity-Tenant": "tenant-two"}))[0] == 200
    assert (await through_proxy(proxy, url, {"X-Amperity-Tenant": "tenant-one"}))[0] == 200
    first, second = upstream.requests
    assert first.header_all("Authorization") == [f"Bearer {T2}"]
    assert first.header_all("Amperity-Tenant") == ["tenant-two"]
    assert second.header_all("Authorization") == [f"Bearer {T1}"]
    assert second.header_all("X-Amperity-Tenant") == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "send an Amperity-Tenant header naming one of: tenant-one, tenant-two"),
        ({"Amperity-Tenant": "tenant-three"}, "serves tenant 'tenant-three'"),
        ({"Amperity-Tenant": "tenant-one", "X-Amperity-Tenant": "tenant-two"}, "conflicting"),
    ],
)
async def test_ambiguous_or_unknown_tenant_gets_421(
    make_proxy: ProxyFactory, upstream: Upstream, headers: dict[str, str], expected: str
) -> None:
    proxy = await make_proxy(aws_routes(upstream), env={"T1": T1, "T2": T2})
    url = f"http://app.amperity.com:{upstream.port}/api/segments"
    status, body, _ = await through_proxy(proxy, url, headers)
    assert status == 421
    assert expected in message(body)
    assert upstream.requests == []
    assert proxy.resolver.lookups == []


async def test_a_tenant_the_route_does_not_serve_gets_421(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    url = f"http://acme.amperity.com:{upstream.port}/api/segments"
    status, body, _ = await through_proxy(proxy, url, {"Amperity-Tenant": "someone-else"})
    assert status == 421
    assert "serves tenant 'someone-else'" in message(body)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "host", ["evil.example", "amperity.com", "xacme.amperity.com", "acme.amperity.com.evil.example"]
)
async def test_foreign_host_gets_403_without_dns_or_connection(
    make_proxy: ProxyFactory, upstream: Upstream, host: str
) -> None:
    proxy = await make_proxy()
    status, body, _ = await through_proxy(proxy, f"http://{host}:{upstream.port}/api/x")
    assert status == 403
    assert "only forwards to its configured Amperity hosts (acme.amperity.com)" in message(body)
    assert proxy.resolver.lookups == []
    assert upstream.requests == []


async def test_other_port_of_a_known_host_is_foreign_to_that_route(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    status, _, _ = await through_proxy(proxy, f"http://acme.amperity.com:{upstream.port + 1}/api/x")
    assert status == 404
    assert upstream.requests == []


async def test_default_ports_match_http_to_https(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    # The route's base is https://acme.amperity.com/api (port 443); the client writes http://
    # (port 80). Nothing listens on 443 here, so the proof is the attempt: a lookup and a 502.
    proxy = await make_proxy([acme_route(upstream, base_url="https://acme.amperity.com/api")])
    status, body, _ = await through_proxy(proxy, "http://acme.amperity.com/api/x")
    assert status == 502
    assert "https://acme.amperity.com/api" in message(body)
    assert proxy.resolver.lookups == ["acme.amperity.com"]


async def test_known_host_outside_the_base_path_gets_404(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    for path in ("/other/x", "/apix", "/"):
        status, body, _ = await through_proxy(
            proxy, f"http://acme.amperity.com:{upstream.port}{path}"
        )
        assert status == 404
        assert "under a route's base path" in message(body)
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://user:pw@acme.amperity.com/api/x", "user info"),
        ("http://acme.amperity.com/api/x#frag", "fragment"),
        ("http://acme%2eamperity.com/api/x", "percent-encoding"),
        ("ftp://acme.amperity.com/api/x", "only http:// URLs"),
        ("https://acme.amperity.com/api/x", "only http:// URLs"),
    ],
)
async def test_malformed_absolute_targets_get_400(
    make_proxy: ProxyFactory, upstream: Upstream, target: str, expected: str
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, get(target))
    assert response.status == 400
    assert expected in message(response.body)
    assert upstream.requests == [] and proxy.resolver.lookups == []


@pytest.mark.parametrize("target", ["http://acme.amperity.com:99999/api/x", "http:///api/x"])
async def test_targets_the_http_parser_refuses_get_400(
    make_proxy: ProxyFactory, upstream: Upstream, target: str
) -> None:
    proxy = await make_proxy()
    assert (await raw_request(proxy.port, get(target))).status == 400
    assert upstream.requests == [] and proxy.resolver.lookups == []


async def test_traversal_in_forward_mode_gets_400(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(
        proxy.port, get(f"http://acme.amperity.com:{upstream.port}/api/%2e%2e/x")
    )
    assert response.status == 400
    assert upstream.requests == []


async def test_location_inside_the_base_url_keeps_the_client_on_the_proxy(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    base = f"acme.amperity.com:{upstream.port}"
    target = URL(f"http://{base}/api/_fake/redirect").with_query(to=f"https://{base}/api/jobs/1")
    status, _, headers = await through_proxy(proxy, str(target))
    assert status == 302
    assert headers["Location"] == f"http://{base}/api/jobs/1"


async def test_connect_gets_405_with_advice(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy()
    request = b"CONNECT acme.amperity.com:443 HTTP/1.1\r\nHost: acme.amperity.com:443\r\n\r\n"
    response = await raw_request(proxy.port, request)
    assert response.status == 405
    assert "use http:// URLs" in message(response.body).replace("Use", "use")
    assert upstream.requests == [] and proxy.resolver.lookups == []


async def test_https_through_a_real_client_is_refused(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    with pytest.raises(aiohttp.ClientHttpProxyError) as info:
        await through_proxy(proxy, f"https://acme.amperity.com:{upstream.port}/api/x")
    assert info.value.status == 405
    assert upstream.requests == []


@pytest.mark.parametrize(
    "target", ["/acme/x", "http://acme.amperity.com/api/x"], ids=["reverse", "forward"]
)
async def test_trace_gets_405_in_both_modes(
    make_proxy: ProxyFactory, upstream: Upstream, target: str
) -> None:
    proxy = await make_proxy()
    request = f"TRACE {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    response = await raw_request(proxy.port, request.encode())
    assert response.status == 405
    assert upstream.requests == []


@pytest.mark.parametrize(
    "upgrade",
    [
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
    ],
)
async def test_upgrade_requests_get_400(
    make_proxy: ProxyFactory, upstream: Upstream, upgrade: str
) -> None:
    proxy = await make_proxy()
    request = f"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n\r\n"
    response = await raw_request(proxy.port, request.encode())
    assert response.status == 400
    assert "upgrades" in message(response.body)
    assert upstream.requests == []


async def test_forward_mode_client_token(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy(
        extra={"listen": {"client_token": {"env": "CLIENT_TOKEN"}}},
        env={"CLIENT_TOKEN": "s3cret-client"},
    )
    url = f"http://acme.amperity.com:{upstream.port}/api/x"
    ok = await through_proxy(proxy, url, {"Proxy-Authorization": "Bearer s3cret-client"})
    assert ok[0] == 200
    wrong = await through_proxy(proxy, url, {"Proxy-Authorization": "Bearer nope"})
    missing = await through_proxy(proxy, url)
    assert (wrong[0], missing[0]) == (407, 407)
    assert wrong[2]["Proxy-Authenticate"] == 'Bearer realm="amperity-proxy"'
    assert "a wrong client token" in message(wrong[1])
    assert "no client token" in message(missing[1])
    # A legacy tool honouring HTTP_PROXY=http://user:token@host:port (stdlib urllib here)
    # sends Proxy-Authorization: Basic; the password is the client token.
    basic = await asyncio.to_thread(urllib_status, proxy.port, "any:s3cret-client", url)
    wrong_basic = await asyncio.to_thread(urllib_status, proxy.port, "s3cret-client:x", url)
    assert (basic, wrong_basic) == (200, 407)
    assert len(upstream.requests) == 2
    assert all(seen.header("Proxy-Authorization") is None for seen in upstream.requests)
