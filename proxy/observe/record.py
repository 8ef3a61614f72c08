"""What happened to one request, and writing it out once: metrics, activity, the access log.

A `Record` is filled by the steps that learn each fact (the upstream exchange: status, bytes,
error, the upstream's message; the pipeline: a refusal, a client that left, the drain), and the
`Recorder` writes it out exactly once, when the request ends: the per-route metrics and
status-page activity, the summarised warnings (403s, upstream errors, deprecations) and the
access-log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from proxy.config import Route
from proxy.listener import draining, peer_uid
from proxy.observe.activity import Activity
from proxy.observe.logs import Repeats, direct_json
from proxy.observe.metrics import RouteMetrics
from proxy.tokens.health import API_KEYS, TOKEN_CAUSES

access_log = logging.getLogger("amperity_proxy.access")
log = logging.getLogger("amperity_proxy.proxy")


@dataclass(slots=True)
class Record:
    """One request's facts, for the access log and metrics."""

    upstream_status: int | None = None
    error: str | None = None  # one of connect, tls, timeout, reset, bad_response
    detail: str = ""  # for the log only
    bytes_in: int = 0
    bytes_out: int = 0
    client_gone: bool = False
    client_name: str | None = None  # the named client (listen.clients); never its token
    trace_ids: dict[str, str] | None = None  # trace_id, span_id of its server span (tracing on)
    body_error: str | None = None  # body_timeout, body_deadline, body_too_large: the client's
    retried: bool = False  # sent a second time after a 401
    status_sent: int | None = None  # the status line the client got, once it is out
    shutdown: bool = False  # cut by the drain on SIGTERM
    deprecation: str | None = None  # the upstream's Deprecation/Sunset headers
    retry_after: str | None = None  # the upstream's Retry-After on a 429 (pauses shared buckets)
    upstream_message: str | None = None  # a 401/403's own message (refusals.upstream_message)
    unauthorized_cause: str | None = None  # a 401's cause (tokens.health.unauthorized_cause)
    refused: str | None = None  # the refusal's metric label, when the proxy answered itself


class Recorder:
    """Writes each request's Record out once (see the module docstring)."""

    def __init__(self, activity: Activity, unix: bool, clock: Callable[[], float] = time.time):
        self.activity = activity
        self.unix = unix  # the proxy listens on a Unix socket: the access log names the uid
        self.clock = clock
        self._repeats = Repeats(log, clock=clock)  # an upstream that keeps failing
        self._deprecation_logged: set[str] = set()

    def exchanged(self, route: Route, metrics: RouteMetrics, record: Record, rid: str) -> None:
        """A request that reached the upstream (or tried to): metrics, activity, warnings."""
        if record.upstream_status is not None:
            metrics.response(record.upstream_status)
        status = record.upstream_status or 0
        now = self.clock()
        activity = self.activity.route(route.name)
        activity.record(now, record.error is not None or status >= 500)
        if status:
            # A route's health moves only on the token's evidence: a 401 whose cause blames
            # the token. A 403 (the key's role) or a request's own fault is shown, not judged.
            blames = status == 401 and record.unauthorized_cause in TOKEN_CAUSES
            activity.answered(status, record.upstream_message, now, blames)
        fields: dict[str, object] = {"request_id": rid, "route": route.name, "tenant": route.tenant}
        if status == 403:  # a 401 is explained by Recovery; a 403 by Amperity's own words
            self._forbidden(route, record, fields)
        if record.error is not None:
            self.activity.upstream_error(route.name, record.error, now)
            metrics.errors[record.error].inc()
            self._upstream_error(route, record.error, record.detail, fields)
        if record.deprecation is not None:
            metrics.deprecations.inc()
            self._deprecated(route, record, fields)

    def _forbidden(self, route: Route, record: Record, fields: dict[str, object]) -> None:
        held = self._repeats.admit(
            ("403", route.name),
            f"403s for route {route.name}",
            {"route": route.name, "tenant": route.tenant},
        )
        if held is None:
            return
        said = f': "{record.upstream_message}"' if record.upstream_message else ""
        log.warning(
            "Amperity answered 403 for route %s (tenant %s)%s; the API key's role may not allow "
            "this request: check its policy in %s",
            route.name,
            route.tenant,
            said,
            API_KEYS,
            extra={"fields": fields | ({"repeated": held} if held else {})},
        )

    def _upstream_error(
        self, route: Route, error: str, detail: str, fields: dict[str, object]
    ) -> None:
        held = self._repeats.admit(
            ("upstream_error", route.name, error),
            f"upstream {error} errors for route {route.name}",
            {"route": route.name, "tenant": route.tenant, "error": error},
        )
        if held is not None:
            log.warning(
                "upstream %s error: %s",
                error,
                detail,
                extra={"fields": fields | ({"repeated": held} if held else {})},
            )

    def _deprecated(self, route: Route, record: Record, fields: dict[str, object]) -> None:
        if route.name in self._deprecation_logged:  # once per route
            return
        self._deprecation_logged.add(route.name)
        log.warning(
            "Amperity announced a deprecation for route %s (api-version %s): %s; check "
            "Amperity's API changelog and set api_version",
            route.name,
            route.api_version,
            record.deprecation,
            extra={"fields": fields},
        )

    def access(
        self,
        request: web.BaseRequest,
        rid: str,
        path: str | None,
        route: Route | None,
        response: web.StreamResponse | None,
        record: Record,
        duration: float,
    ) -> None:
        """The access-log line: one per request, whatever happened to it."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        if path is None:
            path = request.raw_path.partition("?")[0]
        status = response.status if response is not None else (record.status_sent or 500)
        if record.client_gone and draining(request):
            record.shutdown = True  # the drain closed the connection, not the client
        uid = peer_uid(request) if self.unix else None
        fields = {
            "request_id": rid,
            "client": f"uid:{uid}" if uid is not None else request.remote,
            "client_name": record.client_name,
            "method": request.method,
            "route": route.name if route else None,
            "tenant": route.tenant if route else None,
            "path": path[:1024],
            "status": status,
            "upstream_status": record.upstream_status,
            "error": record.error
            or ("shutdown" if record.shutdown else None)
            or ("client_disconnected" if record.client_gone else None),
            "refused": record.refused,
            "retried": record.retried,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "duration_ms": round(duration * 1000, 3),
        }
        if record.trace_ids:
            fields.update(record.trace_ids)
        message = f"{request.method} {path} {status}"
        if not direct_json(access_log.name, message, fields, _CLIENT_TEXT):
            access_log.info("%s %s %s", request.method, path, status, extra={"fields": fields})


# Access-log fields that carry what a client sent (scrubbed); the others are numbers and labels.
_CLIENT_TEXT = ("request_id", "path")
