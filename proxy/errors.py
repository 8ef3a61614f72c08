"""Errors the proxy itself answers with, in Amperity's JSON envelope.

`{"status": 502, "message": "...", "request_id": "..."}`. Messages tell the user what to do;
they never carry exception text, tokens or upstream internals (those go to the log).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web


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
