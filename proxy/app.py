"""The composition root: builds every part from a Config and runs the two listeners.

`create_app` loads the tokens (failing fast), precomputes upstreams, SSL contexts, the route
table and metric children, and owns the ClientSession and the token poller through
`cleanup_ctx`. Its keyword arguments are the test seams. `serve` runs the proxy and admin
listeners and drains on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry

from proxy import __version__
from proxy.config import Config, Listen
from proxy.forward import Upstream
from proxy.handlers import AdminHandlers, Lifecycle, ProxyHandler, Target
from proxy.metrics import ProxyMetrics, TokenCollector
from proxy.routing import RouteTable
from proxy.tokens import TokenStore

log = logging.getLogger("amperity_proxy")

STORE = web.AppKey("store", TokenStore)
REGISTRY = web.AppKey("registry", CollectorRegistry)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
HANDLER = web.AppKey("handler", ProxyHandler)
POLLER = web.AppKey("poller", asyncio.Task[None])

TOKEN_POLL_INTERVAL = 5.0  # seconds between re-reads of file tokens


class StartupError(Exception):
    """The proxy cannot start; `lines` are printed one per line, without a traceback."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def _ssl_contexts(config: Config) -> dict[str | None, ssl.SSLContext]:
    """One verifying SSL context per distinct ca_file (None = system CAs)."""
    contexts: dict[str | None, ssl.SSLContext] = {}
    for route in config.routes:
        if route.ca_file in contexts:
            continue
        # SECURITY: create_default_context verifies certificates and host names; nothing
        # here can turn that off. ca_file only adds trust anchors.
        context = ssl.create_default_context()
        if route.ca_file is not None:
            try:
                context.load_verify_locations(cafile=route.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(
                    [f"route {route.name}: cannot load ca_file {route.ca_file}: {exc}"]
                ) from None
        contexts[route.ca_file] = context
    return contexts


def create_app(
    config: Config,
    *,
    upstream_ssl: ssl.SSLContext | None = None,
    resolver: AbstractResolver | None = None,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
    token_poll_interval: float = TOKEN_POLL_INTERVAL,
) -> web.Application:
    """Build the proxy application; raise StartupError when a route has no loadable token."""
    for warning in config.warnings:
        log.warning("config: %s", warning)
    store = TokenStore(config.routes, env=env)
    errors = store.load_initial()
    if errors:
        raise StartupError(errors)
    contexts = _ssl_contexts(config) if upstream_ssl is None else {}
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ProxyMetrics(registry, __version__)
    registry.register(TokenCollector(store.snapshot))
    targets = []
    for route in config.routes:
        context = upstream_ssl if upstream_ssl is not None else contexts[route.ca_file]
        upstream = Upstream.from_route(route, context)
        targets.append(
            (route.prefix, Target(upstream, metrics.for_route(route.name, route.tenant)))
        )
    handler = ProxyHandler(RouteTable(targets), store, metrics)

    app = web.Application()
    app[STORE] = store
    app[REGISTRY] = registry
    app[LIFECYCLE] = Lifecycle()
    app[HANDLER] = handler
    app.router.add_route("*", "/{tail:.*}", handler.handle)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(resolver=resolver, limit=100, enable_cleanup_closed=True)
        async with aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # never store or replay upstream cookies
            auto_decompress=False,  # compressed bodies pass through byte for byte
            trust_env=False,  # SECURITY: the proxy's own HTTP_PROXY must not redirect tokens
            timeout=aiohttp.ClientTimeout(total=None),  # per-route timeouts are set per request
            # Send only what the client sent: no default Accept/Accept-Encoding/User-Agent.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        ) as session:
            handler.session = session
            yield
            handler.session = None

    async def poller_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(store.run(token_poll_interval), name="token-poller")
        app[POLLER] = task
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(session_ctx)
    app.cleanup_ctx.append(poller_ctx)
    return app


def create_admin_app(proxy_app: web.Application) -> web.Application:
    """The admin application (/healthz, /livez, /readyz, /metrics) for a proxy app."""
    handlers = AdminHandlers(proxy_app[STORE], proxy_app[REGISTRY], proxy_app[LIFECYCLE])
    admin = web.Application()
    admin.router.add_get("/healthz", handlers.healthz)
    admin.router.add_get("/livez", handlers.healthz)
    admin.router.add_get("/readyz", handlers.readyz)
    admin.router.add_get("/metrics", handlers.metrics)
    return admin


async def _start_site(runner: web.AppRunner, listen: Listen, what: str) -> list[str]:
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError([f"cannot listen on {listen} ({what}): {exc.strerror or exc}"]) from None
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return [
        f"[{s.getsockname()[0]}]:{s.getsockname()[1]}"
        if s.family.name == "AF_INET6"
        else f"{s.getsockname()[0]}:{s.getsockname()[1]}"
        for s in sockets
    ]


async def serve(config: Config, *, env: Mapping[str, str] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain in-flight requests; return the exit code."""
    app = create_app(config, env=env)
    admin = create_admin_app(app)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_timeout
    )
    admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await admin_runner.setup()
    try:
        proxy_addrs = await _start_site(runner, config.listen, "proxy")
        admin_addrs = await _start_site(admin_runner, config.admin, "admin")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "amperity-proxy %s listening on %s (admin on %s), routes: %s",
            __version__,
            ", ".join(proxy_addrs),
            ", ".join(admin_addrs),
            ", ".join(f"{r.prefix} -> {r.base_url} ({r.tenant})" for r in config.routes),
            extra={"fields": {"listen": proxy_addrs, "admin": admin_addrs}},
        )
        await stop.wait()
        app[LIFECYCLE].draining = True
        log.info(
            "shutting down: /readyz is 503, finishing in-flight requests (up to %ss)",
            config.shutdown_timeout,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    finally:
        # Stops accepting, waits for in-flight requests up to shutdown_timeout, closes the session.
        await runner.cleanup()
        await admin_runner.cleanup()
    log.info("stopped")
    return 0
