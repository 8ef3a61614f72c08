"""Faults: hanging, resetting and lying upstreams, bad certificates, slow and greedy clients.

After every upstream fault, the proxy's file descriptors and its upstream connection pool
return to their baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.testing import FakeTLS
from tests.conftest import (
    ACME_TOKEN,
    Proxy,
    ProxyFactory,
    ScriptedUpstream,
    Upstream,
    acme_route,
    get,
    raw_request,
)
from tests.hostile.conftest import LEDGER
from tests.support.net import refused_port

MiB = 1024 * 1024


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def pool_in_use(proxy: Proxy) -> int:
    return proxy.app.upstream_in_use()


async def settle(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition that the event loop makes true, e.g. sockets closing."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never settled: {what}: {_fd_listing()}")


def _fd_listing() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


async def fresh_get(proxy: Proxy, path: str) -> tuple[int, bytes | Exception]:
    """One request on its own connection, closed afterwards (no keep-alive fd left behind)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as s,
        s.get(f"http://127.0.0.1:{proxy.port}{path}") as response,
    ):
        try:
            return response.status, await response.read()
        except aiohttp.ClientPayloadError as exc:
            return response.status, exc


@pytest.fixture
async def baseline(
    make_proxy: ProxyFactory, upstream: Upstream
) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    """A proxy with short upstream timeouts, and a check that fds and pool return to baseline."""
    made: list[tuple[Proxy, int]] = []

    async def factory(routes: list[dict[str, Any]] | None = None, **kwargs: Any) -> Proxy:
        route = acme_route(upstream, timeouts={"connect": 2, "read": 0.3})
        proxy = await make_proxy(routes or [route], **kwargs)
        assert (await fresh_get(proxy, "/acme/warm-up"))[0] in (200, 502, 504)
        made.append((proxy, fd_count()))
        return proxy

    yield factory
    for proxy, fds in made:
        await settle(lambda p=proxy: pool_in_use(p) == 0, "upstream pool")  # type: ignore[misc]
        await settle(lambda n=fds: fd_count() <= n, "file descriptors")  # type: ignore[misc]
        LEDGER.fault_cases += 1


async def test_upstream_hangs_before_headers(
    baseline: Callable[..., Awaitable[Proxy]], upstream: Upstream
) -> None:
    proxy = await baseline()
    status, _ = await fresh_get(proxy, "/acme/_fake/hold")
    assert status == 504


async def test_upstream_hangs_mid_body_the_client_sees_a_cut(
    baseline: Callable[..., Awaitable[Proxy]], upstream: Upstream
) -> None:
    proxy = await baseline()
    status, body = await fresh_get(proxy, "/acme/_fake/stall/1000")
    assert status == 200
    assert isinstance(body, aiohttp.ClientPayloadError)  # never a clean end
    upstream.fake.release.set()


async def test_upstream_resets_after_headers(
    baseline: Callable[..., Awaitable[Proxy]], upstream: Upstream
) -> None:
    proxy = await baseline()
    status, body = await fresh_get(proxy, "/acme/_fake/reset")
    # Nothing had reached the client yet (headers leave with the first body bytes), so the
    # client gets an honest 502 rather than a 200 that could be mistaken for success.
    assert status == 502
    assert b"closed the connection" in body  # type: ignore[operator]


async def test_upstream_closes_mid_body(
    baseline: Callable[..., Awaitable[Proxy]], upstream: Upstream
) -> None:
    proxy = await baseline()
    status, body = await fresh_get(proxy, "/acme/_fake/cut/50000")
    assert status == 200 and isinstance(body, aiohttp.ClientPayloadError)


async def test_upstream_refuses_connections(
    baseline: Callable[..., Awaitable[Proxy]], upstream: Upstream
) -> None:
    with refused_port() as port:
        base_url = f"https://acme.amperity.com:{port}/api"
        proxy = await baseline([acme_route(upstream, base_url=base_url)])
        assert (await fresh_get(proxy, "/acme/x"))[0] == 502


TLS_SERVER = """
import asyncio, json, ssl, sys
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(sys.argv[1])
counts = {"handshakes": 0, "bytes": 0}
async def handle(reader, writer):
    counts["handshakes"] += 1
    counts["bytes"] += len(await reader.read(65536))
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(json.dumps(counts), flush=True)
asyncio.run(main())
"""


class CountingTLSServer:
    """A TLS server in its own process (so its sockets don't blur the proxy's fd count) that
    counts completed handshakes and HTTP bytes received: both must stay 0."""

    def __init__(self, pem: bytes, workdir: Path) -> None:
        (workdir / "server.pem").write_bytes(pem)
        (workdir / "server.py").write_text(TLS_SERVER)
        self.args = [sys.executable, str(workdir / "server.py"), str(workdir / "server.pem")]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        return int(await asyncio.wait_for(self.proc.stdout.readline(), 30))

    async def counts(self) -> dict[str, int]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"\n")
        await self.proc.stdin.drain()
        counts: dict[str, int] = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))
        await self.proc.wait()
        return counts


def _cert_pem(tls: FakeTLS, case: str) -> bytes:
    from proxy.testing import make_tls

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    if case == "untrusted CA":
        return make_tls("acme.amperity.com").issue_pem("acme.amperity.com")
    if case == "wrong hostname":
        return tls.issue_pem("other.example")
    return tls.issue_pem(
        "acme.amperity.com", not_before=past - datetime.timedelta(days=30), not_after=past
    )


@pytest.mark.parametrize("case", ["untrusted CA", "wrong hostname", "expired"])
async def test_bad_certificates_get_502_and_no_http_bytes(
    baseline: Callable[..., Awaitable[Proxy]],
    upstream: Upstream,
    tls: FakeTLS,
    tmp_path: Path,
    case: str,
) -> None:
    server = CountingTLSServer(_cert_pem(tls, case), tmp_path)
    port = await server.start()
    route = acme_route(upstream, base_url=f"https://acme.amperity.com:{port}/api")
    proxy = await baseline([route])
    status, body = await fresh_get(proxy, "/acme/x")
    assert status == 502
    assert b"TLS verification failed" in body  # type: ignore[operator]
    assert await server.counts() == {"handshakes": 0, "bytes": 0}
    assert 'reason="tls"' in await proxy.metrics_text()


# --- slow and greedy clients ---------------------------------------------------------------


async def test_slow_headers_get_408_and_a_closed_connection(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"limits": {"header_timeout": 0.3}})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /acme/x HTTP/1.1\r\nHost: 127.")  # ... and nothing more
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # returns when the proxy closes
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"limits.header_timeout" in data
    assert upstream.requests == []
    assert (
        'amperity_proxy_rejected_requests_total{reason="header_timeout"} 1.0'
        in await proxy.metrics_text()
    )


async def test_idle_connection_is_closed_quietly(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"limits": {"header_timeout": 0.3}})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing said
    writer.close()


async def test_slow_body_gets_408(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy(extra={"limits": {"body_timeout": 0.3}})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert upstream.requests == []  # the upstream never got a complete request


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_larger_than_max_body_bytes_gets_413(
    make_proxy: ProxyFactory, upstream: Upstream, chunked: bool
) -> None:
    proxy = await make_proxy([acme_route(upstream, max_body_bytes=1000)])

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    data: Any = chunks() if chunked else b"x" * 5000
    response = await proxy.client.post("/acme/x", data=data)
    assert response.status == 413
    assert upstream.requests == []
    small = await proxy.client.post("/acme/x", data=b"x" * 1000)
    assert small.status == 200


async def test_connections_beyond_max_connections_get_503(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"limits": {"max_connections": 5}})
    idle = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(5)]
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    data = await asyncio.wait_for(reader.read(), 10)
    assert data.startswith(b"HTTP/1.1 503 ") and b"limits.max_connections" in data
    writer.close()
    for _, w in idle:
        w.close()
    await settle(lambda: len(proxy.client.server.runner.server.connections) <= 1, "idle closed")  # type: ignore[union-attr]
    assert (await raw_request(proxy.port, get("/acme/x"))).status == 200


async def test_slow_reader_back_pressure_bounds_what_is_in_flight(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    size = 256 * MiB
    received = 0
    widest = 0
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.port}/acme/_fake/bytes/{size}") as response,
    ):
        while received < 32 * MiB:
            chunk = await response.content.read(64 * 1024)
            received += len(chunk)
            widest = max(widest, upstream.fake.streamed - received)
            await asyncio.sleep(0.001)  # a slow reader
    # Without back-pressure the upstream would race ahead by hundreds of MiB.
    assert widest < 24 * MiB, f"{widest / MiB:.1f} MiB in flight"


async def test_two_thousand_idle_connections_while_traffic_flows(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    idle = []
    for _ in range(2000):
        idle.append(await asyncio.open_connection("127.0.0.1", proxy.port))
    try:
        responses = await asyncio.gather(*(proxy.client.get(f"/acme/live/{i}") for i in range(50)))
        assert [r.status for r in responses] == [200] * 50
        assert len(upstream.requests) == 50
    finally:
        for _, writer in idle:
            writer.close()


# --- upstreams that lie in their status line or headers -------------------------------------

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 600 High\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 999 Nine\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["101", "000", "099", "600", "999"],
)
async def test_upstream_status_outside_200_599_is_a_502_and_the_connection_is_dropped(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS, answer: bytes
) -> None:
    scripted = ScriptedUpstream([answer, OK])
    port = await scripted.start(tls)
    try:
        base = f"https://acme.amperity.com:{port}/api"
        proxy = await make_proxy([acme_route(upstream, base_url=base)])
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        keep = b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(keep)
        first = await asyncio.wait_for(_one_response(reader), 10)
        # The client connection stays sound: a second request on it gets the next answer.
        writer.write(keep)
        second = await asyncio.wait_for(_one_response(reader), 10)
        writer.close()
        status_line = first.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 502 "), first
        assert b'"status": 502' in first and b"malformed or unexpected response" in first
        assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b'{"ok":true}')
        # The upstream connection that carried the odd status was not reused.
        assert [len(c) for c in scripted.connections] == [1, 1], scripted.connections
        text = await proxy.metrics_text()
        line = 'upstream_errors_total{reason="bad_response",route="acme",tenant="acme"} 1.0'
        assert line in text
        LEDGER.fault_cases += 1
    finally:
        await scripted.close()


async def _one_response(reader: asyncio.StreamReader) -> bytes:
    """One Content-Length-framed response from a keep-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nhi",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["status-line", "header-line", "cl-and-te", "000"],
)
async def test_a_malformed_upstream_answer_never_logs_the_query_or_the_token(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    tls: FakeTLS,
    caplog: pytest.LogCaptureFixture,
    answer: bytes,
) -> None:
    """aiohttp's exception text carries the full URL; the README promises no query is ever
    logged. Checked on the formatted lines of both formatters, at every level."""
    from proxy.observe.logs import JsonFormatter, TextFormatter

    scripted = ScriptedUpstream([answer])
    port = await scripted.start(tls)
    try:
        base = f"https://acme.amperity.com:{port}/api"
        proxy = await make_proxy([acme_route(upstream, base_url=base)])
        caplog.set_level(logging.DEBUG)
        response = await proxy.client.get("/acme/x?api_key=QUERY-SECRET-123&b=2")
        assert response.status == 502
        assert b"api_key=QUERY-SECRET-123" in scripted.heads[0]  # it was sent upstream
        lines = [
            formatter.format(record)
            for record in caplog.records
            for formatter in (JsonFormatter(), TextFormatter())
        ]
        assert any("bad_response" in line or "malformed" in line for line in lines), lines
        for line in lines:
            assert "QUERY-SECRET-123" not in line and "api_key" not in line, line
            assert ACME_TOKEN not in line
        LEDGER.tried("secrets in logs")
    finally:
        await scripted.close()
