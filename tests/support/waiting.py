"""Waiting for a condition with a generous bound: tells a fix from a hang, never a timing
assertion."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool], what: str, within: float = 30) -> None:
    """Return once `condition()` holds, checking on each loop turn; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.01)


async def until_async(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = 30
) -> None:
    """`until` for a condition that must itself await (a new connection, a request)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)
