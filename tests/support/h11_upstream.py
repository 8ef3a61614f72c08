"""Upstreams that judge the proxy's HTTP/1.1 with h11, an implementation independent of llhttp
(aiohttp's and httptools' parser), on real TLS sockets on loopback.

- `H11Upstream` parses what the proxy sends with an h11 server connection: every request the
  upstream *would* run (so a smuggled one shows up as a request of its own), its raw header
  bytes, its body bytes, and whatever h11 refused or found left over.
- `read_response` reads one response with an h11 client connection: what a strict client
  makes of the bytes the proxy answers with.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import h11


@dataclass
class Received:
    """One request as the upstream parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # as sent: original case, raw bytes
    body: bytes
    connection: int  # which upstream connection it came on (0, 1, ...)

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Respond = Callable[[Received], bytes]


def ok(_: Received) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class H11Upstream:
    """A TLS upstream that parses with h11 and answers each complete request with
    `respond(request)` (raw response bytes). `errors` lists what h11 refused; `leftover` the
    bytes a connection held that were not a complete request when it ended."""

    respond: Respond = ok
    hang_up: Callable[[Received], bool] = lambda _: False  # close after this answer
    received: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leftover: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, context: ssl.SSLContext) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        index = self.connections
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)
        try:
            await self._cycle(conn, reader, writer, index)
        except h11.RemoteProtocolError as exc:
            self.errors.append(f"connection {index}: {exc}")
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            pending = bytes(conn.trailing_data[0])
            if pending.strip():
                self.leftover.append(pending)
            writer.close()

    async def _cycle(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        index: int,
    ) -> None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)  # b"": the peer closed
                if not data and conn.their_state is not h11.DONE:
                    if conn.their_state is h11.IDLE:
                        return
                    # A message the peer left unfinished (a cut body): h11 says so.
                    conn.next_event()
                    return
                continue
            if isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                got = Received(
                    request.method,
                    request.target,
                    list(request.headers.raw_items()),
                    bytes(body),
                    index,
                )
                self.received.append(got)
                self.arrived.set()
                await self._answer(conn, writer, got)
                if self.hang_up(got):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, got: Received
    ) -> None:
        """Send the scripted bytes raw (they may be deliberately malformed), and tell h11 the
        response is over so that it will parse the next request on this connection."""
        writer.write(self.respond(got))
        await writer.drain()
        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:  # each connection's reader then sees the end
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()


@dataclass
class ClientView:
    """What a strict HTTP/1.1 client (h11) made of one response."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]]
    leftover: bytes  # bytes after the response's end that arrived with it

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def expect(conn: h11.Connection, method: bytes) -> None:
    """Tell a client connection that a request went (its raw bytes are sent by hand)."""
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"x")]))
    conn.send(h11.EndOfMessage())


class Assembler:
    """Collects one response from a client connection's events. `step` returns the response
    once it is complete, or None when h11 needs more bytes; it raises RemoteProtocolError
    when the bytes are not one well-framed message (or the connection ended first)."""

    def __init__(self, conn: h11.Connection) -> None:
        self.conn = conn
        self._response: h11.Response | None = None
        self._body = bytearray()

    def step(self) -> ClientView | None:
        conn = self.conn
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Response):
                self._response = event
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self._response is not None
                return ClientView(
                    self._response.status_code,
                    list(self._response.headers.raw_items()),
                    bytes(self._body),
                    list(event.headers.raw_items()),
                    bytes(conn.trailing_data[0]),
                )
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("closed before a complete response")
        return None


async def read_response(
    reader: asyncio.StreamReader, method: bytes = b"GET", conn: h11.Connection | None = None
) -> ClientView:
    """One response, parsed by an h11 client connection. `conn` carries state across
    responses on one connection (then the caller has said what was sent, with `expect`)."""
    if conn is None:
        conn = h11.Connection(h11.CLIENT)
        expect(conn, method)
    assembler = Assembler(conn)
    while (view := assembler.step()) is None:
        conn.receive_data(await reader.read(65536))
    return view
