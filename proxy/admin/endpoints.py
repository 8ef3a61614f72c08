"""The admin listener's endpoints: health, readiness, metrics, the status page, reload.

Served on a separate port (loopback by default) by the same guarded low-level server as the
proxy (header deadline, connection cap, enveloped parse errors), behind `AdminGate` (Host,
browser and client checks). Nothing here ever shows a token, a secret or a request path.

| path | method | who may see it |
|---|---|---|
| /healthz, /livez | GET | anyone past the Host and browser checks (the kubelet) |
| /readyz | GET | the same; the full per-token view only to `admin.allow_clients` |
| /metrics | GET | the same (Prometheus on the pod IP); labels name routes and tenants, never files |
| /, /status.json | GET | `admin.allow_clients` only |
| /-/reload | POST | `admin.allow_clients`, with `Content-Type: application/json`, when enabled |
| /quitquitquit | POST | the same guards as reload, when `admin.enable_quit` |
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.admin.document import status_document
from proxy.admin.page import render
from proxy.config import Config, Route
from proxy.gate import AdminGate
from proxy.observe.activity import Activity
from proxy.observe.exposition import Exposition
from proxy.refusals import Refusal, envelope, refuse
from proxy.tokens import TokenStore
from proxy.upstream.headers import request_id

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

_PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

log = logging.getLogger("amperity_proxy")


class Lifecycle:
    """Process state the admin endpoints report: draining on SIGTERM, the last config reload."""

    def __init__(self) -> None:
        self.draining = False
        self.quit = asyncio.Event()  # POST /quitquitquit: drain and exit, as on SIGTERM
        self.started_at = time.time()
        self.reload_successful = True
        self.reload_success_at = self.started_at
        self.reload_errors: list[str] = []
        self.restart_pending: list[str] = []  # settings a reload changed that need a restart

    def ready(self, store: TokenStore) -> bool:
        """Not draining, and every route has a token. An expired token does not make the pod
        unready: readiness gates the whole pod, and an Amperity token problem must not take
        the application down with it."""
        return not self.draining and all(s.current is not None for s in store.snapshot())

    def reloaded(self) -> None:
        self.reload_successful = True
        self.reload_success_at = time.time()
        self.reload_errors = []

    def rejected(self, errors: list[str]) -> list[str]:
        """A reload was refused: the running config stays; say why, once."""
        self.reload_successful = False
        self.reload_errors = list(errors)
        log.error(
            "config reload rejected, the running config is kept: %s",
            "; ".join(errors),
            extra={"fields": {"errors": errors}},
        )
        return errors


class AdminHandlers:
    """Health, readiness, metrics, the status page and reload for the admin listener."""

    def __init__(
        self,
        store: TokenStore,
        exposition: Exposition,
        lifecycle: Lifecycle,
        activity: Activity,
        config: Callable[[], Config],
        reload: Callable[[str], Awaitable[list[str]]],
        gate: AdminGate,
        reject: Callable[[str], None],
        limiter: Callable[[Route], str] = lambda route: "local",
    ) -> None:
        self.store = store
        self.limiter = limiter  # a route's rate-limit mode now: local, shared or fallback
        self.exposition = exposition
        self.lifecycle = lifecycle
        self.activity = activity
        self.config = config
        self._reload = reload

        self.gate = gate
        self._reject = reject  # counts refusals in amperity_proxy_rejected_requests_total
        # path -> (method, handler, sensitive): a table, not a router; built once.
        self._table: dict[str, tuple[str, Handler, bool]] = {
            "/": ("GET", self.status_html, True),
            "/status.json": ("GET", self.status_json, True),
            "/healthz": ("GET", self.healthz, False),
            "/livez": ("GET", self.healthz, False),
            "/readyz": ("GET", self.readyz, False),
            "/metrics": ("GET", self.metrics, False),
            "/-/reload": ("POST", self.reload, True),
            "/quitquitquit": ("POST", self.quitquitquit, True),
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every admin request: the gate's checks, then the endpoint."""
        rid = request_id(request.headers.get("X-Request-ID"))
        entry = self._table.get(request.path)
        refusal = self._check(request, entry)
        if refusal is not None:
            self._reject(refusal.reason)
            return envelope(refusal.status, refusal.message, rid, refusal.headers)
        assert entry is not None
        return await entry[1](request)

    def _check(
        self, request: web.BaseRequest, entry: tuple[str, Handler, bool] | None
    ) -> Refusal | None:
        gate = self.gate
        refusal = gate.host(request) or gate.browser(request)
        if refusal is not None:
            return refusal
        if entry is None:
            return refuse("no_route", f"no admin endpoint {request.path[:100]}; see /")
        method, _, sensitive = entry
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            return refuse("unsupported_method", f"{request.path} answers {method} only")
        if sensitive:
            refusal = gate.client(request.remote)
            if refusal is not None:
                return refusal
        if method == "POST" and request.content_type != "application/json":
            # SECURITY: a cross-site form or `fetch` can't send this content type without a
            # CORS preflight, which the admin port never answers.
            return refuse(
                "bad_content_type",
                f"{request.path} needs Content-Type: application/json (e.g. curl -X POST "
                "-H 'Content-Type: application/json' ...)",
            )
        return None

    def _full_view(self, request: web.BaseRequest) -> bool:
        return self.gate.client(request.remote) is None

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        now = time.time()
        # warn=0: readiness reports ok/expired/missing, not "expiring" (that is for alerts).
        routes = [status.as_dict(now, warn=0) for status in self.store.snapshot()]
        for route in routes:  # detail only: a refused token must not take the pod out
            if route["state"] == "ok" and self.activity.route(str(route["route"])).refused:
                route["state"] = "refused"
        if not self._full_view(request):
            # The kubelet on the pod IP: status per route, no file paths, subjects or errors.
            routes = [
                {"route": r["route"], "tenant": r["tenant"], "ok": r["state"] == "ok"}
                for r in routes
            ]
        ready = self.lifecycle.ready(self.store)
        body = {"ready": ready, "draining": self.lifecycle.draining, "routes": routes}
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        output = self.exposition.latest()
        return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def document(self) -> dict[str, Any]:
        life = self.lifecycle
        return status_document(
            self.config(),
            self.store.snapshot(),
            self.activity,
            started_at=life.started_at,
            ready=life.ready(self.store),
            draining=life.draining,
            limiter=self.limiter,
            reload={
                "successful": life.reload_successful,
                "at": life.reload_success_at,
                "errors": life.reload_errors,
                "restart_needed": life.restart_pending,
            },
        )

    async def status_json(self, request: web.BaseRequest) -> web.Response:
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": "default-src 'none'"}
        return web.json_response(self.document(), headers=headers)

    async def status_html(self, request: web.BaseRequest) -> web.Response:
        html, csp = render(self.document())
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": csp}
        return web.Response(text=html, content_type="text/html", headers=headers)

    async def quitquitquit(self, request: web.BaseRequest) -> web.Response:
        """A Job's main container is done: drain (requests in flight finish) and exit 0."""
        if not self.config().admin_settings.enable_quit:
            message = "POST /quitquitquit is off; set admin.enable_quit: true"
            return web.json_response({"status": 403, "message": message}, status=403)
        self.lifecycle.quit.set()
        message = "shutting down: requests in flight finish, then the process exits"
        return web.json_response({"status": 200, "message": message})

    async def reload(self, request: web.BaseRequest) -> web.Response:
        if not self.config().enable_reload:
            return web.json_response(
                {"status": 403, "message": "POST /-/reload is off; set admin.enable_reload: true"},
                status=403,
            )
        errors = await self._reload("POST /-/reload")
        if errors:
            return web.json_response({"status": 400, "errors": errors}, status=400)
        pending = self.lifecycle.restart_pending
        if pending:
            message = "config reloaded; these settings apply only after a restart: " + ", ".join(
                pending
            )
            return web.json_response({"status": 200, "message": message, "restart_needed": pending})
        return web.json_response({"status": 200, "message": "config reloaded"})
