"""Request handlers: the proxy, and the admin endpoints (/healthz, /livez, /readyz, /metrics).

Request path, one direction: check target → match route → credential → forward → response,
with a `finally` that records metrics and writes the access-log line.
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

from proxy.errors import envelope
from proxy.forward import Outcome, Upstream, forward
from proxy.headers import query_has_api_version, request_id
from proxy.metrics import ProxyMetrics, RouteMetrics
from proxy.routing import RouteTable, path_problem
from proxy.tokens import Credential, TokenStore

access_log = logging.getLogger("amperity_proxy.access")
log = logging.getLogger("amperity_proxy.proxy")

_MAX_ECHOED_PATH = 200


@dataclass(frozen=True, slots=True)
class Target:
    """What a route prefix maps to: the upstream and the route's bound metrics."""

    upstream: Upstream
    metrics: RouteMetrics


class Lifecycle:
    """Process state the admin endpoints report: set to draining on SIGTERM."""

    def __init__(self) -> None:
        self.draining = False
        self.started_at = time.time()


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.1f}d"


class ProxyHandler:
    """The catch-all handler on the proxy listener."""

    def __init__(self, table: RouteTable[Target], store: TokenStore, metrics: ProxyMetrics) -> None:
        self.table = table
        self.store = store
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None  # set by the app's cleanup context
        self._prefixes = ", ".join(table.prefixes)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        rid = request_id(request.headers.get("X-Request-ID"))
        raw = request.raw_path
        path, sep, query = raw.partition("?")
        target: Target | None = None
        outcome = Outcome()
        response: web.StreamResponse | None = None
        try:
            if not raw.startswith("/"):
                response = self._reject(
                    400,
                    "bad_target",
                    "absolute-form or '*' request targets are not supported; point the tool at "
                    "http://<proxy host:port>/<route prefix>/<API path>",
                    rid,
                )
                return response
            problem = path_problem(path)
            if problem is not None:
                response = self._reject(400, "bad_path", f"refused path: {problem}", rid)
                return response
            match = self.table.match(path)
            if match is None:
                shown = path if len(path) <= _MAX_ECHOED_PATH else path[:_MAX_ECHOED_PATH] + "..."
                response = self._reject(
                    404,
                    "no_route",
                    f"no route for {shown}; configured prefixes: {self._prefixes}",
                    rid,
                )
                return response
            target = match.target
            route = target.upstream.route
            credential = self.store.credential(route.name)
            if credential is None:
                response = envelope(
                    503,
                    f"route {route.name} has no usable token; see /readyz on the admin port",
                    rid,
                )
                return response
            assert self.session is not None
            self.metrics.in_flight.inc()
            try:
                response = await forward(
                    self.session,
                    request,
                    target.upstream,
                    match.rest,
                    sep + query,
                    credential.authorization,
                    rid,
                    outcome,
                    query_has_api_version(query) if query else False,
                )
            finally:
                self.metrics.in_flight.dec()
            self._observe(target, credential, outcome, rid)
            return response
        finally:
            duration = asyncio.get_running_loop().time() - started
            if target is not None:
                target.metrics.duration.observe(duration)
            self._access(request, rid, path, target, response, outcome, duration)

    def _reject(self, status: int, reason: str, message: str, rid: str) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        return envelope(status, message, rid)

    def _observe(self, target: Target, credential: Credential, outcome: Outcome, rid: str) -> None:
        route = target.upstream.route
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
                expires = f"expired {_days(now - expiry)} ago"
            else:
                expires = f"expires in {_days(expiry - now)}"
            log.warning(
                "Amperity answered 401 for route %s (tenant %s, token %s, age %s, %s); "
                "generate a new token in Settings > Security > API keys, "
                "or rotate the token source (%s)",
                route.name,
                route.tenant,
                credential.fingerprint,
                _days(credential.age(now)),
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
        request: web.Request,
        rid: str,
        path: str,
        target: Target | None,
        response: web.StreamResponse | None,
        outcome: Outcome,
        duration: float,
    ) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        route = target.upstream.route if target is not None else None
        status = response.status if response is not None else 500
        access_log.info(
            "%s %s %s",
            request.method,
            path,
            status,
            extra={
                "fields": {
                    "request_id": rid,
                    "client": request.remote,
                    "method": request.method,
                    "route": route.name if route else None,
                    "tenant": route.tenant if route else None,
                    "path": path[:1024],
                    "status": status,
                    "upstream_status": outcome.upstream_status,
                    "error": outcome.error
                    or ("client_disconnected" if outcome.client_gone else None),
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
