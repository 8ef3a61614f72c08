"""Errors the proxy itself answers with, in Amperity's JSON envelope, and the message of one
the upstream answered with.

`{"status": 502, "message": "...", "request_id": "..."}`. Messages tell the user what to do;
they never carry exception text, tokens or upstream internals (those go to the log).

An upstream 401/403's own message is read from the first REFUSAL_PEEK bytes of its body (the
body still reaches the client unchanged), scrubbed of anything token- or query-shaped and cut
to MESSAGE_MAX characters, for the log, `doctor` and the status page.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web

from proxy.redaction import outside


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of refusal: the status it is answered with and its metric label."""

    status: int
    label: str  # a value of amperity_proxy_rejected_requests_total{reason}


# The catalogue: every refusal the proxy answers itself, and the only place its status is
# chosen. Keys name the situation; several may share a label (a method is refused with 405
# when the proxy never supports it, 403 when a route's policy excludes it). Label order is
# the metric's series order.
CATALOGUE: dict[str, Kind] = {
    "no_route": Kind(404, "no_route"),
    "bad_path": Kind(400, "bad_path"),
    "bad_target": Kind(400, "bad_target"),
    "token_expired": Kind(401, "token_expired"),  # expired_token: reject
    # limits: the listener's parser and connection cap, the body checks
    "bad_request": Kind(400, "bad_request"),
    "request_line_too_long": Kind(414, "request_line_too_long"),
    "headers_too_large": Kind(431, "headers_too_large"),
    "header_timeout": Kind(408, "header_timeout"),
    "too_many_connections": Kind(503, "too_many_connections"),
    "body_timeout": Kind(408, "body_timeout"),
    "body_too_large": Kind(413, "body_too_large"),
    "body_deadline": Kind(408, "body_deadline"),
    "body_length": Kind(400, "bad_request"),  # a body that broke its declared framing
    "upstream_busy": Kind(503, "upstream_busy"),
    "rate_limited": Kind(429, "rate_limited"),
    # who may use the proxy (gate) and what it forwards
    "forbidden_client": Kind(403, "forbidden_client"),
    "forbidden_host": Kind(403, "forbidden_host"),
    "forbidden_origin": Kind(403, "forbidden_origin"),
    "unsupported_method": Kind(405, "forbidden_method"),
    "route_method": Kind(403, "forbidden_method"),
    "forbidden_path": Kind(403, "forbidden_path"),
    "bad_client_token": Kind(403, "bad_client_token"),
    "bad_proxy_token": Kind(407, "bad_client_token"),  # forward mode: Proxy-Authorization
    "client_route": Kind(403, "client_route"),  # a named client on a route that doesn't list it
    "connect": Kind(405, "connect"),
    "upgrade": Kind(400, "upgrade"),
    "bad_expect": Kind(417, "bad_expect"),
    "bad_content_type": Kind(415, "bad_content_type"),
    "foreign_host": Kind(403, "foreign_host"),
    "ambiguous_tenant": Kind(421, "ambiguous_tenant"),
    # not counted as rejected requests: the route can't serve at all, or the proxy failed
    "no_token": Kind(503, "no_token"),
    "internal": Kind(500, "internal"),  # an exception the proxy didn't expect (logged)
    "handler_timeout": Kind(504, "internal"),
}
_NOT_REJECTIONS = frozenset({"no_token", "internal", "handler_timeout"})
# amperity_proxy_rejected_requests_total's `reason` values, in catalogue order.
REJECT_REASONS = tuple(
    dict.fromkeys(k.label for n, k in CATALOGUE.items() if n not in _NOT_REJECTIONS)
)
# Upstream failures: reason (amperity_proxy_upstream_errors_total) -> status.
UPSTREAM_FAILURES = {"connect": 502, "tls": 502, "timeout": 504, "reset": 502, "bad_response": 502}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: status, metric reason, and the user-facing message.
    Made by `refuse`, so its status comes from the catalogue."""

    status: int
    reason: str  # a label of amperity_proxy_rejected_requests_total
    message: str
    headers: Mapping[str, str] | None = None


def refuse(kind: str, message: str, headers: Mapping[str, str] | None = None) -> Refusal:
    """The refusal of `kind` (a CATALOGUE key) with this message."""
    entry = CATALOGUE[kind]
    return Refusal(entry.status, entry.label, message, headers)


def internal_refusal(status: int) -> Refusal:
    """The answer to a request the proxy failed itself (500), or timed out on (504)."""
    if status == 504:
        return refuse("handler_timeout", "the proxy did not finish this request in time; retry")
    return refuse(
        "internal",
        "the proxy failed on this request (an internal error, logged with this request_id); "
        "retry, and report it if it repeats",
    )


def answer(refusal: Refusal, request_id: str) -> web.Response:
    """A refusal as a response in Amperity's envelope."""
    return envelope(refusal.status, refusal.message, request_id, refusal.headers)


def envelope(
    status: int, message: str, request_id: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON error response in Amperity's envelope, carrying the request id."""
    body = json.dumps({"status": status, "message": message, "request_id": request_id})
    response = web.Response(
        status=status, text=body, content_type="application/json", headers=headers
    )
    response.headers["X-Request-ID"] = request_id
    response.headers["Cache-Control"] = "no-store"
    return response


REFUSAL_PEEK = 4096  # bytes of a 401/403 body read for the upstream's own message
MESSAGE_MAX = 200  # characters of that message kept (log, doctor, status page)
_MESSAGE_KEYS = ("message", "error_description", "detail", "error")


def upstream_message(body: bytes) -> str | None:
    """The message of a refusal's JSON envelope, safe to log and show, or None."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):  # not JSON, or cut at REFUSAL_PEEK
        return None
    if not isinstance(document, dict):
        return None
    for key in _MESSAGE_KEYS:
        value = document.get(key)
        if isinstance(value, str) and value.strip():
            return outside(value, MESSAGE_MAX)  # SECURITY: it may quote the token
    return None


def raw_envelope(refusal: Refusal) -> bytes:
    """A complete HTTP/1.1 response for when there is no request object to answer with."""
    status = refusal.status
    body = json.dumps(
        {"status": status, "message": refusal.message, "request_id": uuid.uuid4().hex}
    )
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
        f"{body}"
    ).encode()
