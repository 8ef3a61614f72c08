"""Typed accessors for per-connection state, and the aiohttp classes the proxy adapts: the only
code besides `listener.server` that touches aiohttp internals."""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web
from aiohttp.http_writer import StreamWriter

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
    """A relayed response whose headers leave with its first body bytes (or its end) in one
    socket write, instead of a write of their own: for small API answers that halves the
    writes. The upstream's read timeout bounds how long headers can wait for body bytes.

    Its header section travels as the upstream's bytes: values are held as the Latin-1
    decoding of what the upstream sent (one character per byte), and, when one holds a byte
    >= 0x80 (`as_bytes`), are written back as Latin-1, where aiohttp's own writer would encode
    them as UTF-8 (an upstream's UTF-8 `é` would reach the client as four bytes of mojibake)."""

    _send_headers_immediately = False
    as_bytes = False  # set when a header value holds a byte >= 0x80 (else aiohttp's writer)

    async def _write_headers(self) -> None:
        if not self.as_bytes:  # all ASCII: aiohttp's own (compiled) serializer is the same
            return await super()._write_headers()
        request, writer = self._req, self._payload_writer
        assert request is not None and isinstance(writer, StreamWriter)
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"]
        lines += [f"{name}: {value}" for name, value in self._headers.items()]
        lines.append("\r\n")
        text = "\r\n".join(lines)
        # SECURITY: one line per entry; a CR, LF or NUL anywhere else is a forged line.
        if text.count("\n") != len(lines) or text.count("\r") != len(lines) or "\0" in text:
            raise ValueError("a response header holds CR, LF or NUL")
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:  # a value of the proxy's own beyond Latin-1
            data = text.encode("utf-8", "surrogateescape")
        if writer._on_headers_sent is not None:
            await writer._on_headers_sent(self._headers)
        writer._headers_buf = data  # what StreamWriter.write_headers would have set
        writer._headers_written = False
