"""One upstream exchange: build the URL and headers, stream the body up, stream the answer down.

Failure → status mapping (the only place it is decided):

| what happened                                   | client gets          | `reason` |
|-------------------------------------------------|----------------------|----------|
| DNS failure, connection refused/unreachable     | 502 envelope         | connect  |
| TLS handshake or certificate failure            | 502 envelope         | tls      |
| no connection within `timeouts.connect`         | 504 envelope         | timeout  |
| no byte from upstream within `timeouts.read`    | 504 envelope         | timeout  |
| `timeouts.total` exceeded                       | 504 envelope         | timeout  |
| connection reset or closed                      | 502 envelope         | reset    |
| malformed status line or header; a status       | 502 envelope; the    | bad_response |
|   outside 200-599 (a 101 nobody asked for, 000, | upstream connection  |          |
|   099, 600: aiohttp handles 100/103 itself)     | is closed, not reused|          |
| any of the above after the response has started | connection cut off   | as above |

A response cut off mid-stream is passed on as a cut-off connection (no terminating chunk, short
`Content-Length`), never as a clean end. Nothing is retried. Envelope messages are generic;
the log carries the detail, with the token scrubbed and without the URL: aiohttp's exception
text carries the full URL, query string included, and quotes what the upstream sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.config import Route
from proxy.config.traffic import RetryPolicy
from proxy.refusals import REFUSAL_PEEK, envelope, upstream_message
from proxy.tokens import Credential
from proxy.upstream.bodies import BodyClock, BodyLimit, body_refusal, counted
from proxy.upstream.headers import response_headers, rewrite_location, upstream_headers

log = logging.getLogger("amperity_proxy.forward")

_MAX_DETAIL = 300


@dataclass(frozen=True, slots=True)
class Upstream:
    """A route's upstream, computed once at load time."""

    route: Route
    url_prefix: str  # origin + base path, e.g. "https://acme.amperity.com/api"
    host_header: str
    ssl_context: ssl.SSLContext
    timeout: aiohttp.ClientTimeout
    body_timeout: float  # longest silence while reading the client's body (limits.body_timeout)
    body_deadline: float  # longest time for the whole body (limits.body_deadline)

    @classmethod
    def from_route(
        cls, route: Route, ssl_context: ssl.SSLContext, body_timeout: float, body_deadline: float
    ) -> Upstream:
        t = route.timeouts
        timeout = aiohttp.ClientTimeout(
            total=t.total, connect=t.connect, sock_connect=t.connect, sock_read=t.read
        )
        return cls(
            route,
            str(route.base_url),
            route.base_url.host_header,
            ssl_context,
            timeout,
            body_timeout,
            body_deadline,
        )

    def body_clock(self) -> BodyClock:
        """The deadlines for one request's body, starting now."""
        return BodyClock(self.body_timeout, self.body_deadline)


@dataclass(slots=True)
class Outcome:
    """What happened during one exchange, for the access log and metrics."""

    upstream_status: int | None = None
    error: str | None = None  # one of connect, tls, timeout, reset, bad_response
    detail: str = ""  # for the log only
    bytes_in: int = 0
    bytes_out: int = 0
    client_gone: bool = False
    body_error: str | None = None  # body_timeout or body_too_large: the client's fault
    retried: bool = False  # sent a second time after a 401
    status_sent: int | None = None  # the status line the client got, once it is out
    shutdown: bool = False  # cut by the drain on SIGTERM
    deprecation: str | None = None  # the upstream's Deprecation/Sunset headers
    upstream_message: str | None = None  # a 401/403's own message (scrubbed; recovery.py)


class BadResponse(Exception):
    """The upstream's status is outside 200-599 (and not a 1xx aiohttp consumed itself)."""


def classify(exc: BaseException) -> tuple[str, int]:
    """Map an upstream failure to (reason, status)."""
    if isinstance(exc, BadResponse):
        return "bad_response", 502
    if isinstance(exc, aiohttp.ClientResponseError):
        return "bad_response", 502  # the response parser refused a status or header line
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return "tls", 502
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout", 504
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", 502
    return "reset", 502


def _message(reason: str, upstream: Upstream) -> str:
    route = upstream.route
    where = f"{upstream.url_prefix} (route {route.name})"
    if reason == "connect":
        return f"could not connect to the Amperity API at {where}; check the network and base_url"
    if reason == "tls":
        return (
            f"TLS verification failed for {where}; if a corporate proxy re-signs traffic, "
            "set ca_file to its CA bundle"
        )
    if reason == "bad_response":
        return (
            f"the Amperity API at {where} sent a malformed or unexpected response "
            "(status line, header or status code); retry"
        )
    if reason == "timeout":
        return (
            f"the Amperity API at {where} did not answer in time "
            f"(timeouts: connect {route.timeouts.connect}s, read {route.timeouts.read}s)"
        )
    return f"the Amperity API at {where} closed the connection before a complete answer; retry"


def scrub(text: str, secret: str) -> str:
    """SECURITY: remove a secret from text that is about to be logged."""
    return text.replace(secret, "<redacted>") if secret else text


def detail(exc: BaseException) -> str:
    """What the log may say about an upstream failure. SECURITY: aiohttp's ClientResponseError
    renders as `status, message=..., url=<the full URL, query included>`; only its message is
    kept (the log formatter also redacts any URL's query string that slips through)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {exc.message}"
    # aiohttp's connector errors quote their SSL context as `ssl:<ssl.SSLContext object at
    # 0x7f...>`: noise to a reader, so the TLS context is named, not its address.
    return _OBJECT_REPR_RE.sub(r"\1", f"{type(exc).__name__}: {exc}")


_OBJECT_REPR_RE = re.compile(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>")


class GuardedClientResponse(aiohttp.ClientResponse):
    """The upstream session's response class: a status outside 200-599 closes the connection
    it came on. aiohttp hands a connection back to the pool as soon as a small body is
    complete, before the caller sees the status, so closing the response would be too late;
    the protocol is held here and closed instead, and the pool drops a closed connection.
    SECURITY: after a 101 nobody asked for (or 000, 600) the connection's framing can't be
    trusted, and the next request must not ride on it."""

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        response = await super().start(connection)
        if not 200 <= self.status <= 599 and protocol is not None:
            protocol.close()
        return response


class _CoalescedResponse(web.StreamResponse):
    """A streamed response whose headers leave with its first body bytes (or its end) in one
    socket write, instead of a write of their own: for small API answers that halves the
    writes. The upstream's read timeout bounds how long headers can wait for body bytes."""

    _send_headers_immediately = False


OnUnauthorized = Callable[[Credential, bool, str | None], Awaitable[Credential | None]]
REFUSALS = (401, 403)  # answers whose body's message is read for the log and status page


async def _peek_refusal(response: aiohttp.ClientResponse, outcome: Outcome) -> bytes | None:
    """For a 401/403, the first REFUSAL_PEEK bytes of its body (relayed to the client later,
    unchanged), with the upstream's message taken from them; None for any other answer."""
    if response.status not in REFUSALS:
        outcome.upstream_message = None
        return None
    parts: list[bytes] = []
    size = 0
    while size < REFUSAL_PEEK:
        chunk = await response.content.read(REFUSAL_PEEK - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    peeked = b"".join(parts)
    outcome.upstream_message = upstream_message(peeked)
    return peeked


@dataclass(frozen=True, slots=True)
class Backoff:
    """How `forward` waits between retries on 429/503 (injected, so tests control time)."""

    sleep: Callable[[float], Awaitable[None]]
    delay: Callable[[RetryPolicy, int, str | None], float]
    retried: Callable[[str], None]  # counts the retry by reason


async def forward(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    upstream: Upstream,
    rest: str,
    query: str,
    credential: Credential,
    request_id: str,
    outcome: Outcome,
    public_base: str,
    query_has_api_version: bool = False,
    *,
    body: bytes | None = None,
    on_unauthorized: OnUnauthorized | None = None,
    backoff: Backoff | None = None,
    body_clock: BodyClock | None = None,
) -> web.StreamResponse:
    """Send `request` to `upstream` with the credential and stream the response back.

    `body` is the already-read body of a replayable request (None: stream it from the client).
    On an upstream 401, `on_unauthorized(credential, replayable)` is awaited before anything is
    sent to the client; when it returns a different credential, the request is sent once more
    with it and that answer is the one relayed.
    """
    route = upstream.route
    if body_clock is None:
        body_clock = upstream.body_clock()
    # The path keeps the client's percent-encoding: encoded=True stops yarl from re-quoting or
    # removing dot segments (the path was checked before routing).
    url = URL(upstream.url_prefix + rest + query, encoded=True)

    async def send(cred: Credential) -> aiohttp.ClientResponse:
        headers = upstream_headers(
            request.headers,
            authorization=cred.authorization,
            tenant=route.tenant,
            host=upstream.host_header,
            api_version=route.api_version,
            request_id=request_id,
            query_has_api_version=query_has_api_version,
        )
        data: bytes | AsyncIterator[bytes] | None
        if body is not None:
            outcome.bytes_in = len(body)
            data = body if body or request.body_exists else None
        else:
            data = (
                counted(request.content, outcome, route.max_body_bytes, body_clock)
                if request.body_exists
                else None
            )
        return await session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,  # SECURITY: never follow; the client decides
            ssl=upstream.ssl_context,
            timeout=upstream.timeout,
        )

    response: web.StreamResponse | None = None
    upstream_response: aiohttp.ClientResponse | None = None
    try:
        upstream_response = await send(credential)
        peeked = await _peek_refusal(upstream_response, outcome)
        if upstream_response.status == 401 and on_unauthorized is not None:
            replacement = await on_unauthorized(
                credential, body is not None, outcome.upstream_message
            )
            if replacement is not None and replacement.fingerprint != credential.fingerprint:
                upstream_response.release()
                outcome.retried = True
                credential = replacement
                upstream_response = await send(credential)
                peeked = await _peek_refusal(upstream_response, outcome)
        attempt = 1
        policy = route.retry
        while (
            backoff is not None
            and policy is not None
            and body is not None  # replayable: idempotent method, body kept (never POST/PATCH)
            and upstream_response.status in policy.on
            and attempt < policy.attempts
        ):
            delay = backoff.delay(policy, attempt, upstream_response.headers.get("Retry-After"))
            upstream_response.release()
            backoff.retried(f"status_{upstream_response.status}")
            await backoff.sleep(delay)
            attempt += 1
            upstream_response = await send(credential)
            peeked = await _peek_refusal(upstream_response, outcome)
        if not 200 <= upstream_response.status <= 599:
            # RFC 9110 §15: a final status is 200-599; 1xx are interim, and aiohttp consumes
            # 100 and 103 itself. A 101 nobody asked for, 000, 099 or 600 is a broken upstream.
            # SECURITY: the connection's framing can't be trusted after it: close, don't reuse.
            status = upstream_response.status
            upstream_response.close()  # its connection is closed already: GuardedClientResponse
            raise BadResponse(f"status {status} outside 200-599")
        outcome.upstream_status = upstream_response.status
        outcome.deprecation = _deprecation(upstream_response.headers)
        response = _CoalescedResponse(
            status=upstream_response.status, reason=upstream_response.reason
        )
        response.headers.extend(response_headers(upstream_response.headers.items()))
        if "Location" in response.headers:
            response.headers["Location"] = rewrite_location(
                response.headers["Location"],
                request_url=str(url),
                base_scheme=route.base_url.scheme,
                base_host=route.base_url.host,
                base_port=route.base_url.port,
                base_path=route.base_url.path,
                public_base=public_base,
            )
        response.headers["X-Request-ID"] = request_id
        # The first body bytes are read before anything goes to the client: headers and
        # first bytes then leave in one write, and an upstream that fails before sending any
        # body still gets an honest 502/504 instead of a cut connection.
        first = peeked if peeked is not None else await upstream_response.content.readany()
        await response.prepare(request)
        outcome.status_sent = response.status
        if first:
            await response.write(first)
            outcome.bytes_out += len(first)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
                outcome.bytes_out += len(chunk)
        await response.write_eof()
        return response
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        if request.transport is None or request.transport.is_closing():
            outcome.client_gone = True  # the client went away; not an upstream failure
            if response is None:
                response = web.StreamResponse(status=499)
            return response
        return _failed(exc, request, upstream, credential, request_id, outcome, response)
    except (
        TimeoutError,
        aiohttp.ClientError,
        ssl.SSLError,
        OSError,
        BodyLimit,
        BadResponse,
    ) as exc:
        if outcome.body_error is not None:  # the client's body, not the upstream, failed
            if response is not None and response.prepared:
                request.protocol.force_close()
                return response
            return body_refusal(outcome, request_id)
        return _failed(exc, request, upstream, credential, request_id, outcome, response)
    finally:
        if upstream_response is not None:
            upstream_response.release()


def _deprecation(headers: Mapping[str, str]) -> str | None:
    """Amperity announces api-version sunsets with `Deprecation` / `Sunset` headers."""
    found = [f"{name}: {headers[name]}" for name in ("Deprecation", "Sunset") if name in headers]
    return "; ".join(found)[:300] if found else None


def _failed(
    exc: BaseException,
    request: web.BaseRequest,
    upstream: Upstream,
    credential: Credential,
    request_id: str,
    outcome: Outcome,
    response: web.StreamResponse | None,
) -> web.StreamResponse:
    reason, status = classify(exc)
    outcome.error = reason
    # Exception text can quote what the upstream sent (a bad status line): keep it short.
    outcome.detail = scrub(detail(exc), credential.token)[:_MAX_DETAIL]
    if response is not None and response.prepared:
        # The status line is gone already: the only honest signal left is a cut connection.
        request.protocol.force_close()
        return response
    return envelope(status, _message(reason, upstream), request_id)
