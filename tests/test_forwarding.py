"""End to end: what the fake upstream receives, and what the client gets back."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from proxy.testing import GZIP_JSON, FakeTLS, make_token, pattern
from tests.conftest import (
    ACME_TOKEN,
    ProxyFactory,
    ScriptedUpstream,
    Upstream,
    acme_route,
    get,
    raw_request,
)

MiB = 1024 * 1024


async def test_get_is_rewritten_to_the_tenant_api(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await proxy.client.get("/acme/segments?limit=2")
    assert response.status == 200
    [seen] = upstream.requests
    assert (seen.method, seen.raw_path) == ("GET", "/api/segments?limit=2")
    assert seen.header_all("Authorization") == [f"Bearer {ACME_TOKEN}"]
    assert seen.header_all("Amperity-Tenant") == ["acme"]
    assert seen.header_all("api-version") == ["2024-04-01"]
    assert seen.header("Host") == f"acme.amperity.com:{upstream.port}"
    assert proxy.resolver.lookups == ["acme.amperity.com"]


async def test_prefix_alone_maps_to_the_base_url(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    assert (await proxy.client.get("/acme")).status == 200
    assert upstream.requests[0].raw_path == "/api"


async def test_path_and_query_are_forwarded_byte_for_byte(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    target = "/acme/segments/a%20b%7Ec;v=1/%E2%9C%93?q=a%20b+c&x=%2F&empty=&flag"
    response = await raw_request(proxy.port, get(target))
    assert response.status == 200
    assert upstream.requests[0].raw_path == "/api" + target.removeprefix("/acme")


@pytest.mark.parametrize(
    ("path", "expected_upstream_path"),
    [
        ("/acme/x", "/api/x"),
        ("/acme-sandbox/x", "/sb/x"),  # longest prefix wins; no confusion with /acme
        ("/acme-sandbox", "/sb"),
    ],
)
async def test_longest_prefix_wins(
    make_proxy: ProxyFactory, upstream: Upstream, path: str, expected_upstream_path: str
) -> None:
    routes = [
        acme_route(upstream),
        acme_route(upstream, prefix="/acme-sandbox", base_url=upstream.url(path="/sb")),
    ]
    proxy = await make_proxy(routes)
    assert (await proxy.client.get(path)).status == 200
    assert [r.raw_path for r in upstream.requests] == [expected_upstream_path]


async def test_two_tenants_each_get_their_own_token(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    sandbox_token = make_token("acme-sb-12345")
    routes = [
        acme_route(upstream),
        acme_route(
            upstream,
            prefix="/acme-sandbox",
            tenant="acme-sb-12345",
            base_url=upstream.url(host="acme-sb.amperity.com"),
            token={"env": "SB_TOKEN"},
        ),
    ]
    proxy = await make_proxy(routes, env={"SB_TOKEN": sandbox_token})
    assert (await proxy.client.get("/acme-sandbox/segments")).status == 200
    assert (await proxy.client.get("/acme/segments")).status == 200
    first, second = upstream.requests
    assert first.header_all("Authorization") == [f"Bearer {sandbox_token}"]
    assert first.header_all("Amperity-Tenant") == ["acme-sb-12345"]
    assert second.header_all("Authorization") == [f"Bearer {ACME_TOKEN}"]
    assert second.status == first.status == 200


async def test_client_credentials_and_hop_by_hop_headers_are_stripped(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    request = get(
        "/acme/segments",
        "Authorization: Bearer attacker",
        "authorization: Basic eDp5",
        "Amperity-Tenant: evil",
        "amperity_tenant: evil2",
        "X-Amperity-Tenant: evil3",
        "X_AMPERITY_TENANT: evil4",
        "Proxy-Authorization: Basic eDp5",
        "Proxy-Connection: keep-alive",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: X-Trailer",
        "Connection: X-Listed, close",
        "X-Listed: secret-hop",
        "X-Keep: kept",
        "Transfer_Encoding: chunked",
    )
    response = await raw_request(proxy.port, request)
    assert response.status == 200
    [seen] = upstream.requests
    names = {name.lower() for name, _ in seen.headers}
    assert seen.header_all("Authorization") == [f"Bearer {ACME_TOKEN}"]
    assert seen.header_all("Amperity-Tenant") == ["acme"]
    for dropped in (
        "amperity_tenant",
        "x-amperity-tenant",
        "x_amperity_tenant",
        "proxy-authorization",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "x-listed",
        "transfer_encoding",
    ):
        assert dropped not in names, dropped
    assert seen.header_all("X-Keep") == ["kept"]


async def test_api_version_is_added_only_when_the_client_sent_none(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    await proxy.client.get("/acme/a", headers={"api-version": "2023-01-01"})
    await proxy.client.get("/acme/b?api-version=2022-02-02")
    await proxy.client.get("/acme/c")
    a, b, c = upstream.requests
    assert a.header_all("api-version") == ["2023-01-01"]
    assert b.header_all("api-version") == [] and b.status == 200
    assert c.header_all("api-version") == ["2024-04-01"]


async def test_route_may_override_the_api_version(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy([acme_route(upstream, api_version="2025-01-01")])
    await proxy.client.get("/acme/a")
    assert upstream.requests[0].header_all("api-version") == ["2025-01-01"]


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("abc-123._:X", "abc-123._:X"), ("x" * 129, None), ("bad id", None), ("", None)],
)
async def test_request_id_is_kept_when_valid_and_generated_otherwise(
    make_proxy: ProxyFactory, upstream: Upstream, sent: str, echoed: str | None
) -> None:
    proxy = await make_proxy()
    response = await proxy.client.get("/acme/x", headers={"X-Request-ID": sent})
    [seen] = upstream.requests
    forwarded = seen.header_all("X-Request-ID")
    assert len(forwarded) == 1
    assert response.headers["X-Request-ID"] == forwarded[0]
    if echoed is not None:
        assert forwarded[0] == echoed
    else:
        assert forwarded[0] != sent and len(forwarded[0]) == 32


async def test_content_length_upload_keeps_its_length(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    body = b'{"name": "segment"}'
    response = await proxy.client.post("/acme/segments", data=body)
    assert response.status == 200
    [seen] = upstream.requests
    assert seen.method == "POST"
    assert seen.header("Content-Length") == str(len(body))
    assert seen.header("Transfer-Encoding") is None
    assert seen.body_sha256 == hashlib.sha256(body).hexdigest()


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for block in pattern(total):
        yield block


async def test_large_chunked_upload_streams_through(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    size = 64 * MiB
    expected = hashlib.sha256(b"".join(pattern(size))).hexdigest()
    response = await proxy.client.put("/acme/files/upload", data=_chunks(size))
    assert response.status == 200
    [seen] = upstream.requests
    assert seen.header("Transfer-Encoding") == "chunked"
    assert (seen.body_length, seen.body_sha256) == (size, expected)


async def test_large_content_length_upload_streams_through(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    size = 64 * MiB
    body = b"".join(pattern(size))
    response = await proxy.client.post("/acme/files/upload", data=io.BytesIO(body))
    assert response.status == 200
    [seen] = upstream.requests
    assert seen.header("Content-Length") == str(size)
    assert (seen.body_length, seen.body_sha256) == (size, hashlib.sha256(body).hexdigest())


async def test_large_download_streams_through(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy()
    size = 64 * MiB
    digest = hashlib.sha256()
    received = 0
    async with proxy.client.get(f"/acme/_fake/bytes/{size}") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(b"".join(pattern(size))).hexdigest()


async def test_compressed_body_passes_through_untouched(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        url = f"http://127.0.0.1:{proxy.port}/acme/_fake/gzip"
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
            body = await response.read()
            assert response.headers["Content-Encoding"] == "gzip"
    assert body == gzip.compress(GZIP_JSON, mtime=0)
    assert upstream.requests[0].header_all("Accept-Encoding") == ["gzip"]


async def test_proxy_adds_no_client_headers_of_its_own(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, get("/acme/x"))
    assert response.status == 200
    names = {name.lower() for name, _ in upstream.requests[0].headers}
    assert names == {"host", "authorization", "amperity-tenant", "api-version", "x-request-id"}


async def test_repeated_response_headers_survive(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, get("/acme/_fake/cookies"))
    assert [v for k, v in response.headers if k.lower() == "set-cookie"] == [
        "a=1; Path=/",
        "b=2; Path=/",
    ]


async def test_hop_by_hop_response_headers_are_dropped(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, get("/acme/_fake/hop"))
    names = {k.lower() for k, _ in response.headers}
    assert "x-hop-secret" not in names and "keep-alive" not in names
    assert not any(name.startswith("access-control-") for name in names)  # never CORS
    assert response.header("X-End") == "1"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("{base}/segments/1?x=1", "http://{client}/acme/segments/1?x=1"),
        ("{base}", "http://{client}/acme"),
        ("/api/jobs/7", "http://{client}/acme/jobs/7"),
        ("jobs/8", "http://{client}/acme/_fake/jobs/8"),
        ("https://elsewhere.example/api/x", "https://elsewhere.example/api/x"),
        ("{origin}/other/x", "{origin}/other/x"),
        ("{origin}/apix", "{origin}/apix"),
        ("http://acme.amperity.com:{port}/api/x", "http://acme.amperity.com:{port}/api/x"),
    ],
)
async def test_location_inside_the_base_url_is_rewritten(
    make_proxy: ProxyFactory, upstream: Upstream, location: str, expected: str
) -> None:
    proxy = await make_proxy()
    origin = f"https://acme.amperity.com:{upstream.port}"
    values = {"base": origin + "/api", "origin": origin, "port": str(upstream.port)}
    target = location.format(**values)
    client_host = f"127.0.0.1:{proxy.port}"
    url = URL(f"http://{client_host}/acme/_fake/redirect").with_query(to=target)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False) as response,
    ):
        assert response.status == 302
        assert response.headers["Location"] == expected.format(**values, client=client_host)
    assert len(upstream.requests) == 1  # the redirect was not followed


async def test_head_and_no_content_responses(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy()
    head = await proxy.client.head(f"/acme/_fake/bytes/{MiB}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(MiB)
    assert (await proxy.client.delete("/acme/_fake/status/204")).status == 204
    assert [r.method for r in upstream.requests] == ["HEAD", "DELETE"]


async def test_upstream_error_statuses_pass_through(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await proxy.client.get("/acme/_fake/status/503")
    assert response.status == 503
    assert await response.read() == b""  # the upstream's answer, not a proxy envelope
    assert upstream.requests[0].status == 503


async def test_keep_alive_connection_serves_several_requests(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    for i in range(5):
        response = await proxy.client.post(f"/acme/x/{i}", data=b"body" * i)
        body = json.loads(await response.read())
        assert body["body_length"] == 4 * i
    assert [r.raw_path for r in upstream.requests] == [f"/api/x/{i}" for i in range(5)]


async def test_the_proxys_own_answers_name_no_versions(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    """aiohttp's default `Server: Python/3.x aiohttp/3.y.z` told anyone which advisories to
    try. The proxy's own answers (both listeners) say only what they are; an upstream's own
    Server field is relayed as it came."""
    own = b"HTTP/1.1 200 OK\r\nServer: AmperityEdge/7\r\nContent-Length: 2\r\n\r\nok"
    bare = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    scripted = ScriptedUpstream([own, bare])
    port = await scripted.start(tls)
    try:
        base = f"https://acme.amperity.com:{port}/api"
        proxy = await make_proxy([acme_route(upstream, base_url=base)])
        answers = [
            await proxy.client.get("/nowhere"),  # the proxy's own 404
            await proxy.admin.get("/healthz"),
            await proxy.client.get("/acme/one"),  # relayed, with the upstream's Server
            await proxy.client.get("/acme/two"),  # relayed, without one
        ]
    finally:
        await scripted.close()
    servers = [a.headers.getall("Server") for a in answers]
    assert servers == [
        ["amperity-auth-proxy"],
        ["amperity-auth-proxy"],
        ["AmperityEdge/7"],
        ["amperity-auth-proxy"],
    ]
    for a in answers:
        text = " ".join(f"{k}: {v}" for k, v in a.headers.items())
        assert "aiohttp" not in text and "Python/" not in text
