"""The ClientSession for token mints (client credentials) and `doctor --probe`: forwarding
has its own pool (`upstream.pool`). Every default that could leak or change a request is off."""

from __future__ import annotations

import aiohttp
from aiohttp.abc import AbstractResolver


def upstream_session(resolver: AbstractResolver | None) -> aiohttp.ClientSession:
    """A session for token mints and probes (a few requests an hour)."""
    connector = aiohttp.TCPConnector(resolver=resolver, limit=16, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),  # never store or replay upstream cookies
        auto_decompress=False,  # compressed bodies pass through byte for byte
        trust_env=False,  # SECURITY: the proxy's own HTTP_PROXY must not redirect tokens
        timeout=aiohttp.ClientTimeout(total=None),  # per-route timeouts are set per request
        # Send only what the client sent: no default Accept/Accept-Encoding/User-Agent.
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )
