"""What the fake Amperity knows of Amperity's three APIs: which one a path belongs to, the
version the Profile API accepts, the Streaming API's body limit, and (opt-in) a 429 past each
API's documented rate: per endpoint for the Amperity API, per tenant for the others, a Profile
API sandbox counting against its production tenant."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from aiohttp import web

PROFILE_VERSION = "2025-07-31"
STREAMING_MAX_BODY = 1024 * 1024  # bytes: bodies past it get the Streaming API's 413


def api_of(path: str) -> str:
    """Which of Amperity's APIs a path belongs to (as the fake tells them apart)."""
    if path.startswith("/stream/v0/"):
        return "streaming"
    if path.startswith("/api/indexes"):
        return "profile"
    return "amperity"


class Budgets:
    """Arrivals per budget over the last second; `enforce` turns the 429s on."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.enforce = False
        self.rates = {"amperity": 10, "profile": 2000, "streaming": 1000}  # per second
        self._arrivals: dict[tuple[str, ...], deque[float]] = {}

    def over(self, request: web.Request) -> bool:
        """This request is past its API's documented budget (always False unless enforced)."""
        if not self.enforce:
            return False
        api = api_of(request.path)
        header = "X-Amperity-Tenant" if api == "streaming" else "Amperity-Tenant"
        tenant = request.headers.get(header, "")
        if api == "profile":
            tenant = re.sub(r"-sb-[0-9]+$", "", tenant)  # a sandbox draws on production's
        key = (api, tenant) if api != "amperity" else (api, tenant, request.method, request.path)
        now = self.clock()
        window = self._arrivals.setdefault(key, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= self.rates[api]:
            return True
        window.append(now)
        return False
