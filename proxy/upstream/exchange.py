"""One attempt at the upstream: the request built from the route's plan and written on a pooled
connection (`upstream.wire`), the body streamed up with back-pressure, the answer's head
awaited within the read timeout.

What can go wrong is classified in `upstream.failures`. Retries (401 recovery, 429/503
back-off) are layers around `send` (`upstream.retry`); the answer is streamed down by
`upstream.relay`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web

from proxy.observe.record import Record
from proxy.observe.tracing import PROPAGATED
from proxy.redaction import SECRETS
from proxy.refusals import REFUSAL_PEEK, upstream_message
from proxy.tokens import Credential
from proxy.upstream.answer import Answer as WireAnswer
from proxy.upstream.answer import FramingBroken, UpstreamClosed
from proxy.upstream.bodies import BodyClock, BodyLimit, counted
from proxy.upstream.framing import CHUNKED, NO_BODY, RequestHead
from proxy.upstream.headers import query_has_api_version, upstream_fields
from proxy.upstream.plan import Plan
from proxy.upstream.pool import Pool
from proxy.upstream.wire import Connection

Trace = Sequence[tuple[str, str]]  # an attempt's traceparent/tracestate (tracing on)

log = logging.getLogger("amperity_proxy.proxy")

REFUSALS = (401, 403)  # answers whose body's message is read for the log and status page


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request as the upstream will get it, less the credential: built once per request,
    the same for every attempt."""

    method: str
    url: str  # the full upstream URL, as sent (for Location rewriting)
    target: str  # the request line's target: base path, the client's raw path, its query
    client: web.BaseRequest  # its headers (filtered) and, unless `body` is set, its body
    request_id: str
    query_has_api_version: bool
    body: bytes | None  # a replayable body, already read (None: stream the client's)

    @classmethod
    def of(
        cls,
        request: web.BaseRequest,
        plan: Plan,
        rest: str,
        query: str,
        rid: str,
        body: bytes | None,
    ) -> Outgoing:
        # The path keeps the client's percent-encoding (it was checked before routing): the
        # request line carries it byte for byte, never re-quoted or normalised.
        url = plan.url_prefix + rest + query
        has_version = query_has_api_version(query[1:]) if query else False
        target = (plan.base_url.path + rest or "/") + query
        return cls(request.method, url, target, request, rid, has_version, body)

    @property
    def replayable(self) -> bool:
        return self.body is not None


def headers_for(
    plan: Plan, outgoing: Outgoing, credential: Credential, trace: Trace = ()
) -> Iterator[tuple[str, str]]:
    """The upstream request's headers for one attempt, in order (a pure function of its
    inputs; the policy is `upstream.headers.upstream_fields`). `trace`: with tracing on, the
    attempt's own traceparent/tracestate, which replace the client's."""
    fields = upstream_fields(
        outgoing.client.headers,
        authorization=credential.authorization,
        tenant=plan.tenant,
        host=plan.host_header,
        tenant_headers=plan.tenant_headers,
        api_version=plan.api_version,
        request_id=outgoing.request_id,
        query_has_api_version=outgoing.query_has_api_version,
    )
    if not trace:
        return fields
    return itertools.chain(((k, v) for k, v in fields if k.lower() not in PROPAGATED), trace)


class Answer:
    """The upstream's answer to one attempt, on a connection borrowed from the pool: status
    and headers, then the body as the relay reads it. For a 401/403 its first bytes are read
    already (`peeked`, relayed later). `release` returns the connection, reusable only when
    the answer was complete and fully read."""

    def __init__(
        self,
        head: WireAnswer,
        connection: Connection,
        pool: Pool,
        plan: Plan,
        writer: asyncio.Future[None] | None,
    ) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.obs_text = head.obs_text
        self.peeked: bytes | None = None
        # The peeked bytes were scrubbed to this many (-1: and more body follows); None: as sent
        self.resized: int | None = None
        self._connection = connection
        self._pool = pool
        self._plan = plan
        self._writer = writer  # sends the request body; still running after an early answer
        self._released = False
        self.on_release: Callable[[], None] | None = None  # ends its trace span, if any

    async def read(self) -> bytes:
        """The next body bytes (b"" at the end), within the route's read timeout."""
        chunk = await self._connection.read(self._plan.timeouts.read)
        if not chunk and self._connection.trailers:
            _dropped_trailers(self._plan.name)
        return chunk

    @property
    def request_sent(self) -> bool:
        """The whole request went up (an early answer can come while its body streams)."""
        return self._writer is None or self._writer.done()

    def downstream(self, backed_up: bool) -> None:
        """The relay's word on the client: while its socket is backed up, read small."""
        self._connection.downstream_slow = backed_up

    def close(self) -> None:
        """SECURITY: a connection whose framing can't be trusted is never reused."""
        self._connection.close()
        self.release()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.on_release is not None:
            self.on_release()
        if self._writer is not None and not self._writer.done():  # the body was cut short
            self._writer.cancel()
            self._connection.close()
        self._pool.release(self._plan, self._connection)


_TRAILERS_NOTED: set[str] = set()


def _dropped_trailers(route: str) -> None:
    """RFC 9110 §6.5.1: trailer fields are not headers; the proxy drops them (a client of a
    chunked answer can't be told which fields came late). Said once per route, at DEBUG."""
    if route not in _TRAILERS_NOTED and len(_TRAILERS_NOTED) < 4096:
        _TRAILERS_NOTED.add(route)
        log.debug("dropped the trailer fields of an answer", extra={"fields": {"route": route}})


async def send(
    pool: Pool,
    plan: Plan,
    outgoing: Outgoing,
    credential: Credential,
    record: Record,
    body_clock: BodyClock,
    trace: Trace = (),
) -> Answer:
    """Send once with `credential`. Raises what `upstream.failures.classify` knows, or
    BodyLimit when the client's body breaks a limit (noted in `record.body_error`). A pooled
    connection the upstream had closed meanwhile is replaced once, for a replayable request."""
    head = request_head(plan, outgoing, credential, trace)
    for attempt in (1, 2):
        connection, reused = await pool.acquire(plan)
        try:
            answer = await _exchange(pool, plan, outgoing, head, connection, record, body_clock)
        except (UpstreamClosed, BrokenPipeError):
            connection.close()
            pool.release(plan, connection)
            if reused and attempt == 1 and outgoing.replayable:
                continue  # a keep-alive connection the upstream closed while it was idle
            raise
        except BaseException:
            connection.close()
            pool.release(plan, connection)
            raise
        try:
            answer.peeked = await _peek_refusal(answer, record)
        except BaseException:
            answer.close()
            raise
        return answer
    raise AssertionError("unreachable")  # the loop returns or raises


def request_head(
    plan: Plan, outgoing: Outgoing, credential: Credential, trace: Trace = ()
) -> RequestHead:
    """The request line and headers; the writer (`RequestHead.of`) declares the framing for
    the body as it will be sent: a kept body's own length, the client's Content-Length for a
    streamed body (listeners never inflate, so those are the bytes that come), else chunked."""
    client = outgoing.client
    line = f"{outgoing.method} {outgoing.target} HTTP/1.1"
    fields = headers_for(plan, outgoing, credential, trace)
    if outgoing.body is not None:
        declared = outgoing.body or client.body_exists or client.content_length is not None
        length = len(outgoing.body) if declared else NO_BODY
    elif client.body_exists:
        length = CHUNKED if client.content_length is None else client.content_length
    else:  # an empty body the client declared (Content-Length: 0) is declared upstream too
        length = NO_BODY if client.content_length is None else 0
    return RequestHead.of(line, fields, length)


async def _exchange(
    pool: Pool,
    plan: Plan,
    outgoing: Outgoing,
    head: RequestHead,
    connection: Connection,
    record: Record,
    body_clock: BodyClock,
) -> Answer:
    """Write the request and wait for the answer's head. A body that streams from the client
    goes up in a task of its own (the upstream may answer before it ends); anything else
    leaves in one write."""
    answer_head = connection.begin(head_request=outgoing.method == "HEAD")
    timeout = plan.timeouts.read
    if outgoing.body is not None or not outgoing.client.body_exists:
        body = outgoing.body or b""
        record.bytes_in = len(body)
        connection.send_whole(head, body)
        return Answer(await connection.head(timeout), connection, pool, plan, None)
    writer = asyncio.ensure_future(_write(connection, head, outgoing, plan, record, body_clock))
    try:
        done: set[asyncio.Future[object]] = {answer_head, writer}  # type: ignore[arg-type]
        await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
        if writer.done() and (failed := writer.exception()) is not None:
            raise failed
        wire = await connection.head(timeout)
    except BaseException:
        writer.cancel()
        raise
    return Answer(wire, connection, pool, plan, writer)


async def _write(
    connection: Connection,
    head: RequestHead,
    outgoing: Outgoing,
    plan: Plan,
    record: Record,
    body_clock: BodyClock,
) -> None:
    """The request head, then the client's body as it comes, framed by the connection as the
    head declared. A body that breaks that framing is the client's fault (`body_length`)."""
    try:
        await connection.send_head(head)
        async for chunk in counted(
            outgoing.client.content, record, plan.max_body_bytes, body_clock
        ):
            await connection.send_body(chunk)
        await connection.end_body()
    except FramingBroken:
        record.body_error = "body_length"
        raise BodyLimit from None


async def _peek_refusal(answer: Answer, record: Record) -> bytes | None:
    """For a 401/403, the first REFUSAL_PEEK bytes of its body (relayed to the client later,
    unchanged), with the upstream's message taken from them; None for any other answer."""
    if answer.status not in REFUSALS:
        record.upstream_message = None
        return None
    parts: list[bytes] = []
    size = 0
    complete = False  # the whole body was read
    while size < REFUSAL_PEEK:
        chunk = await answer.read()
        if not chunk:
            complete = True
            break
        parts.append(chunk)
        size += len(chunk)
    peeked = b"".join(parts)
    record.upstream_message = upstream_message(peeked[:REFUSAL_PEEK])
    # SECURITY: an upstream that echoes a credential doesn't hand it to the client.
    scrubbed = SECRETS.scrub(peeked.decode("latin-1")).encode("latin-1")
    if scrubbed != peeked:
        answer.resized = len(scrubbed) if complete else -1
    return scrubbed
