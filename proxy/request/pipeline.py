"""Request handlers: the proxy, and the admin endpoints (/healthz, /livez, /readyz, /metrics).

Request path, one direction: admission (who may ask, which route) → credential → forward →
response, with a `finally` that records metrics and writes the access-log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.config import Route
from proxy.observe.activity import Activity
from proxy.observe.logs import Repeats
from proxy.observe.metrics import ProxyMetrics, RouteMetrics
from proxy.refusals import Refusal, envelope
from proxy.request.admission import Admission
from proxy.request.gate import peer_uid
from proxy.request.pacing import ClientGone, Pacer, RateLimited
from proxy.tokens import Credential, RouteState, TokenStore
from proxy.tokens.health import API_KEYS
from proxy.upstream.bodies import (
    BodyLimit,
    body_refusal,
    expects_continue,
    read_replayable_body,
    send_continue,
)
from proxy.upstream.exchange import Backoff, Outcome, Upstream, forward
from proxy.upstream.headers import query_has_api_version, request_id
from proxy.upstream.retry import Recovery, expired_refusal
from proxy.upstream.slots import UpstreamBusy, UpstreamSlots

access_log = logging.getLogger("amperity_proxy.access")
log = logging.getLogger("amperity_proxy.proxy")

# Refusals after which the connection can't carry another HTTP request.
_CLOSE_AFTER = frozenset({"connect", "upgrade"})


@dataclass(frozen=True, slots=True)
class Target:
    """What a route maps to: the upstream, the route's bound metrics, its forward-mode base,
    and the generation of its tokens. SECURITY: a request reads (and after a 401 recovers) its
    credential only from `tokens`, the generation that admitted it, never by route name."""

    upstream: Upstream
    metrics: RouteMetrics
    forward_base: str  # http://<base host>[:port]<base path>: a forward-mode client's view
    backoff: Backoff  # how retries on 429/503 wait and are counted
    tokens: RouteState

    @property
    def route(self) -> Route:
        return self.upstream.route


def _abandon_body(request: web.BaseRequest) -> None:
    """Don't drain a body the proxy refused; close once the answer is out."""
    abandon = getattr(request.protocol, "abandon_body", None)  # GuardedHandler connections
    if abandon is not None:
        abandon()


def _client_key(request: web.BaseRequest) -> str:
    """Whose share an exchange counts against: the client address (or the Unix peer's uid)."""
    if request.remote:
        return request.remote
    uid = peer_uid(request)
    return f"uid:{uid}" if uid is not None else "unknown"


class ProxyHandler:
    """The handler for every request on the proxy listener."""

    def __init__(
        self,
        admission: Admission[Target],
        store: TokenStore,
        metrics: ProxyMetrics,
        slots: UpstreamSlots,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.admission = admission
        self.store = store
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None  # set while the proxy runs
        self.activity = Activity()  # the status page's per-route traffic; survives reloads
        self.recovery = Recovery(store, clock, self.activity)
        self.pacer = Pacer(clock, sleep)
        self.slots = slots
        self.clock = clock
        self._deprecation_logged: set[str] = set()
        self._repeats = Repeats(log, clock=clock)  # an upstream that keeps failing

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        rid = request_id(request.headers.get("X-Request-ID"))
        admitted = self.admission.admit(request)
        outcome = Outcome()
        if isinstance(admitted, Refusal):
            self.metrics.rejected.labels(admitted.reason).inc()
            response = envelope(admitted.status, admitted.message, rid, admitted.headers)
            if admitted.reason in _CLOSE_AFTER:
                response.force_close()  # the client may already be sending tunnel bytes
            elif expects_continue(request) and request.body_exists:
                _abandon_body(request)  # the body was never asked for: close, don't drain
            self._access(request, rid, None, None, response, outcome, started, admitted.reason)
            return response
        target = admitted.target
        route = target.route
        result: web.StreamResponse | None = None
        continued = False
        try:
            credential = target.tokens.credential
            if credential is None:
                result = envelope(
                    503,
                    f"route {route.name} has no usable token; see /readyz on the admin port",
                    rid,
                )
                return result
            if route.expired_token == "reject" and credential.expired(self.clock()):  # noqa: S105 (a policy name)
                refusal = expired_refusal(route, self.store.status_of(target.tokens), self.clock())
                if refusal is not None:
                    self.metrics.rejected.labels(refusal.reason).inc()
                    result = envelope(refusal.status, refusal.message, rid)
                    return result
            if route.rate_limit is not None:
                # Before the body is read: a queued request holds no body in memory.
                gone = getattr(request.protocol, "gone", None)
                try:
                    waited = await self.pacer.pace(route, request.method, admitted.rest, gone)
                except RateLimited as exc:
                    target.metrics.ratelimit_rejected.inc()
                    self.metrics.rejected.labels("rate_limited").inc()
                    result = envelope(
                        429,
                        f"route {route.name} is over its rate limit "
                        f"({route.rate_limit.requests_per_second:g}/s); retry after "
                        f"{exc.retry_after}s",
                        rid,
                        {"Retry-After": str(exc.retry_after)},
                    )
                    return result
                except ClientGone:
                    outcome.client_gone = True
                    result = web.StreamResponse(status=499)
                    return result
                target.metrics.ratelimit_wait.observe(waited)
            length = request.content_length
            limit = route.max_body_bytes
            if limit is not None and length is not None and length > limit:
                outcome.body_error = "body_too_large"
                self.metrics.rejected.labels("body_too_large").inc()
                _abandon_body(request)
                result = body_refusal(outcome, rid)
                return result
            assert self.session is not None
            self.metrics.in_flight.inc()
            try:
                continued = True
                await send_continue(request)  # admitted: now the client may send its body
                body_clock = target.upstream.body_clock()
                body = await read_replayable_body(
                    request, route.retry_body_limit, body_clock, outcome
                )

                async def on_unauthorized(
                    cred: Credential, replayable: bool, message: str | None
                ) -> Credential | None:
                    return await self.recovery.unauthorized(
                        route, target.tokens, target.metrics, cred, replayable, rid, message
                    )

                # The exchange holds an upstream slot until the client has the last byte.
                async with self.slots.hold(route.name, _client_key(request)):
                    result = await forward(
                        self.session,
                        request,
                        target.upstream,
                        admitted.rest,
                        admitted.query,
                        credential,
                        rid,
                        outcome,
                        admitted.public_base,
                        query_has_api_version(admitted.query[1:]) if admitted.query else False,
                        body=body if isinstance(body, bytes) else None,
                        on_unauthorized=on_unauthorized,
                        backoff=target.backoff,
                        body_clock=body_clock,
                    )
            except UpstreamBusy as exc:
                self.metrics.rejected.labels("upstream_busy").inc()
                if request.body_exists and not isinstance(body, bytes):
                    _abandon_body(request)  # its body was never read
                result = envelope(
                    503,
                    f"every upstream connection this request may use is busy "
                    f"(limits.{exc.scope}: {exc.limit}, "
                    f"waited {self.slots.queue_wait:g}s); retry shortly",
                    rid,
                    {"Retry-After": "1"},
                )
                return result
            except BodyLimit:  # stalled while its replayable body was being read
                result = body_refusal(outcome, rid)
                return result
            except (asyncio.IncompleteReadError, ConnectionError):
                outcome.client_gone = True  # the client left while sending its body
                result = web.StreamResponse(status=499)
                return result
            finally:
                self.metrics.in_flight.dec()
                if outcome.body_error is not None:
                    self.metrics.rejected.labels(outcome.body_error).inc()
                    _abandon_body(request)
            self._observe(target, outcome, rid)
            return result
        except asyncio.CancelledError:
            outcome.shutdown = True  # only the drain cancels a handler (no handler_cancellation)
            raise
        finally:
            if not continued and expects_continue(request) and request.body_exists:
                _abandon_body(request)  # refused before the 100: the body was never asked for
            target.metrics.duration.observe(asyncio.get_running_loop().time() - started)
            self._access(request, rid, admitted.log_path, target, result, outcome, started, None)

    def _observe(self, target: Target, outcome: Outcome, rid: str) -> None:
        route = target.route
        fields = {"request_id": rid, "route": route.name, "tenant": route.tenant}
        if outcome.upstream_status is not None:
            target.metrics.response(outcome.upstream_status)
        status = outcome.upstream_status or 0
        now = self.clock()
        activity = self.activity.route(route.name)
        activity.record(now, outcome.error is not None or status >= 500)
        if status:
            activity.answered(status, outcome.upstream_message, now)
        if status == 403:  # a 401 is explained by Recovery; a 403 by Amperity's own words
            held = self._repeats.admit(
                ("403", route.name),
                f"403s for route {route.name}",
                {"route": route.name, "tenant": route.tenant},
            )
            if held is not None:
                said = f': "{outcome.upstream_message}"' if outcome.upstream_message else ""
                log.warning(
                    "Amperity answered 403 for route %s (tenant %s)%s; the API key's role may "
                    "not allow this request: check its policy in %s",
                    route.name,
                    route.tenant,
                    said,
                    API_KEYS,
                    extra={"fields": fields | ({"repeated": held} if held else {})},
                )
        if outcome.error is not None:
            self.activity.upstream_error(route.name, outcome.error, now)
            target.metrics.errors[outcome.error].inc()
            held = self._repeats.admit(
                ("upstream_error", route.name, outcome.error),
                f"upstream {outcome.error} errors for route {route.name}",
                {"route": route.name, "tenant": route.tenant, "error": outcome.error},
            )
            if held is not None:
                log.warning(
                    "upstream %s error: %s",
                    outcome.error,
                    outcome.detail,
                    extra={"fields": fields | ({"repeated": held} if held else {})},
                )
        if outcome.deprecation is not None:
            target.metrics.deprecations.inc()
            if route.name not in self._deprecation_logged:  # once per route
                self._deprecation_logged.add(route.name)
                log.warning(
                    "Amperity announced a deprecation for route %s (api-version %s): %s; check "
                    "Amperity's API changelog and set api_version",
                    route.name,
                    route.api_version,
                    outcome.deprecation,
                    extra={"fields": fields},
                )

    def _access(
        self,
        request: web.BaseRequest,
        rid: str,
        path: str | None,
        target: Target | None,
        response: web.StreamResponse | None,
        outcome: Outcome,
        started: float,
        refused: str | None,
    ) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        duration = asyncio.get_running_loop().time() - started
        if path is None:
            path = request.raw_path.partition("?")[0]
        route = target.route if target is not None else None
        status = response.status if response is not None else (outcome.status_sent or 500)
        if outcome.client_gone and getattr(request.protocol, "draining", False):
            outcome.shutdown = True  # the drain closed the connection, not the client
        uid = peer_uid(request) if self.admission.gate.unix else None
        access_log.info(
            "%s %s %s",
            request.method,
            path,
            status,
            extra={
                "fields": {
                    "request_id": rid,
                    "client": f"uid:{uid}" if uid is not None else request.remote,
                    "method": request.method,
                    "route": route.name if route else None,
                    "tenant": route.tenant if route else None,
                    "path": path[:1024],
                    "status": status,
                    "upstream_status": outcome.upstream_status,
                    "error": outcome.error
                    or ("shutdown" if outcome.shutdown else None)
                    or ("client_disconnected" if outcome.client_gone else None),
                    "refused": refused,
                    "retried": outcome.retried,
                    "bytes_in": outcome.bytes_in,
                    "bytes_out": outcome.bytes_out,
                    "duration_ms": round(duration * 1000, 3),
                }
            },
        )
