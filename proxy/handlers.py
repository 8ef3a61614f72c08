"""Request handlers: the proxy, and the admin endpoints (/healthz, /livez, /readyz, /metrics).

Request path, one direction: admission (who may ask, which route) → credential → forward →
response, with a `finally` that records metrics and writes the access-log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.access import peer_uid
from proxy.admit import Admission
from proxy.config import Route
from proxy.errors import Refusal, envelope
from proxy.forward import Outcome, Upstream, forward
from proxy.headers import query_has_api_version, request_id
from proxy.metrics import ProxyMetrics, RouteMetrics
from proxy.tokens import Credential, TokenStore, in_words

access_log = logging.getLogger("amperity_proxy.access")
log = logging.getLogger("amperity_proxy.proxy")

# Refusals after which the connection can't carry another HTTP request.
_CLOSE_AFTER = frozenset({"connect", "upgrade"})


@dataclass(frozen=True, slots=True)
class Target:
    """What a route maps to: the upstream, the route's bound metrics, its forward-mode base."""

    upstream: Upstream
    metrics: RouteMetrics
    forward_base: str  # http://<base host>[:port]<base path>: a forward-mode client's view

    @property
    def route(self) -> Route:
        return self.upstream.route


class Lifecycle:
    """Process state the admin endpoints report: set to draining on SIGTERM."""

    def __init__(self) -> None:
        self.draining = False
        self.started_at = time.time()


class ProxyHandler:
    """The handler for every request on the proxy listener."""

    def __init__(
        self, admission: Admission[Target], store: TokenStore, metrics: ProxyMetrics
    ) -> None:
        self.admission = admission
        self.store = store
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None  # set while the proxy runs

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
            self._access(request, rid, None, None, response, outcome, started, admitted.reason)
            return response
        target = admitted.target
        route = target.route
        result: web.StreamResponse | None = None
        try:
            credential = self.store.credential(route.name)
            if credential is None:
                result = envelope(
                    503,
                    f"route {route.name} has no usable token; see /readyz on the admin port",
                    rid,
                )
                return result
            assert self.session is not None
            self.metrics.in_flight.inc()
            try:
                result = await forward(
                    self.session,
                    request,
                    target.upstream,
                    admitted.rest,
                    admitted.query,
                    credential.authorization,
                    rid,
                    outcome,
                    admitted.public_base,
                    query_has_api_version(admitted.query[1:]) if admitted.query else False,
                )
            finally:
                self.metrics.in_flight.dec()
            self._observe(target, credential, outcome, rid)
            return result
        finally:
            target.metrics.duration.observe(asyncio.get_running_loop().time() - started)
            self._access(request, rid, admitted.log_path, target, result, outcome, started, None)

    def _observe(self, target: Target, credential: Credential, outcome: Outcome, rid: str) -> None:
        route = target.route
        if outcome.upstream_status is not None:
            target.metrics.response(outcome.upstream_status)
        if outcome.error is not None:
            target.metrics.errors[outcome.error].inc()
            log.warning(
                "upstream %s error: %s",
                outcome.error,
                outcome.detail,
                extra={"fields": {"request_id": rid, "route": route.name, "tenant": route.tenant}},
            )
        if outcome.upstream_status == 401:
            now = time.time()
            expiry = credential.expires_at
            if expiry is None:
                expires = "no exp claim"
            elif expiry <= now:
                expires = f"expired {in_words(now - expiry)} ago"
            else:
                expires = f"expires in {in_words(expiry - now)}"
            log.warning(
                "Amperity answered 401 for route %s (tenant %s, token %s, age %s, %s); "
                "generate a new token in Settings > Security > API keys, "
                "or rotate the token source (%s)",
                route.name,
                route.tenant,
                credential.fingerprint,
                in_words(credential.age(now)),
                expires,
                route.token.describe(),
                extra={
                    "fields": {
                        "request_id": rid,
                        "route": route.name,
                        "tenant": route.tenant,
                        "fingerprint": credential.fingerprint,
                        "token_age_seconds": round(credential.age(now)),
                        "token_expires_at": expiry,
                    }
                },
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
        status = response.status if response is not None else 500
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
                    or ("client_disconnected" if outcome.client_gone else None),
                    "refused": refused,
                    "bytes_in": outcome.bytes_in,
                    "bytes_out": outcome.bytes_out,
                    "duration_ms": round(duration * 1000, 3),
                }
            },
        )


class AdminHandlers:
    """Health, readiness and metrics for the admin listener."""

    def __init__(
        self, store: TokenStore, registry: CollectorRegistry, lifecycle: Lifecycle
    ) -> None:
        self.store = store
        self.registry = registry
        self.lifecycle = lifecycle

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        now = time.time()
        routes = []
        for status in self.store.snapshot():
            cred = status.credential
            routes.append(
                {
                    "route": status.route,
                    "tenant": status.tenant,
                    "state": status.state(now),
                    "expires_at": cred.expires_at if cred else None,
                    "fingerprint": cred.fingerprint if cred else None,
                    "source": status.source,
                    "failing": status.failing,
                }
            )
        # An expired token is reported but does not make the pod unready: readiness gates the
        # whole pod, and an Amperity token problem must not take the application down with it.
        has_tokens = all(r["state"] != "missing" for r in routes)
        ready = has_tokens and not self.lifecycle.draining
        body = {
            "ready": ready,
            "draining": self.lifecycle.draining,
            "routes": routes,
        }
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        output = generate_latest(self.registry)
        return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})
