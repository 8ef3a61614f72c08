"""Pacing toward Amperity's rate limits: one token bucket per budget (`config.budgets`: an
endpoint of a tenant at an origin, whichever route it came through; or one route).

A request that finds no token waits in a FIFO queue — before its body is read, so waiting holds
no body in memory — and a dispatcher hands out tokens as they refill. A request whose expected
wait exceeds `max_wait` is refused at once (local 429 with `Retry-After`) instead of waiting only
to fail. A client that disconnects while queued gives its place to the next one. Buckets of
different budgets are independent: one budget's queue never blocks another's.

A bucket with `store: shared` is decided on Redis (`request.shared`), for every process that
uses it; this process then waits for its reserved slot. A local bucket serves this process
alone; under `run --workers N` each worker paces at 1/N of the rate (`share`), so the process
as a whole keeps the configured rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from proxy.config import Route
from proxy.request.shared import SharedBuckets, SharedDown
from proxy.upstream.retry import retry_after_seconds

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-6  # refills are floats on epoch-sized clocks: 0.1 s at 10/s may be 0.9999998
# At most this many buckets (hostile or merely many paths can't grow memory). Past it, the least
# recently used idle buckets go first; a bucket still refilling is dropped only when the oldest
# PRUNE_SCAN are all busy (it then restarts full, which costs at most one extra burst).
MAX_BUCKETS = 10_000
# Amperity documents no Retry-After: a 429 without one holds a shared bucket for this long (one
# second is a whole budget window at Amperity's per-second limits); a given one is capped.
PAUSE_AFTER_429 = 1.0
PAUSE_MAX = 60.0
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
    """Buckets by key: `route` (one per route) or `endpoint` (method + path with ids collapsed),
    within the route's budget scope; local ones here, shared ones on `shared`."""

    def __init__(
        self,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        share: float = 1.0,
        shared: SharedBuckets | None = None,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.share = share  # of each local bucket's rate and burst: 1/N under --workers N
        self.shared = shared
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
        scope = route.budget  # computed once, at parse (Route.budget)
        if limit.key in ("route", "tenant"):  # one bucket for the route, or for the tenant
            return scope
        path = route.base_url.path + rest.partition("?")[0]
        segments = ["{id}" if limit.id_patterns.fullmatch(s) else s for s in path.split("/")]
        return (*scope, method, "/".join(segments))

    def mode(self, route: Route) -> str:
        """local, shared, or fallback (shared, while Redis is unreachable): for the status page."""
        limit = route.rate_limit
        if limit is None or limit.store != "shared" or self.shared is None:
            return "local"
        return "shared" if self.shared.up else "fallback"

    async def pace(
        self, route: Route, method: str, rest: str, gone: asyncio.Event | None = None
    ) -> float:
        """Wait for the request's slot; raise RateLimited or ClientGone."""
        limit = route.rate_limit
        assert limit is not None
        key = self.endpoint(route, method, rest)
        rate, burst = limit.requests_per_second, limit.burst
        if limit.store == "shared" and self.shared is not None:
            try:
                reserved, wait = await self.shared.reserve(
                    self.shared.key(key), rate, burst, limit.max_wait
                )
            except SharedDown:
                self.shared.metrics.decisions.labels("fallback").inc()
                share = self.shared.settings.fallback_share
                return await self._local(
                    (*key, "fallback"), rate, burst, share, limit.max_wait, gone
                )
            if not reserved:
                raise RateLimited(wait)
            return await self._wait(wait, gone)
        return await self._local(key, rate, burst, self.share, limit.max_wait, gone)

    async def pause(self, route: Route, method: str, rest: str, retry_after: str | None) -> None:
        """Amperity answered 429 anyway: hold a shared bucket for every process, for the
        answer's `Retry-After` when it has one, else PAUSE_AFTER_429 seconds."""
        limit = route.rate_limit
        if limit is None or limit.store != "shared" or self.shared is None:
            return
        seconds = retry_after_seconds(retry_after) if retry_after else None
        seconds = PAUSE_AFTER_429 if seconds is None else min(max(seconds, 0.0), PAUSE_MAX)
        key = self.shared.key(self.endpoint(route, method, rest))
        with contextlib.suppress(SharedDown):
            await self.shared.pause(key, seconds, limit.requests_per_second, limit.burst)

    async def _wait(self, seconds: float, gone: asyncio.Event | None) -> float:
        """Wait for a slot reserved on Redis; a client that leaves gives up (its slot is spent)."""
        if seconds <= 0:
            return 0.0
        if gone is None:
            await self.sleep(seconds)
            return seconds
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        left = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({sleeper, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            left.cancel()
        if gone.is_set():
            raise ClientGone
        return seconds

    async def _local(
        self,
        key: tuple[str, ...],
        rate: float,
        burst: int,
        share: float,
        max_wait: float,
        gone: asyncio.Event | None,
    ) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune()
            bucket = Bucket(rate * share, max(1, math.floor(burst * share)), self.clock, self.sleep)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        return await bucket.acquire(max_wait, gone)

    def _prune(self) -> None:
        """Make room for one bucket: drop the least recently used idle one among the oldest
        PRUNE_SCAN; if they are all busy, the least recently used of them."""
        for key, bucket in itertools.islice(self._buckets.items(), PRUNE_SCAN):
            if bucket.idle:
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
