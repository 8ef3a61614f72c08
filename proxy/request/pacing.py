"""Pacing toward Amperity's rate limits: one token bucket per route or per endpoint.

A request that finds no token waits in a FIFO queue — before its body is read, so waiting holds
no body in memory — and a dispatcher hands out tokens as they refill. A request whose expected
wait exceeds `max_wait` is refused at once (local 429 with `Retry-After`) instead of waiting only
to fail. A client that disconnects while queued gives its place to the next one. Buckets of
different routes and endpoints are independent: one route's queue never blocks another's.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from proxy.config import Route

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-6  # refills are floats on epoch-sized clocks: 0.1 s at 10/s may be 0.9999998
# At most this many buckets (hostile or merely many paths can't grow memory). Past it, the least
# recently used idle buckets go first; a bucket still refilling is dropped only when the oldest
# PRUNE_SCAN are all busy (it then restarts full, which costs at most one extra burst).
MAX_BUCKETS = 10_000
PRUNE_SCAN = 16


class RateLimited(Exception):
    """The expected wait is longer than `max_wait`; `retry_after` is in whole seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"expected wait {wait:.1f}s")
        self.retry_after = max(1, math.ceil(wait))


class ClientGone(Exception):
    """The client disconnected while its request was queued."""


class Bucket:
    """A token bucket (`rate` per second, up to `burst`) with a FIFO of waiters."""

    def __init__(self, rate: float, burst: int, clock: Clock, sleep: Sleep) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def idle(self) -> bool:
        self._refill()
        return not self._waiters and self.tokens >= self.burst

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, max_wait: float, gone: asyncio.Event | None = None) -> float:
        """Wait for a token in arrival order; return the seconds waited."""
        self._refill()
        live = [w for w in self._waiters if not w.done()]
        if not live and self.tokens >= 1 - _EPSILON:
            self.tokens -= 1
            return 0.0
        expected = (len(live) + 1 - self.tokens) / self.rate
        if expected > max_wait:
            raise RateLimited(expected)
        started = self._clock()
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="rate-limit")
        if gone is None:
            await slot
        else:
            left: asyncio.Future[object] = asyncio.ensure_future(gone.wait())
            waiting: set[asyncio.Future[object]] = {slot, left}  # type: ignore[arg-type]
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                left.cancel()
            if not slot.done():
                slot.cancel()  # its place goes to the next waiter
                raise ClientGone
        return self._clock() - started

    async def _dispatch(self) -> None:
        while True:
            while self._waiters and self._waiters[0].done():  # cancelled: client gone
                self._waiters.popleft()
            if not self._waiters:
                return
            self._refill()
            if self.tokens >= 1 - _EPSILON:
                self.tokens -= 1
                self._waiters.popleft().set_result(None)
                continue
            await self._sleep((1 - self.tokens) / self.rate)


class Pacer:
    """Buckets by key: `route` (one per route) or `endpoint` (method + path with ids collapsed)."""

    def __init__(self, clock: Clock = time.time, sleep: Sleep = asyncio.sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        # Least recently used first: pruning looks only at the front, so a new key costs
        # O(PRUNE_SCAN) however many buckets exist.
        self._buckets: OrderedDict[tuple[str, ...], Bucket] = OrderedDict()

    @property
    def buckets(self) -> int:
        return len(self._buckets)

    def queued(self) -> int:
        """Requests waiting for a slot right now, over all buckets."""
        return sum(bucket.waiting for bucket in self._buckets.values())

    @staticmethod
    def endpoint(route: Route, method: str, rest: str) -> tuple[str, ...]:
        """The bucket key: `GET /segments/123` and `GET /segments/456` share one."""
        limit = route.rate_limit
        assert limit is not None
        if limit.key == "route":
            return (route.name,)
        path = rest.partition("?")[0]
        segments = ["{id}" if limit.id_patterns.fullmatch(s) else s for s in path.split("/")]
        return (route.name, method, "/".join(segments))

    async def pace(
        self, route: Route, method: str, rest: str, gone: asyncio.Event | None = None
    ) -> float:
        """Wait for the request's slot; raise RateLimited or ClientGone."""
        limit = route.rate_limit
        assert limit is not None
        key = self.endpoint(route, method, rest)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune()
            bucket = Bucket(limit.requests_per_second, limit.burst, self.clock, self.sleep)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        return await bucket.acquire(limit.max_wait, gone)

    def _prune(self) -> None:
        """Make room for one bucket: drop the least recently used idle one among the oldest
        PRUNE_SCAN; if they are all busy, the least recently used of them."""
        for key, bucket in itertools.islice(self._buckets.items(), PRUNE_SCAN):
            if bucket.idle:
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
