"""HTTP/1.1 to the upstream on one keep-alive connection: an asyncio protocol that writes a
request and parses the answer with httptools (llhttp, strict), with flow control both ways.

Framing facts (RFC 9112 §6): a response to HEAD, and any 1xx, 204 or 304, has no body;
Content-Length and Transfer-Encoding together, or two different Content-Lengths, are an error;
otherwise a body is chunked, Content-Length-delimited, or runs until the connection closes.
llhttp enforces all of these (and refuses bare LF, obs-fold and junk after a message). A
connection is reused only after a complete, well-framed answer that kept the connection alive
and left no byte unread; never after an error, a cut body, `Connection: close`, or an unread
body (`reusable`).

The request side is written here too, and only here, framed by `upstream.framing`: the head
declares the framing itself, and the connection is reusable only after the whole request went
out as declared (SECURITY: nobody above it is trusted to count).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools
from multidict import CIMultiDict

from proxy.upstream.answer import Answer, FramingBroken, MalformedAnswer, UpstreamClosed
from proxy.upstream.framing import Framer, RequestHead
from proxy.upstream.tls import trim_tls_read_buffer

HIGH_WATER = 64 * 1024  # answer bytes waiting for the relay beyond which reading pauses
LOW_WATER = 16 * 1024
READ_SIZE = 64 * 1024
FAST_READ_SIZE = 256 * 1024
SLOW_READ_SIZE = 16 * 1024  # one TLS record (read sizes: see Connection)
MAX_HEAD = 64 * 1024  # bytes of status line and headers accepted from the upstream
_INTERIM = frozenset({100, 102, 103})  # 1xx answers skipped while waiting for the final one


class Connection(asyncio.BufferedProtocol):
    """One upstream connection. Not reentrant: one exchange at a time. A buffered protocol:
    the transport reads into this connection's own buffer (for TLS too), FAST_READ_SIZE at a
    time while the relay has taken every byte, READ_SIZE while it lags, SLOW_READ_SIZE while
    the relay says the client's socket is backed up (`downstream_slow`; large reads then would
    only move bytes from the upstream's socket into this process's memory). So a slow client
    holds at most HIGH_WATER plus SLOW_READ_SIZE here, and a fast one pays few syscalls."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._filled = False
        self.downstream_slow = False  # set by the relay: the client's socket is backed up
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self.buffered = 0  # body bytes received, not yet taken by the relay
        self._wake: asyncio.Future[None] | None = None
        self._paused = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._framer = Framer()  # the framing of the request being written
        self.trailers = False  # the last answer had trailer fields (dropped, never headers)
        self._reset()

    # --- one exchange ------------------------------------------------------------------

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0  # header names and values parsed
        self._raw_head = 0  # bytes received while the headers had not ended
        self._reason = ""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._obs_text = False  # a header value with a byte >= 0x80
        self._head: asyncio.Future[Answer] | None = None
        self._complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._skip_body = False
        self._leftover = False
        self._interim = False

    def begin(self, head_request: bool) -> asyncio.Future[Answer]:
        """Expect an answer to a request about to be written (`head_request`: to HEAD)."""
        self._reset()
        self.trailers = False
        self._skip_body = head_request
        self._head = self._loop.create_future()
        # An exchange abandoned early (its body failed first) never awaits it: mark it seen.
        self._head.add_done_callback(_seen)
        return self._head

    # --- the request, framed as its head declared (upstream.framing) ------------------

    def send_whole(self, head: RequestHead, body: bytes = b"") -> None:
        """The whole request in one write: a body held in memory, or none."""
        self._framer.whole(head, body)
        self._transport().write(head.data + body if body else head.data)

    async def send_head(self, head: RequestHead) -> None:
        """The head of a request whose body follows through `send_body` and `end_body`."""
        self._framer.start(head)
        await self._write((head.data,))

    async def send_body(self, chunk: bytes) -> None:
        """Body bytes, framed as the head declared (an empty chunk is nothing to send)."""
        if chunk:
            await self._write(self._checked(self._framer.frame, chunk))

    async def end_body(self) -> None:
        """The body's end: the last chunk once, or a check that every declared byte went."""
        await self._write(self._checked(self._framer.end))

    def _checked(self, step: Callable[..., tuple[bytes, ...]], *args: bytes) -> tuple[bytes, ...]:
        try:
            return step(*args)
        except FramingBroken:
            self.close()  # SECURITY: never another request on a connection framed wrong
            raise

    def _transport(self) -> asyncio.Transport:
        if self.transport is None or self.transport.is_closing():
            raise UpstreamClosed("the upstream connection is closed")
        return self.transport

    async def _write(self, parts: tuple[bytes, ...]) -> None:
        if parts:
            self._transport().writelines(parts)
        if not self._can_write.is_set():  # the upstream isn't reading: wait for it
            await self._can_write.wait()

    async def head(self, silence: float) -> Answer:
        """The answer's status and headers, within `silence` seconds (a timer of the
        connection's own: cheaper per request than an asyncio.timeout scope)."""
        assert self._head is not None
        if not self._head.done():
            timer = self._loop.call_later(silence, self._timed_out)
            try:
                await asyncio.shield(self._head)
            finally:
                timer.cancel()
        return self._head.result()

    async def read(self, silence: float) -> bytes:
        """The next body bytes; b"" at the end of the body. Raises what broke the answer,
        or TimeoutError after `silence` seconds without a byte."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._wake = self._loop.create_future()
            timer = self._loop.call_later(silence, self._timed_out)
            try:
                await self._wake
            finally:
                timer.cancel()
                self._wake = None
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        if self._paused and self.buffered <= LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def _timed_out(self) -> None:
        self._fail(TimeoutError("no byte from the upstream within timeouts.read"))

    @property
    def reusable(self) -> bool:
        """A complete, well-framed answer on a live, keep-alive connection, fully read, to a
        request that went out whole."""
        return (
            self._complete
            and self._framer.done
            and self._keep_alive
            and self._error is None
            and not self._chunks
            and not self._leftover
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # TLS: ciphertext asyncio may hold while reading is paused (its default is 256 KiB).
        limits = getattr(transport, "set_read_buffer_limits", None)
        if limits is not None:
            limits(high=HIGH_WATER)
            trim_tls_read_buffer(transport, READ_SIZE)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.buffered or self.downstream_slow:  # the relay lags: small reads
            self.shrink()
            if self.downstream_slow:  # so each chunk queued for a slow client is small too
                return self._view[:SLOW_READ_SIZE]
        elif (  # a large body that the relay and its client keep up with
            self._filled and not self.downstream_slow and len(self._buffer) < FAST_READ_SIZE
        ):
            self._buffer = bytearray(FAST_READ_SIZE)
            self._view = memoryview(self._buffer)
        return self._view

    def shrink(self) -> None:
        """Back to a small read buffer (a lagging relay, an idle pooled connection)."""
        if len(self._buffer) > READ_SIZE:
            self._buffer = bytearray(READ_SIZE)
            self._view = memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self._filled = nbytes == len(self._buffer)  # the socket had more than one read's worth
        self.data_received(self._view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self._head is None or self._complete:  # nothing asked for: never reuse this one
            self._leftover = True
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedAnswer("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self._complete:  # bytes after a complete answer: not reusable, not an error
                self._leftover = True
                return
            self._fail(MalformedAnswer(f"the upstream's answer is malformed: {exc}"))
            return
        if not self._headers_done():  # bytes so far without the end of the headers
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD:
                self._fail(MalformedAnswer("the upstream's headers are too large"))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._complete and self._head is not None:
            if self._headers_done() and self._until_close():
                self.on_message_complete()  # a close-delimited body ends with the connection
            else:
                self._fail(UpstreamClosed("the upstream closed the connection mid-answer"))
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request (pipelined junk): never reused
            self._leftover = True

    def on_status(self, status: bytes) -> None:
        if not self._complete:
            self._reason += status.decode("latin-1")
            if not status.isascii():
                self._obs_text = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done() and not self._interim:
            # Trailer fields (RFC 9110 §6.5.1: never merged into the header section): dropped.
            self.trailers = True
            return
        if not self._complete:
            self._head_bytes += len(name) + len(value) + 4
            if not value.isascii():
                self._obs_text = True
            self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        if self._head_bytes > MAX_HEAD:
            self._fail(MalformedAnswer("the upstream's headers are too large"))
            return
        status = self._parser.get_status_code()
        if status in _INTERIM:  # an interim answer: wait for the final one
            self._interim = True
            return
        self._keep_alive = self._parser.should_keep_alive()
        assert self._head is not None
        if not self._head.done():
            self._head.set_result(Answer(status, self._reason, self._headers, self._obs_text))
        if self._skip_body:  # HEAD: whatever the headers say, no body follows
            self._complete = True
            self._wakeup()

    def on_body(self, body: bytes) -> None:
        if self._skip_body or self._complete:
            self._leftover = True
            return
        self._chunks.append(body)
        self.buffered += len(body)
        if not self._paused and self.buffered > HIGH_WATER and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wakeup()

    def on_message_complete(self) -> None:
        if self._complete:
            return
        if self._interim:  # the 1xx ended; the same parser reads the final answer next
            self._interim = False
            self._reason = ""
            self._headers = CIMultiDict()
            self._obs_text = False
            return
        self._complete = True
        self._wakeup()

    # --- helpers ----------------------------------------------------------------------------

    def _headers_done(self) -> bool:
        return self._head is not None and self._head.done()

    def _until_close(self) -> bool:
        headers = self._headers
        return "Content-Length" not in headers and "Transfer-Encoding" not in headers

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._wakeup()
        self.close()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


def _seen(future: asyncio.Future[Answer]) -> None:
    if not future.cancelled():
        future.exception()
