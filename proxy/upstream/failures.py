"""What went wrong upstream, classified: the failure -> status table (the only place it is
decided), the envelope message, and the detail the log may carry.

| what happened                                   | client gets          | `reason` |
|-------------------------------------------------|----------------------|----------|
| DNS failure, connection refused/unreachable     | 502 envelope         | connect  |
| TLS handshake or certificate failure            | 502 envelope         | tls      |
| no connection within `timeouts.connect`         | 504 envelope         | timeout  |
| no byte from upstream within `timeouts.read`    | 504 envelope         | timeout  |
| `timeouts.total` exceeded                       | 504 envelope         | timeout  |
| connection reset or closed                      | 502 envelope         | reset    |
| malformed status line, header or framing; a     | 502 envelope; the    | bad_response |
|   status outside 200-599 (a 101 nobody asked    | upstream connection  |          |
|   for, 000, 099, 600; 100/102/103 are skipped)  | is closed, not reused|          |
| any of the above after the response has started | connection cut off   | as above |

Envelope messages are generic; the log carries the detail, with the token scrubbed and
without the URL or any object's address.
"""

from __future__ import annotations

import re
import ssl

from aiohttp import web

from proxy.observe.record import Record
from proxy.redaction import outside
from proxy.refusals import UPSTREAM_FAILURES, envelope
from proxy.tokens import Credential
from proxy.upstream.answer import MalformedAnswer
from proxy.upstream.plan import Plan
from proxy.upstream.pool import ConnectFailed

_MAX_DETAIL = 300


class BadResponse(Exception):
    """The upstream's status is outside 200-599 (and not an interim 1xx, which is skipped)."""


def classify(exc: BaseException) -> tuple[str, int]:
    """Map an upstream failure to (reason, status); statuses from refusals.UPSTREAM_FAILURES."""
    reason = "reset"
    if isinstance(exc, (BadResponse, MalformedAnswer)):
        reason = "bad_response"
    elif isinstance(exc, ssl.SSLError):
        reason = "tls"
    elif isinstance(exc, TimeoutError):
        reason = "timeout"
    elif isinstance(exc, ConnectFailed):
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


def detail(exc: BaseException) -> str:
    """What the log may say about an upstream failure (the log formatter also redacts any
    URL's query string that slips through). Library errors can quote an object as
    `<ssl.SSLContext object at 0x7f...>`: noise to a reader, so the class is named instead."""
    return _OBJECT_REPR_RE.sub(r"\1", f"{type(exc).__name__}: {exc}")


_OBJECT_REPR_RE = re.compile(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>")


def failure(
    exc: BaseException, plan: Plan, credential: Credential, record: Record, request_id: str
) -> web.Response:
    """The envelope for a failed exchange; the reason and the scrubbed detail go to `record`."""
    reason, status = classify(exc)
    record.error = reason
    # Exception text can quote what the upstream sent (a bad status line): keep it short.
    record.detail = outside(detail(exc), _MAX_DETAIL)
    return envelope(status, _message(reason, plan), request_id)
