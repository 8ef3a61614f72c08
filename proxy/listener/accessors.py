"""Typed accessors for per-connection state, and the aiohttp classes the proxy adapts: the only
code besides `listener.server` that touches aiohttp internals."""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web

from proxy.listener.server import GuardedHandler


def _guarded(request: web.BaseRequest) -> GuardedHandler | None:
    protocol = request.protocol
    return protocol if isinstance(protocol, GuardedHandler) else None


def abandon_body(request: web.BaseRequest) -> None:
    """Don't drain a body the proxy refused; close once the answer is out."""
    handler = _guarded(request)
    if handler is not None:
        handler.abandon_body()


def client_gone(request: web.BaseRequest) -> asyncio.Event | None:
    """Set when the client disconnects (a queued request gives up)."""
    handler = _guarded(request)
    return handler.gone if handler is not None else None


def draining(request: web.BaseRequest) -> bool:
    """The server is shutting down: a request cut now was cut by the drain."""
    handler = _guarded(request)
    return handler is not None and handler.draining


def force_close(request: web.BaseRequest) -> None:
    """Close the connection once the current answer is out (or at once, mid-answer)."""
    request.protocol.force_close()


def peer_uid(request: web.BaseRequest) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), if any."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def write_interim(request: web.BaseRequest, data: bytes) -> None:
    """Write an interim answer (`100 Continue`) that is not part of the response."""
    await request.writer.write(data)
    request.writer.output_size = 0


def bound_sockets(site: web.BaseSite) -> list[socket.socket]:
    """The sockets a started site listens on."""
    server = getattr(site, "_server", None)
    return list(getattr(server, "sockets", None) or [])


class CoalescedResponse(web.StreamResponse):
    """A streamed response whose headers leave with its first body bytes (or its end) in one
    socket write, instead of a write of their own: for small API answers that halves the
    writes. The upstream's read timeout bounds how long headers can wait for body bytes."""

    _send_headers_immediately = False
