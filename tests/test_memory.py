"""Freed memory goes back to the system while the proxy runs (`proxy/cli/memory.py`). How much
is a figure for `make soak`, not an assertion; here: the trim is found and runs, and what one
slow stream may hold is bounded."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from proxy.cli.memory import malloc_trim, trim_periodically
from proxy.config.limits import Limits
from proxy.listener import GuardedServer
from proxy.listener.accept import TLS_READ, TLS_STREAMING, SmallTLS
from proxy.testing import FakeTLS
from proxy.upstream.framing import NO_BODY, RequestHead
from proxy.upstream.wire import HIGH_WATER, READ_SIZE, SLOW_READ_SIZE, Connection
from tests.support.waiting import until


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_has_malloc_trim_and_it_runs() -> None:
    trim = malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released


async def test_the_trimmer_runs_every_interval_until_cancelled() -> None:
    calls: list[int] = []
    task = asyncio.create_task(trim_periodically(lambda: calls.append(1), interval=0.01))
    await until(lambda: len(calls) >= 3, "three trims")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


BIG = 32 * 1024 * 1024  # far more than the socket buffers on both sides hold


@pytest.fixture
async def blaster(tls: FakeTLS) -> AsyncIterator[int]:
    """A TLS upstream that answers any request with BIG bytes, as fast as it is let."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            block = b"x" * 65536
            for _ in range(BIG // len(block)):
                writer.write(block)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls.server)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


async def test_a_slow_client_keeps_upstream_reads_small_and_bounded(
    tls: FakeTLS, blaster: int
) -> None:
    """What one slow stream holds: the TLS layer's read buffer is cut from asyncio's 256 KiB to
    READ_SIZE, and while the relay reports the client backed up, reads are SLOW_READ_SIZE and
    at most HIGH_WATER + SLOW_READ_SIZE wait for the relay (asyncio's defaults held 256 KiB
    chunks and a 256 KiB TLS buffer per connection)."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: Connection(loop), "127.0.0.1", blaster, ssl=tls.client, server_hostname="localhost"
    )
    try:
        ssl_protocol = getattr(connection.transport, "_ssl_protocol", None)
        assert ssl_protocol is not None, "asyncio's TLS layer changed: see trim_tls_read_buffer"
        assert len(ssl_protocol._ssl_buffer) == READ_SIZE
        connection.downstream_slow = True  # what the relay says of a client that doesn't read
        connection.begin(head_request=False)
        connection.send_whole(RequestHead.of("GET /big HTTP/1.1", [("Host", "localhost")], NO_BODY))
        answer = await connection.head(silence=30)
        assert answer.status == 200
        await until(lambda: connection.buffered > HIGH_WATER, "reading to pause")
        assert connection.buffered <= HIGH_WATER + SLOW_READ_SIZE
        taken = 0
        while taken < 4 * HIGH_WATER:  # the relay catches up a little; reading resumes, small
            chunk = await connection.read(silence=30)
            assert 0 < len(chunk) <= SLOW_READ_SIZE
            assert connection.buffered <= HIGH_WATER + SLOW_READ_SIZE
            taken += len(chunk)
    finally:
        connection.close()


async def test_the_tls_listener_reads_small_while_idle_and_large_while_a_body_streams(
    tls: FakeTLS,
) -> None:
    """An idle TLS connection on the listener holds a 16 KiB read buffer (asyncio's own is
    256 KiB); a fast upload reads 256 KiB at a time (uploads keep the stdlib's speed), and the
    buffer is small again once the body has gone through."""
    seen: list[int] = []
    server = GuardedServer.of(_sink(seen), Limits(), 16, 10, "limits", lambda _: None)
    server.tls = tls.server
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(server, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client, server_hostname="localhost"
        )
        await until(lambda: len(server.connections) == 1, "the connection to be made")
        [handler] = server.connections
        protocol = getattr(handler.transport, "_ssl_protocol", None)
        assert isinstance(protocol, SmallTLS), "asyncio's TLS layer changed: see SmallTLS"
        assert len(protocol._ssl_buffer) == TLS_READ  # idle: small
        body = b"u" * (16 * 1024 * 1024)
        writer.write(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert max(seen) == TLS_STREAMING  # the body streamed: large reads
        assert len(protocol._ssl_buffer) == TLS_READ  # and small again
        writer.close()
    finally:
        listening.close()


def _sink(seen: list[int]) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """A handler that reads the whole body, noting the listener's read buffer size."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        protocol = getattr(transport, "_ssl_protocol", None)
        while await request.content.readany():
            seen.append(len(getattr(protocol, "_ssl_buffer", b"")))
        return web.Response(text="{}")

    return handle
