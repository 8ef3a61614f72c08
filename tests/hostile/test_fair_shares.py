"""Fair shares of the upstream connections, by construction: no route and no client may hold
more than `pool - reserve` (reserve = max(1, ceil(pool / 10))); the reserve is for a request
whose route or whose client holds none, so a busy tool never locks out another tool on its own
route, another client, or another route, even behind the same 127.0.0.1. A client is its named
client (`listen.clients`) or its address. Each scenario failed on the code before the fix."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import ProxyFactory, Upstream, acme_route
from tests.hostile.conftest import LEDGER
from tests.hostile.test_starvation import _slow_reader, _trickle

TIMEOUTS = {"connect": 3, "read": 30}


async def _settle(tasks: list[asyncio.Task[bytes]], refused: int) -> list[bytes]:
    """Wait (bounded) until `refused` of `tasks` were answered (the 503s of those beyond the
    share); the heads they got."""
    for _ in range(1000):
        if sum(1 for t in tasks if t.done()) >= refused:
            break
        await asyncio.sleep(0.01)
    return [t.result() for t in tasks if t.done()]


async def _get(port: int, path: str, source: str = "127.0.0.1", token: str | None = None) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    headers = {"X-Proxy-Token": token} if token else {}
    url = f"http://127.0.0.1:{port}{path}"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers) as response,
    ):
        await response.read()
        return response.status


async def test_one_local_tool_with_32_uploads_leaves_another_route_its_connection(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    routes = [acme_route(upstream, prefix=p, timeouts=TIMEOUTS) for p in ("/a", "/b")]
    proxy = await make_proxy(routes, extra={"limits": {"upstream_queue_wait": 0.5}})
    stop = asyncio.Event()
    uploads = [asyncio.create_task(_trickle(proxy.port, "/a/upload", stop)) for _ in range(32)]
    try:
        await _settle(uploads, 0)
        for _ in range(500):  # all 32 hold their connection (the pool is 100)
            if proxy.app.upstream_in_use() >= 32:
                break
            await asyncio.sleep(0.01)
        assert await asyncio.wait_for(_get(proxy.port, "/b/segments"), 10) == 200
        assert not any(u.done() for u in uploads)  # and they are all still served
    finally:
        stop.set()
        await asyncio.gather(*uploads, return_exceptions=True)
    LEDGER.tried("fair shares", 33)


async def test_a_pool_of_two_keeps_one_for_the_other_route(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    routes = [acme_route(upstream, prefix=p, timeouts=TIMEOUTS) for p in ("/a", "/b")]
    limits = {"upstream_connections": 2, "upstream_queue_wait": 0.5}
    proxy = await make_proxy(routes, extra={"limits": limits})
    stop = asyncio.Event()
    uploads = [asyncio.create_task(_trickle(proxy.port, "/a/upload", stop)) for _ in range(2)]
    try:
        [refused] = await _settle(uploads, 1)  # route a's share is 2 - 1 = 1
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert await asyncio.wait_for(_get(proxy.port, "/b/segments"), 10) == 200
    finally:
        stop.set()
        await asyncio.gather(*uploads, return_exceptions=True)
    LEDGER.tried("fair shares", 3)


async def test_slow_readers_larger_than_the_pool_leave_other_clients_served(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """40 slow readers from one address with a pool of 20: the address gets 20 - 2 = 18, every
    other client gets in (the old per-client share, 32, was larger than the pool)."""
    route: dict[str, Any] = acme_route(upstream, timeouts=TIMEOUTS)
    limits = {"upstream_connections": 20, "upstream_queue_wait": 0.5}
    proxy = await make_proxy([route], extra={"limits": limits})
    stop = asyncio.Event()
    readers = [asyncio.create_task(_slow_reader(proxy.port, stop)) for _ in range(40)]
    try:
        refused = await _settle(readers, 22)
        assert len(refused) == 22 and all(h.startswith(b"HTTP/1.1 503 ") for h in refused)
        statuses = await asyncio.gather(
            *(_get(proxy.port, "/acme/segments", source=f"127.0.0.{n}") for n in (2, 3))
        )
        assert statuses == [200, 200]
    finally:
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
    LEDGER.tried("fair shares", 42)


async def test_a_named_client_is_its_own_share_behind_one_address(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    clients = [{"name": "ci", "token": {"env": "CI_T"}}, {"name": "bi", "token": {"env": "BI_T"}}]
    route = acme_route(upstream, timeouts=TIMEOUTS, clients=["ci", "bi"])
    limits = {"upstream_connections": 4, "upstream_queue_wait": 0.5}
    proxy = await make_proxy(
        [route],
        extra={"listen": {"clients": clients}, "limits": limits},
        env={"CI_T": "ci-token-0123456789", "BI_T": "bi-token-0123456789"},
    )
    stop = asyncio.Event()

    ci = b"X-Proxy-Token: ci-token-0123456789\r\n"
    readers = [asyncio.create_task(_slow_reader(proxy.port, stop, ci)) for _ in range(4)]
    try:
        [refused] = await _settle(readers, 1)  # ci's share: 4 - 1 = 3
        assert refused.startswith(b"HTTP/1.1 503 ")
        status = await _get(proxy.port, "/acme/segments", token="bi-token-0123456789")
        assert status == 200  # bi, same address: a client of its own
    finally:
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
    LEDGER.tried("fair shares", 5)
