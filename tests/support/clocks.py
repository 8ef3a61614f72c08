"""Clocks and sleeps a test controls."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class FakeClock:
    """A clock that moves only when the test sets `now`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class FakeTime:
    """A clock and a sleep the test controls. With `auto`, every sleep returns at once and
    moves the clock forward; otherwise sleepers wait until `advance()` wakes the earliest."""

    def __init__(self, auto: bool = False) -> None:
        self.now = time.time()
        self.start = self.now
        self.auto = auto
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.auto:
            self.now += seconds
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self) -> None:
        """Wake the earliest sleeper (waiting, bounded, for one to exist)."""
        for _ in range(1000):
            if self._sleepers:
                break
            await asyncio.sleep(0.001)
        deadline, _, future = heapq.heappop(self._sleepers)
        self.now = max(self.now, deadline)
        future.set_result(None)
