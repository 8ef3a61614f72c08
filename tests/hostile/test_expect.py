"""`Expect: 100-continue`: the proxy sends `100 Continue` once a request is admitted (route,
policy, client token, rate limit), never before, and a refused request gets its final status
without it. A client that waits for the 100 (curl does, for a second) never stalls."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from tests.conftest import ProxyFactory, Upstream, acme_route
from tests.hostile.conftest import LEDGER

BODY = b"0123456789" * 100
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _head(method: str, path: str, *extra: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {len(BODY)}",
        "Expect: 100-continue",
        *extra,
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def _first_bytes(reader: asyncio.StreamReader) -> bytes:
    """The first response head the proxy sends (interim or final)."""
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_an_admitted_request_gets_100_continue_then_its_body_goes_upstream(
    make_proxy: ProxyFactory, upstream: Upstream, method: str
) -> None:
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(_head(method, "/acme/items", "Connection: close"))
        await writer.drain()
        # The client waits for the 100 before it sends a byte of its body.
        assert await _first_bytes(reader) == CONTINUE
        writer.write(BODY)
        await writer.drain()
        final = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    LEDGER.tried("expect 100-continue")
    assert final.startswith(b"HTTP/1.1 200 ")
    [received] = upstream.requests
    assert received.method == method
    assert received.body_length == len(BODY)
    assert received.body_sha256 == hashlib.sha256(BODY).hexdigest()
    assert received.header("Expect") is None  # answered here; the upstream never waits


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("policy", 403),
        ("no route", 404),
        ("client token", 403),
        ("rate limit", 429),
        ("too large", 413),
    ],
)
async def test_a_refused_request_gets_its_final_status_without_100(
    make_proxy: ProxyFactory, upstream: Upstream, case: str, status: int
) -> None:
    route = acme_route(
        upstream,
        methods=["GET", "PUT"] if case != "policy" else ["GET"],
        max_body_bytes=len(BODY) - 1 if case == "too large" else None,
        rate_limit={"requests_per_second": 0.001, "burst": 1, "max_wait": 0.001, "key": "route"}
        if case == "rate limit"
        else None,
    )
    extra = {"listen": {"client_token": {"env": "CLIENT_TOKEN"}}} if case == "client token" else {}
    proxy = await make_proxy([route], env={"CLIENT_TOKEN": "c" * 32}, extra=extra)
    headers = ("X-Proxy-Token: " + "c" * 32,) if case != "client token" else ()
    if case == "rate limit":  # the one burst slot goes to a first request
        first = await proxy.client.get("/acme/warm", headers={"X-Proxy-Token": "c" * 32})
        assert first.status == 200
    before = len(upstream.requests)
    path = "/nowhere/items" if case == "no route" else "/acme/items"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(_head("PUT", path, *headers))
        await writer.drain()
        head = await _first_bytes(reader)
        # Refused before the 100: the proxy closes instead of waiting for a body.
        assert await asyncio.wait_for(reader.read(), 10) is not None
    finally:
        writer.close()
    LEDGER.tried("expect 100-continue")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert CONTINUE not in head
    assert len(upstream.requests) == before


async def test_an_unknown_expectation_gets_417(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(_head("PUT", "/acme/items").replace(b"100-continue", b"200-ok"))
        await writer.drain()
        head = await _first_bytes(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 417 ")
    assert upstream.requests == []
