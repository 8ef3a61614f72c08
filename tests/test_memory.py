"""Freed memory goes back to the system while the proxy runs (`proxy/cli/memory.py`). How much
is a figure for `make soak`, not an assertion; here: the trim is found and runs."""

from __future__ import annotations

import asyncio
import platform

import pytest

from proxy.cli.memory import malloc_trim, trim_periodically
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
