"""The upstream path's own HTTP/1.1 (upstream/wire.py, httptools): strict framing of what the
upstream answers, and a pooled connection reused only after a complete, well-framed answer.

Each case sends one request whose answer is scripted, then a second one on the same client
connection; the scripted upstream records which connection each request arrived on, so the
test proves whether the first connection went back to the pool."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from proxy.testing import FakeTLS
from proxy.upstream import pool as pool_module
from proxy.upstream.answer import FramingBroken
from proxy.upstream.framing import CHUNKED, NO_BODY, RequestHead
from proxy.upstream.wire import Connection
from tests.conftest import ProxyFactory, ScriptedUpstream, Upstream, acme_route
from tests.hostile.conftest import LEDGER
from tests.support.waiting import until

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
GET = b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEAD = b"HEAD /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _response(reader: asyncio.StreamReader, head_only: bool = False) -> bytes:
    """One response from a keep-alive client connection (Content-Length framed, or none)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if head_only or status in (204, 304):
        return head
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def _two_requests(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    tls: FakeTLS,
    scripted: ScriptedUpstream,
    first: bytes,
) -> tuple[bytes, bytes]:
    port = await scripted.start(tls)
    base = f"https://acme.amperity.com:{port}/api"
    proxy = await make_proxy([acme_route(upstream, base_url=base)])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(first)
        one = await asyncio.wait_for(_response(reader, head_only=first is HEAD), 10)
        writer.write(GET)
        two = await asyncio.wait_for(_response(reader), 10)
    finally:
        writer.close()
        await scripted.close()
    return one, two


async def test_a_complete_answer_leaves_its_connection_for_the_next_request(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    scripted = ScriptedUpstream([OK])
    one, two = await _two_requests(make_proxy, upstream, tls, scripted, GET)
    assert one.endswith(b'{"ok":true}') and two.endswith(b'{"ok":true}')
    assert [len(c) for c in scripted.connections] == [2]  # both on one upstream connection


BAD_FRAMING = {
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nhi",
    "oversize-headers": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"b" * 70_000
    + b"\r\nContent-Length: 2\r\n\r\nhi",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("answer", list(BAD_FRAMING.values()), ids=list(BAD_FRAMING))
async def test_a_badly_framed_answer_is_a_502_and_its_connection_is_never_reused(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS, answer: bytes
) -> None:
    scripted = ScriptedUpstream([answer, OK])
    one, two = await _two_requests(make_proxy, upstream, tls, scripted, GET)
    assert one.startswith(b"HTTP/1.1 502 "), one[:200]
    assert b"malformed or unexpected response" in one
    assert two.endswith(b'{"ok":true}')
    assert [len(c) for c in scripted.connections] == [1, 1], scripted.connections
    LEDGER.fault_cases += 1


NO_BODY_BUT_SENT = {
    "204-with-body": (GET, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", b"204"),
    "304-with-body": (GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", b"304"),
    "head-with-body": (HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"200"),
    "pipelined-extra": (GET, OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"200"),
}


@pytest.mark.parametrize(
    ("request_bytes", "answer", "status"),
    list(NO_BODY_BUT_SENT.values()),
    ids=list(NO_BODY_BUT_SENT),
)
async def test_bytes_beyond_a_complete_answer_reach_nobody_and_the_connection_is_dropped(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    tls: FakeTLS,
    request_bytes: bytes,
    answer: bytes,
    status: bytes,
) -> None:
    scripted = ScriptedUpstream([answer, OK])
    one, two = await _two_requests(make_proxy, upstream, tls, scripted, request_bytes)
    assert one.startswith(b"HTTP/1.1 " + status), one
    assert b"hello" not in one and b"\r\n\r\nhi" not in two
    assert two.endswith(b'{"ok":true}')  # the next answer is the next request's own
    assert [len(c) for c in scripted.connections] == [1, 1], scripted.connections
    LEDGER.fault_cases += 1


async def test_a_connection_closed_mid_chunk_cuts_the_client_and_is_not_reused(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    scripted = ScriptedUpstream([cut, OK], closing={0})
    port = await scripted.start(tls)
    base = f"https://acme.amperity.com:{port}/api"
    proxy = await make_proxy([acme_route(upstream, base_url=base)])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(GET)
        received = await asyncio.wait_for(reader.read(), 10)  # until the proxy cuts it
        assert received.startswith(b"HTTP/1.1 200 ")
        assert not received.endswith(b"0\r\n\r\n")  # never a clean end of a chunked body
        second = await proxy.client.get("/acme/x")
        assert second.status == 200 and await second.json() == {"ok": True}
    finally:
        writer.close()
        await scripted.close()
    assert [len(c) for c in scripted.connections] == [1, 1]
    text = await proxy.metrics_text()
    assert 'upstream_errors_total{reason="reset",route="acme",tenant="acme"} 1.0' in text
    LEDGER.fault_cases += 1


async def test_idle_connections_are_closed_after_the_expiry_even_when_traffic_stops(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS
) -> None:
    """aiohttp's connector closed idle connections on a timer; the proxy's pool does too, so
    an upstream (or an origin a reload dropped) doesn't keep a socket open for ever."""
    scripted = ScriptedUpstream([OK])
    port = await scripted.start(tls)
    try:
        base = f"https://acme.amperity.com:{port}/api"
        proxy = await make_proxy([acme_route(upstream, base_url=base)], pool_idle=0.2)
        assert (await proxy.client.get("/acme/x")).status == 200
        assert len(scripted.connections) == 1 and scripted.ended == 0  # kept alive, idle
        await until(lambda: scripted.ended == 1, "the idle connection closed by the sweep", 10)
        assert (await proxy.client.get("/acme/x")).status == 200  # a fresh one
        assert len(scripted.connections) == 2
    finally:
        await scripted.close()


async def test_an_idle_connection_past_the_pools_expiry_is_never_lent(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the expiry and the sweep that closes it, an expired connection must not be
    lent either: `acquire` judged it by the default 15 s, not the pool's own expiry."""
    scripted = ScriptedUpstream([OK])
    port = await scripted.start(tls)
    now = [1000.0]
    # the pool's own clock only (the event loop's, which times the sweep, stays real)
    monkeypatch.setattr(pool_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    try:
        base = f"https://acme.amperity.com:{port}/api"
        proxy = await make_proxy([acme_route(upstream, base_url=base)], pool_idle=5)
        assert (await proxy.client.get("/acme/x")).status == 200
        now[0] += 6  # past the pool's 5 s, well inside the default 15 s; no sweep has run yet
        assert (await proxy.client.get("/acme/x")).status == 200
        assert len(scripted.connections) == 2  # a fresh connection, not the expired one
    finally:
        await scripted.close()


# --- the request side: the writer declares the framing and holds the body to it -----------


async def _writer_connection() -> tuple[Connection, asyncio.Server, list[bytes]]:
    """A `Connection` to a loopback server that records every byte it receives."""
    got: list[bytes] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            got.append(data)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(lambda: Connection(loop), "127.0.0.1", port)
    return connection, server, got


def test_the_head_drops_every_framing_field_it_is_handed_and_declares_its_own() -> None:
    fields = [
        ("Content-Length", "999"),
        ("content_length", "1"),
        ("TRANSFER-ENCODING", "chunked"),
        ("Transfer_Encoding", "identity"),
        ("X-Content-Length", "kept"),
    ]
    assert RequestHead.of("POST /x HTTP/1.1", fields, 3).data == (
        b"POST /x HTTP/1.1\r\nX-Content-Length: kept\r\nContent-Length: 3\r\n\r\n"
    )
    assert (
        b"Transfer-Encoding: chunked\r\n\r\n"
        in RequestHead.of("POST /x HTTP/1.1", [], CHUNKED).data
    )
    assert b"ength" not in RequestHead.of("GET /x HTTP/1.1", fields[:2], NO_BODY).data
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        RequestHead.of("GET /x HTTP/1.1", [("X-A", "b\r\nAuthorization: Bearer x")], NO_BODY)


@pytest.mark.parametrize(
    ("length", "chunks"),
    [(5, [b"abc", b"def"]), (5, [b"abc"]), (NO_BODY, [b"x"])],
    ids=["one-byte-more", "fewer-at-the-end", "a-body-where-none-was-declared"],
)
async def test_a_body_that_breaks_its_declared_length_aborts_and_closes(
    length: int, chunks: list[bytes]
) -> None:
    connection, server, got = await _writer_connection()
    try:
        connection.begin(head_request=False)
        await connection.send_head(RequestHead.of("PUT /x HTTP/1.1", [("Host", "h")], length))
        with pytest.raises(FramingBroken):
            for chunk in chunks:
                await connection.send_body(chunk)
            await connection.end_body()
        assert connection.transport is not None and connection.transport.is_closing()
        assert not connection.reusable
        await until(lambda: b"".join(got).startswith(b"PUT"), "the head to arrive")
        sent = b"".join(got).partition(b"\r\n\r\n")[2]
        assert len(sent) <= max(length, 0)  # never a byte past the declared end
    finally:
        connection.close()
        server.close()
        await server.wait_closed()


async def test_a_chunked_body_is_reframed_and_ended_once() -> None:
    connection, server, got = await _writer_connection()
    try:
        connection.begin(head_request=False)
        await connection.send_head(RequestHead.of("POST /x HTTP/1.1", [("Host", "h")], CHUNKED))
        for chunk in (b"ab", b"", b"cde"):  # an empty chunk would end the body: never sent
            await connection.send_body(chunk)
        await connection.end_body()
        await connection.end_body()  # the last chunk goes once
        connection.close()
        await until(lambda: b"".join(got).endswith(b"0\r\n\r\n"), "the body's end")
        body = b"".join(got).partition(b"\r\n\r\n")[2]
        assert body == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    finally:
        connection.close()
        server.close()
        await server.wait_closed()
