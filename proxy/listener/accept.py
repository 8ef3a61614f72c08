"""Who a listener accepts, counted from the moment of accept: the TLS handshake is part of the
connection, not a prelude nobody counts.

asyncio's own TLS server runs the handshake before the protocol hears of the connection: a
silent peer holds a socket and asyncio's 256 KiB read buffer for up to 60 s, uncounted (3,000
of them took a proxy from 52 to 954 MiB). Here the listener accepts plain TCP, and
`TLSAccept` decides first (the peer's address against `allow_clients`, the connection cap, the
per-address cap), then runs the handshake itself with a small read buffer (`SmallTLS`) and
`header_timeout` as its deadline: handshake and request headers together get that long. Only
then does the HTTP connection (`GuardedHandler`) begin.

`Occupancy` is the count: connections from accept to close, by address. Loopback and
Unix-socket peers count toward the cap only (every tool of a sidecar is 127.0.0.1); any other
address also toward `limits.max_connections_per_address`, so one remote host can't take
every slot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from asyncio import sslproto
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.listener.server import GuardedHandler, GuardedServer

TLS_READ = 16 * 1024  # one TLS record: the listener's ciphertext read size while idle
TLS_STREAMING = 256 * 1024  # asyncio's own, while a body streams faster than one record a read

AdmitPeer = Callable[[str | None], bool]  # may this address use the listener at all?


def peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None  # a Unix socket (file permissions decide) or unknown


def client_ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer address as an IP (a zone id dropped; a dual-stack listener reports IPv4 peers as
    ::ffff:a.b.c.d, read as the IPv4 address), or None when it is none."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _local(address: str | None) -> bool:
    if address is None:
        return True  # a Unix socket
    ip = client_ip(address)
    return ip is not None and ip.is_loopback


class Occupancy:
    """Connections held now, in all and per non-loopback address."""

    def __init__(self, cap: int, per_address: int) -> None:
        self.cap = cap
        self.per_address = per_address
        self.held = 0
        self._by_address: Counter[str] = Counter()

    def take(self, address: str | None) -> bool:
        """Count a new connection; False (nothing counted) when a cap is reached."""
        if self.held >= self.cap:
            return False
        if address is not None and not _local(address):
            if self._by_address[address] >= self.per_address:
                return False
            self._by_address[address] += 1
        self.held += 1
        return True

    def give_back(self, address: str | None) -> None:
        self.held -= 1
        if address is not None and address in self._by_address:
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]


class SmallTLS(sslproto.SSLProtocol):
    """asyncio's TLS protocol reading one record at a time while a connection is idle or
    slow (what it holds is 16 KiB of buffer, not asyncio's 256 KiB), and asyncio's 256 KiB at
    a time while a body streams faster than that (a read that fills the buffer means the
    socket had more): uploads through the listener at the stdlib's speed. Back to small when a
    read finds less than one record waiting."""

    max_size = TLS_READ

    def buffer_updated(self, nbytes: int) -> None:
        size = len(self._buffer())
        super().buffer_updated(nbytes)  # copies the bytes out of the buffer first
        if nbytes == size and size < TLS_STREAMING:
            self._read_size(TLS_STREAMING)  # get_buffer grows it for the next read
        elif nbytes < TLS_READ and size > TLS_READ:
            self.shrink()

    def shrink(self) -> None:
        """Back to one record at a time (a read found little waiting; a request ended)."""
        if len(self._buffer()) > TLS_READ:
            self._read_size(TLS_READ)
            small = bytearray(TLS_READ)
            self._ssl_buffer, self._ssl_buffer_view = small, memoryview(small)

    # asyncio's attributes (typeshed knows `max_size` as a class constant, the buffer not at
    # all); `tests/test_memory.py` fails when a Python release renames them.
    def _buffer(self) -> bytearray:
        buffer: bytearray = self.__dict__["_ssl_buffer"]
        return buffer

    def _read_size(self, size: int) -> None:
        self.__dict__["max_size"] = size


def idle(transport: asyncio.BaseTransport | None) -> None:
    """A listener connection between requests: its TLS read buffer back to small."""
    protocol = getattr(transport, "_ssl_protocol", None)
    if isinstance(protocol, SmallTLS):
        protocol.shrink()


class TLSAccept(asyncio.Protocol):
    """The first protocol of a TLS listener's connection. It admits the peer at accept, then
    holds nothing but the socket until the ClientHello's first bytes arrive (a silent peer
    costs a socket, not a TLS object), then hands the socket to `SmallTLS`, whose application
    protocol is the HTTP connection. Handshake and headers share `header_timeout`."""

    def __init__(self, server: GuardedServer, context: ssl.SSLContext) -> None:
        self._server = server
        self._context = context
        self._transport: asyncio.Transport | None = None
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._accepted = 0.0
        self._held = False  # counted in the server's Occupancy, not yet handed over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._address = peer(transport)
        if self._server.take(self._address) is not None:
            transport.abort()  # no handshake for a peer that may not connect, or past a cap
            return
        loop = asyncio.get_running_loop()
        self._transport, self._held, self._accepted = transport, True, loop.time()
        self._timer = loop.call_later(self._server.header_timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or not self._held:
            return
        self._held = False
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        handler = self._server.connection(self._address, self._accepted)
        waiter = loop.create_future()
        left = self._server.header_timeout - (loop.time() - self._accepted)
        tls = SmallTLS(
            loop,
            handler,
            self._context,
            waiter,
            server_side=True,
            # typeshed says int; asyncio takes any number of seconds
            ssl_handshake_timeout=max(left, 0.001),  # type: ignore[arg-type]
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        waiter.add_done_callback(lambda done: _handshaken(done, handler))
        buffer = tls.get_buffer(len(data))  # what arrived with the first read: the ClientHello
        buffer[: len(data)] = data
        tls.buffer_updated(len(data))

    def _expired(self) -> None:
        """No ClientHello within header_timeout: closed, given back."""
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._held:
            self._held = False
            self._server.occupancy.give_back(self._address)


def _handshaken(waiter: asyncio.Future[None], handler: GuardedHandler) -> None:
    if waiter.cancelled() or waiter.exception() is not None:
        handler.never_made()  # timed out or failed: what it held is given back
