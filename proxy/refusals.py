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
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from proxy.observe.logs import redact


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: status, metric reason, and the user-facing message."""

    status: int
    reason: str  # a label of amperity_proxy_rejected_requests_total
    message: str
    headers: Mapping[str, str] | None = None


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
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


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
            text = redact(_CONTROL_RE.sub(" ", value)).strip()
            return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"
    return None
