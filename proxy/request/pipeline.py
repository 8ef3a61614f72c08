"""The request pipeline: the one sequencer of a proxied request, in one direction.

    admit (gate, Host/Origin, routing, policy) -> credential -> pace -> body checks
      -> upstream.forward (retry layers around single attempts, then relay) -> record

Each step either hands on or answers; nothing calls back up. The request keeps the `Target` it
was admitted with (its route generation's plan, metrics and tokens) from its first byte to its
last, so a reload can't mix one generation's token with another's upstream. What happened is
kept in one `Record`, written out once by the `Recorder`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from proxy.listener import abandon_body, client_gone, peer_uid
from proxy.observe.metrics import ProxyMetrics
from proxy.observe.record import Record, Recorder
from proxy.observe.tracing import Tracing
from proxy.refusals import Refusal, answer, internal_refusal, refuse
from proxy.request.admission import Admission, Admitted
from proxy.request.pacing import ClientGone, Pacer, RateLimited
from proxy.request.targets import Target
from proxy.tokens import Credential, TokenStore
from proxy.tokens.health import expired_refusal
from proxy.tokens.state import status_of
from proxy.upstream.bodies import (
    BodyLimit,
    body_refusal,
    expects_continue,
    read_replayable_body,
    send_continue,
)
from proxy.upstream.exchange import Outgoing
from proxy.upstream.forwarding import forward
from proxy.upstream.headers import request_id
from proxy.upstream.pool import Pool
from proxy.upstream.retry import Exchange, Retry
from proxy.upstream.slots import UpstreamBusy, UpstreamSlots

log = logging.getLogger("amperity_proxy.proxy")

# Refusals after which the connection can't carry another HTTP request.
_CLOSE_AFTER = frozenset({"connect", "upgrade"})


def client_key(request: web.BaseRequest, name: str | None = None) -> str:
    """Whose fair share an exchange counts against: its named client (`listen.clients`), else
    the client address (or the Unix peer's uid)."""
    if name:
        return f"client:{name}"
    if request.remote:
        return request.remote
    uid = peer_uid(request)
    return f"uid:{uid}" if uid is not None else "unknown"


class Pipeline:
    """The handler for every request on the proxy listener."""

    def __init__(
        self,
        admission: Admission[Target],
        store: TokenStore,
        metrics: ProxyMetrics,
        slots: UpstreamSlots,
        retry: Retry,
        recorder: Recorder,
        pacer: Pacer,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
    ) -> None:
        self.admission = admission
        self.store = store
        self.metrics = metrics
        self.slots = slots
        self.retry = retry
        self.recorder = recorder
        self.pacer = pacer
        self.tracing = tracing  # None: no spans, nothing of OpenTelemetry imported
        self.clock = clock
        self.pool: Pool | None = None  # the upstream connections, while the proxy runs

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rid = request_id(request.headers.get("X-Request-ID"))
        record = Record()
        admitted = self.admission.admit(request)
        if isinstance(admitted, Refusal):
            refused = self._refused_at_the_door(request, admitted, rid, record)
            if request.body_exists:  # never read: close (and say so), don't drain
                refused.force_close()
                abandon_body(request)
            self.recorder.access(request, rid, None, None, refused, record, loop.time() - started)
            return refused
        target = admitted.target
        if admitted.client:
            record.client_name = admitted.client
            target.metrics.client(admitted.client)
        response: web.StreamResponse | None = None
        try:
            if self.tracing is None:
                response = await self._serve(request, admitted, rid, record)
            else:
                response = await self._traced(self.tracing, request, admitted, rid, record)
            return response
        except asyncio.CancelledError:
            record.shutdown = True  # only the drain cancels a handler (no handler_cancellation)
            raise
        except Exception:
            record.error = "internal"
            if record.status_sent is not None:  # half an answer is out: aiohttp cuts it
                raise
            log.exception(
                "internal error on route %s",
                target.route.name,
                extra={"fields": {"request_id": rid, "route": target.route.name}},
            )
            response = answer(internal_refusal(500), rid)
            response.force_close()
            return response
        finally:
            if request.body_exists and not request.content.at_eof():
                # SECURITY: the rest of its body is never read, so never parsed as a request.
                if response is not None and not response.prepared:
                    response.force_close()  # `Connection: close`, so the client knows
                abandon_body(request)
            duration = loop.time() - started
            target.metrics.duration.observe(duration)
            self.recorder.access(
                request, rid, admitted.log_path, target.route, response, record, duration
            )

    async def _traced(
        self,
        tracing: Tracing,
        request: web.BaseRequest,
        admitted: Admitted[Target],
        rid: str,
        record: Record,
    ) -> web.StreamResponse:
        """`_serve` inside the request's server span (the client's trace, when it sent one)."""
        route = admitted.target.route
        attributes = {
            "http.route": f"{route.prefix}/*",
            "amperity.route": route.name,
            "amperity.tenant": route.tenant,
            "amperity.request_id": rid,
        }
        with tracing.server(request.headers, request.method, admitted.log_path, attributes) as span:
            record.trace_ids = tracing.current_ids()
            response: web.StreamResponse | None = None
            try:
                response = await self._serve(request, admitted, rid, record)
                return response
            finally:
                status = response.status if response is not None else record.status_sent
                tracing.annotate(span, status, record.error)

    def _refused_at_the_door(
        self, request: web.BaseRequest, refusal: Refusal, rid: str, record: Record
    ) -> web.Response:
        self.metrics.rejected.labels(refusal.reason).inc()
        record.refused = refusal.reason
        response = answer(refusal, rid)
        if refusal.reason in _CLOSE_AFTER:
            response.force_close()  # the client may already be sending tunnel bytes
        return response

    async def _serve(
        self, request: web.BaseRequest, admitted: Admitted[Target], rid: str, record: Record
    ) -> web.StreamResponse:
        """The admitted request: its credential, its pace and size, then the exchange."""
        target = admitted.target
        continued = False
        try:
            credential = target.tokens.credential
            if credential is None:
                message = f"route {target.route.name} has no usable token; see /readyz"
                return answer(refuse("no_token", message + " on the admin port"), rid)
            early = await self._before_body(request, admitted, credential, rid, record)
            if early is not None:
                return early
            continued = True
            response = await self._exchange(request, admitted, credential, rid, record)
            if record.upstream_status == 429:  # over Amperity's budget: every process pauses
                route, method = admitted.target.route, request.method
                await self.pacer.pause(route, method, admitted.rest, record.retry_after)
            return response
        finally:
            if not continued and expects_continue(request) and request.body_exists:
                abandon_body(request)  # refused before the 100: the body was never asked for

    async def _before_body(
        self,
        request: web.BaseRequest,
        admitted: Admitted[Target],
        credential: Credential,
        rid: str,
        record: Record,
    ) -> web.StreamResponse | None:
        """Checks made before the client may send its body: an answer, or None to go on."""
        route, target = admitted.target.route, admitted.target
        if route.expired_token == "reject" and credential.expired(self.clock()):  # noqa: S105 (a policy name)
            refusal = expired_refusal(route, status_of(target.tokens), self.clock())
            if refusal is not None:
                return self._refuse(refusal, rid)
        if route.rate_limit is not None:
            # Before the body is read: a queued request holds no body in memory.
            try:
                waited = await self.pacer.pace(
                    route, request.method, admitted.rest, client_gone(request)
                )
            except RateLimited as exc:
                target.metrics.ratelimit_rejected.inc()
                message = (
                    f"route {route.name} is over its rate limit "
                    f"({route.rate_limit.requests_per_second:g}/s); retry after "
                    f"{exc.retry_after}s"
                )
                headers = {"Retry-After": str(exc.retry_after)}
                return self._refuse(refuse("rate_limited", message, headers), rid)
            except ClientGone:
                record.client_gone = True
                return web.StreamResponse(status=499)
            target.metrics.ratelimit_wait.observe(waited)
        length, limit = request.content_length, route.max_body_bytes
        if limit is not None and length is not None and length > limit:
            record.body_error = "body_too_large"
            self.metrics.rejected.labels("body_too_large").inc()
            abandon_body(request)
            return body_refusal(record, rid)
        return None

    def _refuse(self, refusal: Refusal, rid: str) -> web.Response:
        self.metrics.rejected.labels(refusal.reason).inc()
        return answer(refusal, rid)

    async def _exchange(
        self,
        request: web.BaseRequest,
        admitted: Admitted[Target],
        credential: Credential,
        rid: str,
        record: Record,
    ) -> web.StreamResponse:
        """Read a replayable body, hold an upstream slot, forward; count what broke."""
        target = admitted.target
        plan = target.plan
        body: bytes | bool = False
        self.metrics.in_flight.inc()
        try:
            await send_continue(request)  # admitted: now the client may send its body
            body_clock = plan.body_clock()
            body = await read_replayable_body(request, plan.retry_body_limit, body_clock, record)
            kept = body if isinstance(body, bytes) else None
            outgoing = Outgoing.of(request, plan, admitted.rest, admitted.query, rid, kept)
            exchange = Exchange(plan, target.tokens, target.metrics, rid, kept is not None)
            assert self.pool is not None
            async with self.slots.hold(plan.name, client_key(request, admitted.client)):
                response = await forward(
                    self.pool,
                    self.retry,
                    request,
                    exchange,
                    outgoing,
                    credential,
                    admitted.public_base,
                    record,
                    body_clock,
                    self.tracing,
                )
        except UpstreamBusy as exc:
            if request.body_exists and not isinstance(body, bytes):
                abandon_body(request)  # its body was never read
            return self._refuse(self._busy(exc), rid)
        except BodyLimit:  # stalled while its replayable body was being read
            return body_refusal(record, rid)
        except (asyncio.IncompleteReadError, ConnectionError):
            record.client_gone = True  # the client left while sending its body
            return web.StreamResponse(status=499)
        finally:
            self.metrics.in_flight.dec()
            if record.body_error is not None:
                self.metrics.rejected.labels(record.body_error).inc()
                abandon_body(request)
        self.recorder.exchanged(target.route, target.metrics, record, rid)
        return response

    def _busy(self, exc: UpstreamBusy) -> Refusal:
        return refuse(
            "upstream_busy",
            f"every upstream connection this request may use is busy (limits.{exc.scope}: "
            f"{exc.limit}, waited {self.slots.queue_wait:g}s); retry shortly",
            {"Retry-After": "1"},
        )
