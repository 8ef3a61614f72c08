"""Keep-alive connections to the upstream origins, reused only when `Connection.reusable`.

Keyed by (host, port, TLS context): routes on one origin (every AWS tenant on
`app.amperity.com`) share connections, and their per-route shares are enforced by
`upstream.slots` before a connection is asked for. Idle connections expire after IDLE_EXPIRY
(a sweep closes them while any are idle; an expired one is never lent). A new connection
resolves the name (the injected resolver, as tests point names at loopback), connects within
`timeouts.connect`, and does TLS with the route's context: verification, SNI and the host-name
check are the context's (`upstream.tls`), never turned off here.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from proxy.upstream.plan import Plan
from proxy.upstream.wire import Connection

IDLE_EXPIRY = 15.0  # seconds an idle connection is kept (aiohttp's keep-alive default)

Key = tuple[str, int, int]  # host, port, id of the TLS context (0: plain http)


class ConnectFailed(OSError):
    """DNS failed, or nothing accepted the connection: the `connect` error class."""


class Pool:
    """The proxy's upstream connections (see the module docstring)."""

    def __init__(self, resolver: AbstractResolver | None = None, idle_expiry: float = IDLE_EXPIRY):
        self._resolver = resolver or DefaultResolver()
        self._idle: dict[Key, deque[tuple[float, Connection]]] = {}
        self._expiry = idle_expiry
        self._sweeper: asyncio.TimerHandle | None = None
        self.in_use = 0  # connections lent out now (tests check it returns to 0)

    @staticmethod
    def key(plan: Plan) -> Key:
        tls = plan.ssl_context if plan.base_url.scheme == "https" else None
        return (plan.base_url.host, plan.base_url.port, id(tls) if tls else 0)

    async def acquire(self, plan: Plan) -> tuple[Connection, bool]:
        """A connection to the plan's origin, and whether it was reused."""
        key = self.key(plan)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            since, connection = idle.pop()
            if (
                now - since < self._expiry
                and connection.transport is not None
                and not (connection.transport.is_closing())
            ):
                self.in_use += 1
                return connection, True
            connection.close()
        connection = await self._connect(plan)
        self.in_use += 1
        return connection, False

    def release(self, plan: Plan, connection: Connection) -> None:
        """Back to the pool when reusable, else closed."""
        self.in_use -= 1
        if connection.reusable:
            connection.shrink()
            self._idle.setdefault(self.key(plan), deque()).append((time.monotonic(), connection))
            if self._sweeper is None:
                loop = asyncio.get_running_loop()
                self._sweeper = loop.call_later(self._expiry, self._sweep)
        else:
            connection.close()

    def _sweep(self) -> None:
        """Close the connections idle for longer than the expiry (after traffic stops too, or
        for an origin a reload no longer uses); run again while any stay idle."""
        self._sweeper = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            while idle and now - idle[0][0] >= self._expiry:
                idle.popleft()[1].close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for _, connection in idle:
                connection.close()
        self._idle.clear()

    async def _connect(self, plan: Plan) -> Connection:
        loop = asyncio.get_running_loop()
        base = plan.base_url
        tls: ssl.SSLContext | None = plan.ssl_context if base.scheme == "https" else None
        async with asyncio.timeout(plan.timeouts.connect):
            try:
                hosts = await self._resolver.resolve(base.host, base.port, socket.AF_UNSPEC)
            except OSError as exc:
                raise ConnectFailed(f"cannot resolve {base.host}: {exc}") from None
            last: OSError | None = None
            for host in hosts:
                try:
                    _, connection = await loop.create_connection(
                        lambda: Connection(loop),
                        host["host"],
                        host["port"],
                        ssl=tls,
                        server_hostname=base.host if tls is not None else None,
                        family=host["family"],
                    )
                except ssl.SSLError:
                    raise
                except OSError as exc:
                    last = exc
                    continue
                return connection
        raise ConnectFailed(f"cannot connect to {base.host}:{base.port}: {last}")
