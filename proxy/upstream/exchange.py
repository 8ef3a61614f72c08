"""One attempt at the upstream: the request built from the route's plan, sent once, and what
went wrong classified.

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
`Content-Length`), never as a clean end (`upstream.relay`). Retries (401 recovery, 429/503
back-off) are layers around `send` (`upstream.retry`). Envelope messages are generic; the log
carries the detail, with the token scrubbed and without the URL: aiohttp's exception text
carries the full URL, query string included, and quotes what the upstream sent.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.observe.record import Record
from proxy.refusals import REFUSAL_PEEK, UPSTREAM_FAILURES, envelope, upstream_message
from proxy.tokens import Credential
from proxy.upstream.bodies import BodyClock, counted
from proxy.upstream.headers import query_has_api_version, upstream_headers
from proxy.upstream.plan import Plan

_MAX_DETAIL = 300
REFUSALS = (401, 403)  # answers whose body's message is read for the log and status page


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request as the upstream will get it, less the credential: built once per request,
    the same for every attempt."""

    method: str
    url: URL
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
        # The path keeps the client's percent-encoding: encoded=True stops yarl from
        # re-quoting or removing dot segments (the path was checked before routing).
        url = URL(plan.url_prefix + rest + query, encoded=True)
        has_version = query_has_api_version(query[1:]) if query else False
        return cls(request.method, url, request, rid, has_version, body)

    @property
    def replayable(self) -> bool:
        return self.body is not None


def headers_for(plan: Plan, outgoing: Outgoing, credential: Credential) -> CIMultiDict[str]:
    """The upstream request's headers for one attempt (a pure function of its inputs)."""
    return upstream_headers(
        outgoing.client.headers,
        authorization=credential.authorization,
        tenant=plan.tenant,
        host=plan.host_header,
        api_version=plan.api_version,
        request_id=outgoing.request_id,
        query_has_api_version=outgoing.query_has_api_version,
    )


@dataclass(slots=True)
class Answer:
    """The upstream's answer to one attempt; for a 401/403, its first bytes already read."""

    response: aiohttp.ClientResponse
    peeked: bytes | None  # the first REFUSAL_PEEK bytes of a 401/403 (relayed later)

    @property
    def status(self) -> int:
        return self.response.status

    def release(self) -> None:
        self.response.release()


class BadResponse(Exception):
    """The upstream's status is outside 200-599 (and not a 1xx aiohttp consumed itself)."""


async def send(
    session: aiohttp.ClientSession,
    plan: Plan,
    outgoing: Outgoing,
    credential: Credential,
    record: Record,
    body_clock: BodyClock,
) -> Answer:
    """Send once with `credential`. Raises what aiohttp raises (see `classify`), or BodyLimit
    when the client's body breaks a limit (noted in `record.body_error`)."""
    data: bytes | AsyncIterator[bytes] | None = None
    client = outgoing.client
    if outgoing.body is not None:
        record.bytes_in = len(outgoing.body)
        data = outgoing.body if outgoing.body or client.body_exists else None
    elif client.body_exists:
        data = counted(client.content, record, plan.max_body_bytes, body_clock)
    response = await session.request(
        outgoing.method,
        outgoing.url,
        headers=headers_for(plan, outgoing, credential),
        data=data,
        allow_redirects=False,  # SECURITY: never follow; the client decides
        ssl=plan.ssl_context,
        timeout=plan.timeout,
    )
    return Answer(response, await _peek_refusal(response, record))


async def _peek_refusal(response: aiohttp.ClientResponse, record: Record) -> bytes | None:
    """For a 401/403, the first REFUSAL_PEEK bytes of its body (relayed to the client later,
    unchanged), with the upstream's message taken from them; None for any other answer."""
    if response.status not in REFUSALS:
        record.upstream_message = None
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
    record.upstream_message = upstream_message(peeked)
    return peeked


def classify(exc: BaseException) -> tuple[str, int]:
    """Map an upstream failure to (reason, status); statuses from refusals.UPSTREAM_FAILURES."""
    reason = "reset"
    if isinstance(exc, (BadResponse, aiohttp.ClientResponseError)):
        reason = "bad_response"  # (ClientResponseError: the parser refused a status or header)
    elif isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        reason = "tls"
    elif isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        reason = "timeout"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = "connect"
    return reason, UPSTREAM_FAILURES[reason]


def _message(reason: str, plan: Plan) -> str:
    where = f"{plan.url_prefix} (route {plan.name})"
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
            f"(timeouts: connect {plan.timeouts.connect}s, read {plan.timeouts.read}s)"
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


def failure(
    exc: BaseException, plan: Plan, credential: Credential, record: Record, request_id: str
) -> web.Response:
    """The envelope for a failed exchange; the reason and the scrubbed detail go to `record`."""
    reason, status = classify(exc)
    record.error = reason
    # Exception text can quote what the upstream sent (a bad status line): keep it short.
    record.detail = scrub(detail(exc), credential.token)[:_MAX_DETAIL]
    return envelope(status, _message(reason, plan), request_id)
