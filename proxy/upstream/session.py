"""The upstream ClientSession: one per proxy generation of `startup`, with every default that
could leak or change a request turned off."""

from __future__ import annotations

import aiohttp
from aiohttp.abc import AbstractResolver

from proxy.listener import GuardedClientResponse

# Connections beyond `limits.upstream_connections` for token mints, which hold no slot.
MINT_MARGIN = 8


def upstream_session(resolver: AbstractResolver | None, connections: int) -> aiohttp.ClientSession:
    """A session for forwarding and token mints. `upstream.slots` keeps exchanges within
    `connections`, so nothing waits in the pool (a full pool used to surface as a connect
    timeout)."""
    connector = aiohttp.TCPConnector(
        resolver=resolver, limit=connections + MINT_MARGIN, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),  # never store or replay upstream cookies
        auto_decompress=False,  # compressed bodies pass through byte for byte
        trust_env=False,  # SECURITY: the proxy's own HTTP_PROXY must not redirect tokens
        timeout=aiohttp.ClientTimeout(total=None),  # per-route timeouts are set per request
        # Send only what the client sent: no default Accept/Accept-Encoding/User-Agent.
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        response_class=GuardedClientResponse,  # odd statuses close their connection
    )
