"""Upstream capacity: who may hold how many of the upstream connections at once.

An exchange holds a slot from the moment it is sent until the last byte reached the client, so
slow readers and trickling uploads hold upstream connections for as long as they are slow.
Fair shares, by construction, of `limits.upstream_connections` (the pool, P):

- the reserve, R = max(1, ceil(P / 10)), is kept for a request whose route or whose client
  holds no connection yet: a busy tool never locks out another route, another client, or
  another tool on its own route behind the same 127.0.0.1;
- so no route and no client holds more than P - R, and a lone tool gets everything but the
  reserve;
- while others wait, a freed connection goes to the waiter whose route or client holds
  fewest (the earliest among equals);
- `limits.upstream_connections_per_route` / `_per_client`, when set, are absolute caps on
  top (default: none, the rule above).

A client is its named client (`listen.clients`) or its address (or Unix peer). A request that
finds no slot waits up to `limits.upstream_queue_wait`, then gets a prompt, truthful 503
(`reason: upstream_busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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

    def __init__(
        self, total: int, per_route: int | None, per_client: int | None, queue_wait: float
    ) -> None:
        self.in_use = 0
        self._by_route: Counter[str] = Counter()
        self._by_client: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []
        self._limit(total, per_route, per_client, queue_wait)

    def _limit(
        self, total: int, per_route: int | None, per_client: int | None, queue_wait: float
    ) -> None:
        self.total = total
        self.reserve = max(1, math.ceil(total / 10))
        self.share = total - self.reserve  # what one route or client may hold
        self.per_route = per_route  # absolute caps, when configured
        self.per_client = per_client
        self.queue_wait = queue_wait

    def configure(self, limits: Limits) -> None:
        """A reload's limits, applied at once: the counts of what is held survive (a reload
        never briefly doubles a cap); slots held beyond a smaller pool are given back as their
        exchanges end, and a larger pool serves waiters now."""
        self._limit(
            limits.upstream_connections,
            limits.upstream_connections_per_route,
            limits.upstream_connections_per_client,
            limits.upstream_queue_wait,
        )
        self._grant()

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
        held_route, held_client = self._by_route[route], self._by_client[client]
        if self.per_route is not None and held_route >= self.per_route:
            return ("upstream_connections_per_route", self.per_route)
        if self.per_client is not None and held_client >= self.per_client:
            return ("upstream_connections_per_client", self.per_client)
        if held_route and held_client and self.in_use >= self.share:
            # Only the reserve is left: it is for a route or a client that holds none.
            return ("upstream_connections", self.total)
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
        self._grant()

    def _grant(self) -> None:
        """Hand free capacity to the waiters that fit now, fewest held first."""
        while self._waiters:
            fitting = [w for w in self._waiters if self._full(w.route, w.client) is None]
            if not fitting:
                return
            waiter = min(fitting, key=self._held)  # min is stable: the earliest among equals
            self._take(waiter.route, waiter.client)
            waiter.granted.set_result(None)
            self._waiters.remove(waiter)

    def _held(self, waiter: _Waiter) -> int:
        return min(self._by_route[waiter.route], self._by_client[waiter.client])

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
