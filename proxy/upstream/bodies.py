"""Client request bodies: streamed with an idle timeout and a size cap, or — for a request that
may be replayed with a new token or after a 429/503 — read whole, up to `retry_body_limit`, the
one place a body is held in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from aiohttp import web

from proxy.listener import write_interim
from proxy.refusals import answer, refuse

# Methods whose request can be sent again after a 401 (RFC 9110 idempotent methods, without
# the ones a legacy tool would never expect repeated): the body is kept only for these.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_BODY_ERRORS = {
    "body_timeout": refuse(
        "body_timeout", "the request body stalled for longer than limits.body_timeout"
    ),
    "body_deadline": refuse(
        "body_deadline",
        "the request body took longer than limits.body_deadline in all (send it faster, or "
        "raise the limit)",
    ),
    "body_too_large": refuse(
        "body_too_large", "the request body is larger than the route's max_body_bytes"
    ),
    "body_length": refuse(
        "body_length",
        "the request body did not match its Content-Length; send the length of the bytes "
        "you send (a compressed body's compressed length)",
    ),
}


CONTINUE_EXPECTATION = "100-continue"  # the only `Expect` value HTTP defines (RFC 9110 §10.1.1)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expects_continue(request: web.BaseRequest) -> bool:
    """Whether the client waits for `100 Continue` before it sends its body. RFC 9110 §10.1.1:
    a server "MUST ignore" a 100-continue expectation in an HTTP/1.0 request."""
    expect = request.headers.get("Expect")
    return (
        expect is not None
        and expect.strip().lower() == CONTINUE_EXPECTATION
        and request.version >= aiohttp.HttpVersion11
    )


async def send_continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue`: called once the request is admitted (route, policy,
    client token, rate limit, size), never before, so a refused request gets its final status
    without it. The upstream never sees `Expect` (the header policy drops it)."""
    if expects_continue(request) and request.body_exists:
        await write_interim(request, _CONTINUE)


class BodyLimit(Exception):
    """The client's body broke a limit (too slow, too large); the request is abandoned."""


class Tally(Protocol):
    """Where the byte count and a broken limit are noted (the request's `observe.record.Record`)."""

    bytes_in: int
    body_error: str | None


class BodyClock:
    """The two deadlines of one request body: `idle` seconds between bytes, and `deadline`
    seconds in all from the first read (a body trickling one byte just inside the idle timeout
    would otherwise hold its upstream connection for ever)."""

    __slots__ = ("_ends", "idle")

    def __init__(self, idle: float, deadline: float) -> None:
        self.idle = idle
        self._ends = asyncio.get_running_loop().time() + deadline

    async def read(self, stream: aiohttp.StreamReader, tally: Tally) -> bytes:
        """The next chunk; raise BodyLimit (noting which deadline) when one passes."""
        left = self._ends - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(min(self.idle, max(left, 0.0))):
                return await stream.readany()
        except TimeoutError:
            tally.body_error = "body_timeout" if left > self.idle else "body_deadline"
            raise BodyLimit from None


async def counted(
    stream: aiohttp.StreamReader, tally: Tally, limit: int | None, clock: BodyClock
) -> AsyncIterator[bytes]:
    """The client's body, counted, with the idle timeout, the total deadline and the size cap."""
    while True:
        chunk = await clock.read(stream, tally)
        if not chunk:
            return
        tally.bytes_in += len(chunk)
        if limit is not None and tally.bytes_in > limit:
            tally.body_error = "body_too_large"
            raise BodyLimit
        yield chunk


async def read_replayable_body(
    request: web.BaseRequest, limit: int, clock: BodyClock, tally: Tally
) -> bytes | bool:
    """The request body when the request could be replayed: b"" for none, the bytes when
    Content-Length <= `limit`; False when it can't be replayed (method, size, chunked).
    Raises BodyLimit when the client breaks one of `clock`'s deadlines."""
    if request.method not in REPLAYABLE_METHODS:
        return False
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is None or length > limit:
        return False
    data = bytearray()
    while len(data) < length:
        chunk = await clock.read(request.content, tally)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(data), length)
        data += chunk
    return bytes(data)


def body_refusal(tally: Tally, request_id: str) -> web.Response:
    """The answer when the client's body broke a limit; the connection can't be reused."""
    assert tally.body_error is not None
    response = answer(_BODY_ERRORS[tally.body_error], request_id)
    response.force_close()  # the rest of the body was never read
    return response
