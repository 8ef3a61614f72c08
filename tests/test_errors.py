"""Refusals and upstream failures: envelopes, statuses, and what never reaches the upstream."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from proxy.testing import FakeTLS, make_tls
from tests.conftest import ProxyFactory, Upstream, acme_route, get, raw_request
from tests.support.envelope import envelope
from tests.support.net import refused_port


@pytest.mark.parametrize("path", ["/nope", "/acmeevil/x", "/ACME/x", "/acme;x", "/%61cme/x", "/"])
async def test_unmatched_path_gets_404_and_is_never_forwarded(
    make_proxy: ProxyFactory, upstream: Upstream, path: str
) -> None:
    routes = [acme_route(upstream), acme_route(upstream, prefix="/acme-sandbox")]
    proxy = await make_proxy(routes)
    response = await raw_request(proxy.port, get(path, "X-Request-ID: rid-1"))
    assert response.status == 404
    body = envelope(response.body)
    assert body["status"] == 404 and body["request_id"] == "rid-1"
    shown = path.split("?")[0]
    assert body["message"] == f"no route for {shown}; configured prefixes: /acme, /acme-sandbox"
    assert response.header("X-Request-ID") == "rid-1"
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/acme/../other",
        "/acme/./x",
        "/acme/%2e%2e/other",
        "/acme/%2E%2e/other",
        "/acme/.%2e/x",
        "/acme/%2e/x",
        "/acme/%252e%252e/x",  # double-encoded
        "/acme/a%2fb",
        "/acme/a%2Fb",
        "/acme/a%5cb",
        "/acme/a%255cb",
        "/acme/a\\b",
        "/acme/a%00b",
        "/acme/..",
    ],
)
async def test_traversal_paths_get_400_and_are_never_forwarded(
    make_proxy: ProxyFactory, upstream: Upstream, path: str
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, get(path))
    assert response.status == 400
    assert envelope(response.body)["message"].startswith("refused path: ")
    assert upstream.requests == []


async def test_absolute_https_target_is_refused(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(
        proxy.port, get(f"https://acme.amperity.com:{upstream.port}/api/segments")
    )
    assert response.status == 400
    assert "only http:// URLs" in envelope(response.body)["message"]
    assert upstream.requests == []


async def test_connection_refused_is_502(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    with refused_port() as port:
        proxy = await make_proxy(
            [acme_route(upstream, base_url=f"https://acme.amperity.com:{port}/api")]
        )
        response = await proxy.client.get("/acme/x")
    assert response.status == 502
    body = envelope(await response.read())
    assert "could not connect" in str(body["message"])
    assert 'reason="connect"' in await proxy.metrics_text()


async def test_unknown_host_is_502(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    base = f"https://nowhere.invalid:{upstream.port}/api"
    proxy = await make_proxy([acme_route(upstream, base_url=base)])
    response = await proxy.client.get("/acme/x")
    assert response.status == 502
    assert "could not connect" in str(envelope(await response.read())["message"])
    assert upstream.requests == []


async def test_untrusted_certificate_is_502_and_nothing_is_sent(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    other_ca = make_tls("unrelated.example")  # the proxy trusts only this CA
    proxy = await make_proxy(upstream_ssl=other_ca.client)
    response = await proxy.client.get("/acme/x")
    assert response.status == 502
    body = envelope(await response.read())
    assert "TLS verification failed" in str(body["message"])
    assert upstream.requests == []
    metrics = await proxy.metrics_text()
    assert (
        'amperity_proxy_upstream_errors_total{reason="tls",route="acme",tenant="acme"} 1.0'
        in metrics
    )


async def test_ca_file_from_config_is_trusted(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(tls.ca_pem)
    proxy = await make_proxy([acme_route(upstream, ca_file=str(ca_file))], config_tls=True)
    assert (await proxy.client.get("/acme/x")).status == 200
    assert len(upstream.requests) == 1


async def test_host_name_mismatch_is_refused(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    # The certificate does not name this host: verification must fail even with the right CA.
    base = f"https://127.0.0.1:{upstream.port}/api"
    proxy = await make_proxy([acme_route(upstream, base_url=base)])
    response = await proxy.client.get("/acme/x")
    assert response.status == 502
    assert upstream.requests == []


async def test_silent_upstream_is_504(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy([acme_route(upstream, timeouts={"read": 0.2})])
    response = await proxy.client.get("/acme/_fake/hold")
    assert response.status == 504
    body = envelope(await response.read())
    assert "did not answer in time" in str(body["message"])
    assert upstream.fake.held.is_set()
    assert 'reason="timeout"' in await proxy.metrics_text()


async def test_connect_timeout_is_504(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    # A listening socket that never accepts: the TLS handshake never completes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        base = f"https://acme.amperity.com:{port}/api"
        route = acme_route(upstream, base_url=base, timeouts={"connect": 0.2})
        proxy = await make_proxy([route])
        response = await proxy.client.get("/acme/x")
    assert response.status == 504


async def test_response_cut_mid_stream_is_passed_on_as_a_cut(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        url = f"http://127.0.0.1:{proxy.port}/acme/_fake/cut/100000"
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == "200000"
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    text = await proxy.metrics_text()
    assert (
        'amperity_proxy_upstream_errors_total{reason="reset",route="acme",tenant="acme"} 1.0'
        in text
    )


async def test_chunked_response_cut_mid_stream_has_no_clean_end(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, get("/acme/_fake/cut/100000?chunked"))
    assert response.status == 200
    assert response.header("Transfer-Encoding") == "chunked"
    assert len(response.body) >= 100000
    assert not response.body.endswith(b"0\r\n\r\n")  # no terminating chunk: visibly cut


async def test_client_closing_early_does_not_break_the_proxy(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(get(f"/acme/_fake/bytes/{64 * 1024 * 1024}"))
    await writer.drain()
    await reader.readexactly(1024)
    writer.close()
    # The proxy keeps serving.
    assert (await proxy.client.get("/acme/after")).status == 200
