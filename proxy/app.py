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
import os
import signal
import socket
import ssl
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry

from proxy import __version__
from proxy.access import Gate
from proxy.admit import Admission
from proxy.config import Config, Route
from proxy.forward import Upstream
from proxy.handlers import AdminHandlers, Lifecycle, ProxyHandler, Target
from proxy.listen_config import Listen, UnixListen
from proxy.metrics import ProxyMetrics, StateCollector, TokenCollector
from proxy.routing import HostEntry, HostTable, RouteTable
from proxy.tokens import TokenError, TokenStore, make_sources, read_source
from proxy.tokens.store import FILE_POLL_INTERVAL

log = logging.getLogger("amperity_proxy")


TICK_INTERVAL = 1.0  # seconds between token scheduler rounds (file polls, refreshes, warnings)


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


class ProxyApp:
    """The proxy's parts, built by `create_app`. `startup`/`cleanup` own the upstream
    ClientSession and the token poller; `handle` serves every request (via `web.Server`)."""

    def __init__(
        self,
        config: Config,
        handler: ProxyHandler,
        store: TokenStore,
        registry: CollectorRegistry,
        resolver: AbstractResolver | None,
        tick_interval: float,
        ssl_contexts: dict[str, ssl.SSLContext],
    ) -> None:
        self.config = config
        self.ssl_contexts = ssl_contexts  # route name -> the context its upstream uses
        self.handler = handler
        self.store = store
        self.registry = registry
        self.lifecycle = Lifecycle()
        self._resolver = resolver
        self._tick_interval = tick_interval
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self._session

    async def startup(self, *, strict: bool = True) -> list[str]:
        """Open the upstream session, load every route's tokens, then start the token
        scheduler. `strict` (serving): a route without a token is a StartupError (fail fast).
        Otherwise (diagnostics) the problems are returned and nothing runs in the background."""
        connector = aiohttp.TCPConnector(
            resolver=self._resolver, limit=100, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # never store or replay upstream cookies
            auto_decompress=False,  # compressed bodies pass through byte for byte
            trust_env=False,  # SECURITY: the proxy's own HTTP_PROXY must not redirect tokens
            timeout=aiohttp.ClientTimeout(total=None),  # per-route timeouts are set per request
            # Send only what the client sent: no default Accept/Accept-Encoding/User-Agent.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        self.handler.session = self._session
        errors = await self.store.load_initial()
        if not strict:
            return errors
        if errors:
            await self.cleanup()
            raise StartupError(errors)
        self._poller = asyncio.create_task(self.store.run(self._tick_interval), name="tokens")
        return []

    async def cleanup(self) -> None:
        """Stop the poller and close the session (after in-flight requests finished)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._session is not None:
            self.handler.session = None
            await self._session.close()
            self._session = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self.handler.handle(request)

    def server(self) -> web.Server:
        """A low-level server for every request. Not an Application: the proxy must see
        CONNECT and `OPTIONS *`, which aiohttp's router would answer itself with a plain 404."""
        return web.Server(self.handle, access_log=None)


def create_app(
    config: Config,
    *,
    upstream_ssl: ssl.SSLContext | None = None,
    resolver: AbstractResolver | None = None,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
    token_poll_interval: float = FILE_POLL_INTERVAL,
    clock: Callable[[], float] = time.time,
) -> ProxyApp:
    """Build the proxy (tokens load in `ProxyApp.startup`); raise StartupError when the client
    token or a ca_file can't be loaded."""
    for warning in config.warnings:
        log.warning("config: %s", warning)
    environment = os.environ if env is None else env
    errors = []
    client_token = None
    if config.listen.client_token is not None:
        try:
            client_token = read_source(config.listen.client_token, environment).strip()
        except TokenError as exc:
            errors.append(f"listen.client_token: {exc}")
    if errors:
        raise StartupError(errors)
    contexts = _ssl_contexts(config) if upstream_ssl is None else {}

    def ssl_for(route: Route) -> ssl.SSLContext:
        return upstream_ssl if upstream_ssl is not None else contexts[route.ca_file]

    app: ProxyApp | None = None

    def session() -> aiohttp.ClientSession | None:
        return app.session if app is not None else None

    store = TokenStore(
        config.routes,
        lambda route: make_sources(route, env=environment, session=session, ssl=ssl_for(route)),
        clock=clock,
        file_poll_interval=token_poll_interval,
    )
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ProxyMetrics(registry, __version__)
    registry.register(TokenCollector(store.snapshot))
    prefixes, hosts = [], []
    for route in config.routes:
        base = route.base_url
        target = Target(
            Upstream.from_route(route, ssl_for(route)),
            metrics.for_route(route.name, route.tenant),
            # A forward-mode client writes http:// with the base URL's host (and its port
            # when it is not the default): that is where rewritten Locations point.
            forward_base=f"http://{base.host_header}{base.path}",
        )
        prefixes.append((route.prefix, target))
        hosts.append(
            HostEntry(base.host, base.port, base.default_port, base.path, route.tenant, target)
        )
    admission = Admission(Gate(config.listen, client_token), RouteTable(prefixes), HostTable(hosts))
    handler = ProxyHandler(admission, store, metrics, clock)
    app = ProxyApp(
        config,
        handler,
        store,
        registry,
        resolver,
        min(TICK_INTERVAL, token_poll_interval),
        {route.name: ssl_for(route) for route in config.routes},
    )
    lifecycle = app.lifecycle
    registry.register(
        StateCollector(
            lambda: lifecycle.ready(store),
            lambda: (lifecycle.reload_successful, lifecycle.reload_success_at),
        )
    )
    return app


def create_admin_app(proxy: ProxyApp) -> web.Application:
    """The admin application (/healthz, /livez, /readyz, /metrics) for a proxy."""
    handlers = AdminHandlers(proxy.store, proxy.registry, proxy.lifecycle)
    admin = web.Application()
    admin.router.add_get("/healthz", handlers.healthz)
    admin.router.add_get("/livez", handlers.healthz)
    admin.router.add_get("/readyz", handlers.readyz)
    admin.router.add_get("/metrics", handlers.metrics)
    return admin


def _unix_socket(unix: UnixListen) -> socket.socket:
    """A listening Unix socket whose file has exactly `unix.mode` permissions."""
    path = Path(unix.path)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise StartupError([f"listen.unix.path: {path} exists and is not a socket"])
        path.unlink()  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # SECURITY: bind with owner-only permissions, then widen to the configured mode, so the
    # socket is never reachable by more users than the config allows.
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError([f"cannot listen on unix:{path}: {exc.strerror or exc}"]) from None
    finally:
        os.umask(old_umask)
    os.chmod(path, unix.mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _start_site(runner: web.BaseRunner, listen: Listen, what: str) -> list[str]:
    if listen.unix is not None:
        await web.SockSite(runner, _unix_socket(listen.unix)).start()
        return [f"unix:{listen.unix.path}"]
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError([f"cannot listen on {listen} ({what}): {exc.strerror or exc}"]) from None
    sockets = getattr(site._server, "sockets", None) or []
    return [
        f"[{s.getsockname()[0]}]:{s.getsockname()[1]}"
        if s.family == socket.AF_INET6
        else f"{s.getsockname()[0]}:{s.getsockname()[1]}"
        for s in sockets
    ]


async def serve(config: Config, *, env: Mapping[str, str] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain in-flight requests; return the exit code."""
    app = create_app(config, env=env)
    admin = create_admin_app(app)
    await app.startup()
    runner = web.ServerRunner(
        app.server(),
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout,
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
        app.lifecycle.draining = True
        log.info(
            "shutting down: /readyz is 503, finishing in-flight requests (up to %ss)",
            config.shutdown_timeout,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    finally:
        # Stops accepting, waits for in-flight requests up to shutdown_timeout.
        await runner.cleanup()
        await app.cleanup()
        await admin_runner.cleanup()
        if config.listen.unix is not None:
            with contextlib.suppress(OSError):
                os.unlink(config.listen.unix.path)
    log.info("stopped")
    return 0
