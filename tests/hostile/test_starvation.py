"""Starvation: trickling uploads and slow readers hold upstream connections for as long as they
are slow. A route's and a client's share of the upstream connections are capped, a request that
can't get one is told so promptly (503 `upstream_busy`, not a 504 "connect timeout" after 10 s),
and a request body has a total deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import ProxyFactory, Upstream, acme_route, metric
from tests.hostile.conftest import LEDGER

LIMITS = {"upstream_connections": 4, "upstream_queue_wait": 0.5}


async def _trickle(port: int, path: str, stop: asyncio.Event) -> bytes:
    """A chunked upload that sends one chunk, then nothing until `stop`; returns the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            "1\r\nx\r\n".encode()
        )
        await writer.drain()
        read = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if read.done():
            return read.result()
        read.cancel()
        return b""
    finally:
        writer.close()


async def test_trickling_uploads_on_one_route_cant_starve_another(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    slow = acme_route(upstream, prefix="/slow", timeouts={"connect": 3, "read": 30})
    other = acme_route(upstream, prefix="/other", timeouts={"connect": 3, "read": 30})
    proxy = await make_proxy(
        [slow, other], extra={"limits": {**LIMITS, "upstream_connections_per_route": 2}}
    )
    stop = asyncio.Event()
    uploads = [asyncio.create_task(_trickle(proxy.port, "/slow/upload", stop)) for _ in range(4)]
    try:
        # Two hold /slow's share; the other two are told at once that it is busy.
        done, _ = await asyncio.wait(uploads, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert done, "no upload was refused within the queue wait"
        started = asyncio.get_running_loop().time()
        response = await proxy.client.get("/other/segments")
        took = asyncio.get_running_loop().time() - started
        LEDGER.tried("starvation")
        assert response.status == 200  # the bug: 504 after the 3 s connect timeout
        assert took < 2.5, took
        heads = [u.result() for u in uploads if u.done()]
        assert heads and all(h.startswith(b"HTTP/1.1 503 ") for h in heads), heads
    finally:
        stop.set()
        await asyncio.gather(*uploads, return_exceptions=True)
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_rejected_requests_total{reason="upstream_busy"}') >= 1


async def test_a_body_that_trickles_past_body_deadline_gets_408(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"limits": {"body_deadline": 1, "body_timeout": 30}})

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(100):  # one byte every 0.2 s: never idle for body_timeout
            yield b"x"
            await asyncio.sleep(0.2)

    response = await asyncio.wait_for(proxy.client.post("/acme/upload", data=trickle()), 20)
    LEDGER.tried("starvation")
    assert response.status == 408
    assert "limits.body_deadline" in (await response.json())["message"]


async def _slow_reader(port: int, stop: asyncio.Event, headers: bytes = b"") -> bytes:
    """A download whose client reads the response head and then nothing (`headers`: more
    request header lines, each ending in CRLF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /acme/_fake/bytes/104857600 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        if head.startswith(b"HTTP/1.1 200 "):
            await stop.wait()
        return head
    finally:
        writer.close()


async def test_slow_readers_from_one_address_leave_room_for_another_client(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    route: dict[str, Any] = acme_route(upstream, timeouts={"connect": 3, "read": 30})
    proxy = await make_proxy(
        [route],
        extra={
            "limits": {**LIMITS, "upstream_connections": 6, "upstream_connections_per_client": 3}
        },
    )
    stop = asyncio.Event()
    readers = [asyncio.create_task(_slow_reader(proxy.port, stop)) for _ in range(6)]
    try:
        for _ in range(500):  # wait (bounded) until all six have a head: 3 streams, 3 refusals
            if sum(1 for r in readers if r.done()) == 3:
                break
            await asyncio.sleep(0.02)
        refusals = [r.result() for r in readers if r.done()]
        LEDGER.tried("slow readers")
        assert len(refusals) == 3 and all(h.startswith(b"HTTP/1.1 503 ") for h in refusals)
        # Another client (another loopback address) still gets through at once.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = asyncio.get_running_loop().time()
            async with session.get(f"http://127.0.0.1:{proxy.port}/acme/segments") as response:
                assert response.status == 200  # the bug: 504 after the connect timeout
                await response.read()
            assert asyncio.get_running_loop().time() - started < 2.5
    finally:
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
