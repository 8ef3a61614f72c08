"""Bytes in are bytes out: the cases the outside attack found, as plain tests, judged by an h11
upstream (tests/support/h11_upstream.py). A request body is forwarded as the client sent it
(never inflated), under the framing the proxy's writer declares for exactly those bytes, and
nothing past it is ever read by the upstream as a request of its own."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import zlib
from collections.abc import AsyncIterator

import h11
import pytest

from proxy.testing import FakeTLS, make_token
from tests.conftest import ProxyFactory, ScriptedUpstream, Upstream
from tests.hostile.conftest import LEDGER
from tests.support.h11_upstream import Assembler, H11Upstream, Received, expect, read_response

INGEST_TOKEN = make_token("acme")
REPORTS_TOKEN = make_token("acme")


@pytest.fixture
async def judge(tls: FakeTLS) -> AsyncIterator[H11Upstream]:
    upstream = H11Upstream()
    await upstream.start(tls.server)
    yield upstream
    await upstream.close()


def _routes(port: int, **ingest: object) -> list[dict[str, object]]:
    base = f"https://acme.amperity.com:{port}/api"
    return [
        {
            "name": "ingest",
            "prefix": "/ingest",
            "tenant": "acme",
            "base_url": base,
            "token": {"env": "INGEST_TOKEN"},
            "methods": ["POST", "PUT"],
            **ingest,
        },
        {
            "name": "reports",
            "prefix": "/reports",
            "tenant": "acme",
            "base_url": base,
            "token": {"env": "REPORTS_TOKEN"},
            "methods": ["GET"],
        },
    ]


ENV = {"INGEST_TOKEN": INGEST_TOKEN, "REPORTS_TOKEN": REPORTS_TOKEN}


async def _send(port: int, data: bytes) -> bytes:
    """One request on a fresh client connection; its response parsed by h11."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        view = await asyncio.wait_for(read_response(reader), 10)
        return view.status.to_bytes(2, "big") + view.body
    finally:
        writer.close()


def _post(path: str, body: bytes, *headers: str, method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def _smuggling_body() -> bytes:
    """The attack's body: gzip whose inflation is exactly its own length of filler, then the
    start of a DELETE (with the old writer, the bytes past the declared length)."""
    tail = b"DELETE /api/segments/victim-seg HTTP/1.1\r\nX-Smuggled-Prefix: "
    for filler in range(40, 400):
        body = gzip.compress(b"a" * filler + tail, mtime=0)
        if len(body) == filler:
            return body
    raise AssertionError("no fixed point")  # pragma: no cover


async def test_a_gzip_body_cannot_smuggle_a_request_onto_another_routes_token(
    make_proxy: ProxyFactory, upstream: Upstream, judge: H11Upstream
) -> None:
    proxy = await make_proxy(_routes(judge.port), env=ENV)
    body = _smuggling_body()
    status = await _send(
        proxy.port,
        _post("/ingest/data/x", body, "Content-Encoding: gzip", "Content-Type: text/plain"),
    )
    assert status[:2] == (200).to_bytes(2, "big")
    # The next ordinary request of the other route, on the same pooled upstream connection.
    get = b"GET /reports/segments HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    await _send(proxy.port, get)
    LEDGER.tried("framing (request)", 2)
    methods = [(r.method, r.target) for r in judge.received]
    assert methods == [(b"POST", b"/api/data/x"), (b"GET", b"/api/segments")]
    first = judge.received[0]
    assert first.body == body  # the client's gzip bytes, not their inflation
    assert first.all(b"content-length") == [str(len(body)).encode()]
    assert first.header(b"content-encoding") == b"gzip"
    assert not judge.errors and not judge.leftover


async def test_a_large_inflation_is_forwarded_compressed_and_counted_compressed(
    make_proxy: ProxyFactory, upstream: Upstream, judge: H11Upstream
) -> None:
    """6 KB of gzip that inflates to 3 MiB, on a Streaming API route (its 1 MiB cap): the
    upstream gets the 6 KB the client sent, and the cap counts those bytes."""
    proxy = await make_proxy(_routes(judge.port, api="streaming"), env=ENV)
    body = gzip.compress(b'{"a": 1}\n' * (3 * 1024 * 1024 // 9), compresslevel=9)
    assert len(body) < 20_000
    status = await _send(
        proxy.port, _post("/ingest/stream/v0/data/s1", body, "Content-Encoding: gzip")
    )
    LEDGER.tried("framing (request)")
    assert status[:2] == (200).to_bytes(2, "big")
    (got,) = judge.received
    assert got.body == body and got.all(b"content-length") == [str(len(body)).encode()]
    assert zlib.decompress(got.body, 31).startswith(b'{"a": 1}')


async def test_a_replayable_put_with_gzip_keeps_every_byte(
    make_proxy: ProxyFactory, upstream: Upstream, judge: H11Upstream
) -> None:
    """A PUT is kept for a replay after a 401: the kept body is the client's bytes, whole."""
    proxy = await make_proxy(_routes(judge.port), env=ENV)
    body = gzip.compress(os.urandom(1000) + b"y" * 50_000)
    status = await _send(
        proxy.port, _post("/ingest/data/x", body, "Content-Encoding: gzip", method="PUT")
    )
    LEDGER.tried("framing (request)")
    assert status[:2] == (200).to_bytes(2, "big")
    (got,) = judge.received
    assert (got.method, got.body) == (b"PUT", body)
    assert got.all(b"content-length") == [str(len(body)).encode()]


async def test_the_writer_declares_the_framing_whatever_the_client_said(
    make_proxy: ProxyFactory, upstream: Upstream, judge: H11Upstream
) -> None:
    """The client's framing headers are never copied: a chunked upload is re-framed chunk by
    chunk, and no `Connection` header removes the proxy's own headers."""
    proxy = await make_proxy(_routes(judge.port), env=ENV)
    request = (
        b"POST /ingest/data/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive, Host, Authorization, Amperity-Tenant, api-version, "
        b"Content-Length, Transfer-Encoding, X-Request-ID\r\n\r\n"
        b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"
    )
    await _send(proxy.port, request)
    LEDGER.tried("framing (request)")
    (got,) = judge.received
    assert got.body == b"abcdefgh"
    assert got.all(b"transfer-encoding") == [b"chunked"] and not got.all(b"content-length")
    assert got.header(b"host") == f"acme.amperity.com:{judge.port}".encode()
    assert got.header(b"authorization") == f"Bearer {INGEST_TOKEN}".encode()
    assert got.header(b"amperity-tenant") == b"acme"
    assert got.header(b"api-version") is not None and got.header(b"x-request-id") is not None
    assert not got.all(b"connection") or got.all(b"connection") == [b"keep-alive"]


def _shown(r: Received) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in r.headers]


async def test_header_bytes_above_0x7f_are_forwarded_as_sent(
    make_proxy: ProxyFactory, upstream: Upstream, judge: H11Upstream
) -> None:
    """obs-text (RFC 9110 §5.5) in a request header: the upstream gets the same bytes (Latin-1,
    invalid UTF-8 and valid UTF-8 alike), never aiohttp's 500 page."""
    proxy = await make_proxy(_routes(judge.port), env=ENV)
    request = (
        b"GET /reports/segments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"User-Agent: tool\x80/1\r\nX-Latin: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\n"
        b"api-version: \xff\r\n\r\n"
    )
    status = await _send(proxy.port, request)
    LEDGER.tried("header bytes", 4)
    assert status[:2] == (200).to_bytes(2, "big")
    (got,) = judge.received
    headers = _shown(got)
    assert (b"user-agent", b"tool\x80/1") in headers
    assert (b"x-latin", b"caf\xe9") in headers
    assert (b"x-utf8", b"caf\xc3\xa9") in headers
    assert got.all(b"api-version") == [b"\xff"]


async def _answered(make_proxy: ProxyFactory, tls: FakeTLS, respond: bytes) -> tuple[bytes, bytes]:
    """The raw bytes a client gets for one GET whose upstream answers `respond`, and what h11
    made of them."""
    judge = H11Upstream(lambda _: respond)
    await judge.start(tls.server)
    try:
        proxy = await make_proxy(_routes(judge.port), env=ENV)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /reports/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await judge.close()
    return raw.partition(b"\r\n\r\n")[0], raw


async def test_upstream_header_bytes_reach_the_client_unchanged(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    respond = (
        b"HTTP/1.1 200 OK\r\nX-Utf8: caf\xc3\xa9\r\nX-Latin: caf\xe9\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    head, _ = await _answered(make_proxy, tls, respond)
    LEDGER.tried("header bytes", 2)
    assert b"\r\nX-Utf8: caf\xc3\xa9\r\n" in head
    assert b"\r\nX-Latin: caf\xe9\r\n" in head


async def test_trailers_are_never_merged_into_the_header_section(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    """The trailer fields arrive in the same read as the headers and the body."""
    respond = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-T\r\n\r\n2\r\n{}\r\n0\r\nX-T: late\r\nSet-Cookie: session=from-trailer\r\n"
        b"Location: http://evil.example/\r\n\r\n"
    )
    head, raw = await _answered(make_proxy, tls, respond)
    LEDGER.tried("framing (response)")
    for field in (b"X-T", b"Set-Cookie", b"Location", b"from-trailer"):
        assert field not in raw, field
    assert head.startswith(b"HTTP/1.1 200 ")
    conn = h11.Connection(h11.CLIENT)
    expect(conn, b"GET")
    conn.receive_data(raw)
    conn.receive_data(b"")
    view = Assembler(conn).step()
    assert view is not None and view.body == b"{}" and view.trailers == []


async def test_an_unexpected_exception_answers_the_envelope_not_aiohttps_page(
    make_proxy: ProxyFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> object:
        raise RuntimeError("a bug the proxy didn't expect")

    monkeypatch.setattr("proxy.upstream.relay.response_headers", broken)
    proxy = await make_proxy()
    response = await proxy.client.get("/acme/segments", headers={"X-Request-ID": "rid-500"})
    assert response.status == 500
    body = await response.json()
    assert body["status"] == 500 and body["request_id"] == "rid-500"
    assert "trouble" not in json.dumps(body)


async def test_a_body_left_unread_closes_the_client_connection(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    """The upstream answers before the body is all there (an early 413): the proxy answers,
    then closes the client connection instead of reading on, so no leftover byte of that body
    can ever be parsed as a request."""
    scripted = ScriptedUpstream(
        [b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"]
    )
    port = await scripted.start(tls)
    proxy = await make_proxy(_routes(port), env=ENV)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST /ingest/data/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
        )
        writer.write(b"z" * 1000)
        view = await asyncio.wait_for(read_response(reader, b"POST"), 10)
        assert view.status == 413
        # What would be the next request, if the proxy read on: it must never be answered.
        writer.write(b"GET /reports/segments HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)  # aiohttp alone lingers 10 s
        assert rest == b""
    finally:
        writer.close()
        await scripted.close()
    LEDGER.tried("framing (request)")
