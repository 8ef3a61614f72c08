"""The admin listener's endpoints: health, readiness, metrics, the status page, reload.

Served on a separate port (loopback by default) from a regular aiohttp Application; nothing here
ever shows a token, a secret or a request path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.config import Config
from proxy.status import Activity, status_document
from proxy.status_page import render
from proxy.tokens import TokenStore

_PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class Lifecycle:
    """Process state the admin endpoints report: draining on SIGTERM, the last config reload."""

    def __init__(self) -> None:
        self.draining = False
        self.started_at = time.time()
        self.reload_successful = True
        self.reload_success_at = self.started_at
        self.reload_errors: list[str] = []

    def ready(self, store: TokenStore) -> bool:
        """Not draining, and every route has a token. An expired token does not make the pod
        unready: readiness gates the whole pod, and an Amperity token problem must not take
        the application down with it."""
        return not self.draining and all(s.current is not None for s in store.snapshot())


class AdminHandlers:
    """Health, readiness, metrics, the status page and reload for the admin listener."""

    def __init__(
        self,
        store: TokenStore,
        registry: CollectorRegistry,
        lifecycle: Lifecycle,
        activity: Activity,
        config: Callable[[], Config],
        reload: Callable[[str], Awaitable[list[str]]],
    ) -> None:
        self.store = store
        self.registry = registry
        self.lifecycle = lifecycle
        self.activity = activity
        self.config = config
        self._reload = reload

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.status_html)
        app.router.add_get("/status.json", self.status_json)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/livez", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/-/reload", self.reload)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        now = time.time()
        # warn=0: readiness reports ok/expired/missing, not "expiring" (that is for alerts).
        routes = [status.as_dict(now, warn=0) for status in self.store.snapshot()]
        ready = self.lifecycle.ready(self.store)
        body = {"ready": ready, "draining": self.lifecycle.draining, "routes": routes}
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        output = generate_latest(self.registry)
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
            reload={
                "successful": life.reload_successful,
                "at": life.reload_success_at,
                "errors": life.reload_errors,
            },
        )

    async def status_json(self, request: web.Request) -> web.Response:
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": "default-src 'none'"}
        return web.json_response(self.document(), headers=headers)

    async def status_html(self, request: web.Request) -> web.Response:
        html, csp = render(self.document())
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": csp}
        return web.Response(text=html, content_type="text/html", headers=headers)

    async def reload(self, request: web.Request) -> web.Response:
        if not self.config().enable_reload:
            return web.json_response(
                {"status": 403, "message": "POST /-/reload is off; set admin.enable_reload: true"},
                status=403,
            )
        errors = await self._reload("POST /-/reload")
        if errors:
            return web.json_response({"status": 400, "errors": errors}, status=400)
        return web.json_response({"status": 200, "message": "config reloaded"})
