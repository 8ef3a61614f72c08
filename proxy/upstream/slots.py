"""Upstream capacity: who may hold how many of the upstream connections at once.

An exchange holds a slot from the moment it is sent until the last byte reached the client, so
slow readers and trickling uploads hold upstream connections for as long as they are slow. The
limits keep that from starving everyone else:

- `limits.upstream_connections` in all (aiohttp's pool is sized to match, so no request ever
  waits inside it, where a full pool looked like a connect timeout);
- `limits.upstream_connections_per_route`, so one route's slow clients can't take another
  route's capacity, even when routes share an upstream host (AWS tenants on app.amperity.com);
- `limits.upstream_connections_per_client` per client address (or Unix peer), so one client's
  slow streams can't lock the others out.

A request that finds no slot waits up to `limits.upstream_queue_wait` (first come, first
served among those that fit), then gets a prompt, truthful 503 (`reason: upstream_busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from proxy.config.limits import Limits


class UpstreamBusy(Exception):
    """No upstream slot within the queue wait: `scope` names the limit that was full (a key of
    `limits:`), `limit` is its value."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope}: {limit}")
        self.scope = scope
        self.limit = limit


Full = tuple[str, int]  # (the limit's key under `limits:`, its value)


@dataclass(slots=True)
class _Waiter:
    route: str
    client: str
    granted: asyncio.Future[None]


class UpstreamSlots:
    """Counts slots in use in all, per route and per client; hands freed ones to waiters."""

    def __init__(self, total: int, per_route: int, per_client: int, queue_wait: float) -> None:
        self.total = total
        self.per_route = per_route
        self.per_client = per_client
        self.queue_wait = queue_wait
        self.in_use = 0
        self._by_route: Counter[str] = Counter()
        self._by_client: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []

    @classmethod
    def of(cls, limits: Limits) -> UpstreamSlots:
        return cls(
            limits.upstream_connections,
            limits.upstream_connections_per_route,
            limits.upstream_connections_per_client,
            limits.upstream_queue_wait,
        )

    def _full(self, route: str, client: str) -> Full | None:
        """Which limit stops one more slot for (route, client), or None when it fits."""
        if self.in_use >= self.total:
            return ("upstream_connections", self.total)
        if self._by_route[route] >= self.per_route:
            return ("upstream_connections_per_route", self.per_route)
        if self._by_client[client] >= self.per_client:
            return ("upstream_connections_per_client", self.per_client)
        return None

    def _take(self, route: str, client: str) -> None:
        self.in_use += 1
        self._by_route[route] += 1
        self._by_client[client] += 1

    def _release(self, route: str, client: str) -> None:
        self.in_use -= 1
        self._by_route[route] -= 1
        if not self._by_route[route]:
            del self._by_route[route]
        self._by_client[client] -= 1
        if not self._by_client[client]:
            del self._by_client[client]
        # Hand the freed capacity to the earliest waiters that fit now.
        for waiter in list(self._waiters):  # a granted waiter leaves the list at once
            if self._full(waiter.route, waiter.client) is None:
                self._take(waiter.route, waiter.client)
                waiter.granted.set_result(None)
                self._waiters.remove(waiter)

    @contextlib.asynccontextmanager
    async def hold(self, route: str, client: str) -> AsyncIterator[None]:
        """One slot for the duration of the block; raise UpstreamBusy after the queue wait."""
        full = self._full(route, client)
        if full is None:  # a request that fits never queues behind others
            self._take(route, client)
        else:
            await self._wait(route, client, full)
        try:
            yield
        finally:
            self._release(route, client)

    async def _wait(self, route: str, client: str, full: Full) -> None:
        waiter = _Waiter(route, client, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), self.queue_wait)
        except TimeoutError:
            if waiter.granted.done():  # granted in the same instant: it is ours
                return
            self._waiters.remove(waiter)
            raise UpstreamBusy(*(self._full(route, client) or full)) from None
        except BaseException:
            if waiter.granted.done():
                self._release(route, client)  # granted, but the request is gone
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
