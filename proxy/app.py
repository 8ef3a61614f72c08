"""The composition root: builds every part from a Config, and rebuilds them on a reload.

`ProxyApp` precomputes upstreams, SSL contexts, the route and host tables and metric children;
`startup`/`cleanup` own the upstream ClientSession and the token scheduler; `reload` swaps in a
new config atomically. `create_app`'s keyword arguments are the test seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from proxy import __version__
from proxy.admin.endpoints import AdminHandlers, Lifecycle
from proxy.config import Config, ConfigError, Route
from proxy.gate import AdminGate, Gate
from proxy.listener import GuardedClientResponse, GuardedServer
from proxy.observe.activity import Activity
from proxy.observe.metrics import ProxyMetrics, StateCollector, TokenCollector
from proxy.observe.record import Recorder
from proxy.request.admission import Admission
from proxy.request.pipeline import Pipeline, Target
from proxy.request.routing import HostEntry, HostTable, RouteTable
from proxy.tokens import RouteState, TokenError, TokenStore, make_sources, read_source
from proxy.tokens.sources import Source
from proxy.tokens.store import FILE_POLL_INTERVAL
from proxy.tokens.watch import FileWatch
from proxy.upstream.plan import Plan
from proxy.upstream.retry import Retry
from proxy.upstream.slots import UpstreamSlots

log = logging.getLogger("amperity_proxy")

TICK_INTERVAL = 1.0  # seconds between token scheduler rounds (file polls, refreshes, warnings)

ConfigLoader = Callable[[], Config]


class StartupError(Exception):
    """The proxy cannot start; `lines` are printed one per line, without a traceback."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


ContextKey = tuple[str | None, str]  # (ca_file, sha256 of its content; "" for system CAs)


@dataclasses.dataclass(frozen=True)
class Contexts:
    by_route: dict[str, ssl.SSLContext]
    by_key: dict[ContextKey, ssl.SSLContext]


def _ssl_contexts(
    config: Config,
    keys: Mapping[str, ContextKey],
    previous: Mapping[ContextKey, ssl.SSLContext],
) -> dict[ContextKey, ssl.SSLContext]:
    """One verifying SSL context per distinct ca_file (None = system CAs), reusing the previous
    generation's context when the CA bundle is unchanged. A new context per reload would give
    aiohttp's pool new connection keys: old connections (and the contexts, about 2 MiB of CA
    store each) would linger until their keep-alive ran out, and under load a reload every
    second grew memory and file descriptors without bound. Blocking: reads the bundles."""
    contexts: dict[ContextKey, ssl.SSLContext] = {}
    for route in config.routes:
        key = keys[route.name]
        if key in contexts:
            continue
        if key in previous:
            contexts[key] = previous[key]
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
        contexts[key] = context
    return contexts


def _context_key(route: Route) -> ContextKey:
    if route.ca_file is None:
        return (None, "")
    try:
        with open(route.ca_file, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise StartupError(
            [f"route {route.name}: cannot read ca_file {route.ca_file}: {exc.strerror or exc}"]
        ) from None
    return (route.ca_file, digest)


def _restart_needed(old: Config, new: Config) -> list[str]:
    """Settings a reload can't apply to a running process."""
    changes = []
    if (old.listen.host, old.listen.port, old.listen.unix) != (
        new.listen.host,
        new.listen.port,
        new.listen.unix,
    ):
        changes.append(f"listen address ({old.listen} -> {new.listen})")
    if old.admin != new.admin:
        changes.append(f"admin listener ({old.admin} -> {new.admin}, allowed hosts, clients)")
    old_guard, new_guard = old.admin_settings, new.admin_settings
    if (old_guard.header_timeout, old_guard.max_connections) != (
        new_guard.header_timeout,
        new_guard.max_connections,
    ):
        changes.append("admin.header_timeout / admin.max_connections")
    if old.shutdown_timeout != new.shutdown_timeout:
        changes.append("shutdown_timeout")
    if old.log != new.log:
        changes.append("log settings")
    return changes


class ProxyApp:
    """Every part of a running proxy, built from a Config (see `create_app`)."""

    def __init__(
        self,
        config: Config,
        *,
        upstream_ssl: ssl.SSLContext | None,
        resolver: AbstractResolver | None,
        registry: CollectorRegistry,
        env: Mapping[str, str],
        token_poll_interval: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.registry = registry
        self.lifecycle = Lifecycle()
        self.config_loader: ConfigLoader | None = None  # set by `serve`: re-reads the file
        self._upstream_ssl = upstream_ssl
        self._resolver = resolver
        self._env = env
        self._tick_interval = min(TICK_INTERVAL, token_poll_interval)
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._context_cache: dict[ContextKey, ssl.SSLContext] = {}
        built = self._contexts(config)
        self._context_cache = built.by_key
        contexts = built.by_route
        self.ssl_contexts = contexts  # route name -> the context its upstream uses
        self.store = TokenStore(
            config.routes,
            lambda route: self._sources(route, contexts),
            clock=clock,
            file_poll_interval=token_poll_interval,
        )
        # Token files are re-read within about a second of a change (the poll is the fallback).
        self._watch = FileWatch(self.store.file_paths, self.store.reread_directories)
        self.metrics = ProxyMetrics(registry, __version__)
        collectors = (
            TokenCollector(self.store.snapshot),
            StateCollector(
                lambda: self.lifecycle.ready(self.store),
                lambda: (self.lifecycle.reload_successful, self.lifecycle.reload_success_at),
            ),
        )
        # What /metrics serves: this process's registry, or with `run --workers N`
        # (prometheus-client multiprocess mode) the counters of every worker, aggregated.
        self.exposition = registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        for collector in collectors:
            registry.register(collector)
            if self.exposition is not registry:
                self.exposition.register(collector)
        self.activity = Activity()  # the status page's per-route traffic; survives reloads
        self.handler = Pipeline(
            self._admission(config, contexts, self._client_token(config), self.store.routes),
            self.store,
            self.metrics,
            UpstreamSlots(
                config.limits.upstream_connections,
                config.limits.upstream_connections_per_route,
                config.limits.upstream_connections_per_client,
                config.limits.upstream_queue_wait,
            ),
            Retry(self.store, self.activity, clock, sleep, rng),
            Recorder(self.activity, config.listen.unix is not None, clock),
            clock,
            sleep,
        )

    # --- building ----------------------------------------------------------------------

    def _contexts(self, config: Config) -> Contexts:
        """route name -> SSL context, reusing the running generation's unchanged contexts (see
        `_ssl_contexts`); the caller makes `by_key` the cache once the config is in use."""
        if self._upstream_ssl is not None:
            return Contexts({route.name: self._upstream_ssl for route in config.routes}, {})
        keys = {route.name: _context_key(route) for route in config.routes}
        by_key = _ssl_contexts(config, keys, self._context_cache)
        return Contexts({name: by_key[key] for name, key in keys.items()}, by_key)

    def _sources(self, route: Route, contexts: Mapping[str, ssl.SSLContext]) -> list[Source]:
        return make_sources(
            route, env=self._env, session=lambda: self._session, ssl=contexts[route.name]
        )

    def _client_token(self, config: Config) -> str | None:
        if config.listen.client_token is None:
            return None
        try:
            return read_source(config.listen.client_token, self._env).strip()
        except TokenError as exc:
            raise StartupError([f"listen.client_token: {exc}"]) from None

    def _admission(
        self,
        config: Config,
        contexts: Mapping[str, ssl.SSLContext],
        client_token: str | None,
        tokens: Mapping[str, RouteState],
    ) -> Admission[Target]:
        prefixes, hosts = [], []
        for route in config.routes:
            base = route.base_url
            route_metrics = self.metrics.for_route(route.name, route.tenant)
            target = Target(
                route,
                Plan.of(
                    route,
                    contexts[route.name],
                    config.limits.body_timeout,
                    config.limits.body_deadline,
                ),
                route_metrics,
                tokens=tokens[route.name],  # this generation's tokens, for this Target only
            )
            prefixes.append((route.prefix, target))
            hosts.append(
                HostEntry(base.host, base.port, base.default_port, base.path, route.tenant, target)
            )
        return Admission(Gate(config.listen, client_token), RouteTable(prefixes), HostTable(hosts))

    # --- running -----------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self._session

    async def startup(self, *, strict: bool = True) -> list[str]:
        """Open the upstream session, load every route's tokens, then start the token
        scheduler. `strict` (serving): a route without a token is a StartupError (fail fast).
        Otherwise (diagnostics) the problems are returned and nothing runs in the background."""
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            # proxy.upstream.slots keeps exchanges within upstream_connections, so nothing waits in the
            # pool (a full pool used to surface as a connect timeout); the margin is for token
            # mints, which don't hold a slot.
            limit=self.config.limits.upstream_connections + 8,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # never store or replay upstream cookies
            auto_decompress=False,  # compressed bodies pass through byte for byte
            trust_env=False,  # SECURITY: the proxy's own HTTP_PROXY must not redirect tokens
            timeout=aiohttp.ClientTimeout(total=None),  # per-route timeouts are set per request
            # Send only what the client sent: no default Accept/Accept-Encoding/User-Agent.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            response_class=GuardedClientResponse,  # odd statuses close their connection
        )
        self.handler.session = self._session
        errors = await self.store.load_initial()
        if not strict:
            return errors
        if errors:
            await self.cleanup()
            raise StartupError(errors)
        self._poller = asyncio.create_task(self.store.run(self._tick_interval), name="tokens")
        self._watcher = asyncio.create_task(self._watch.run(), name="token-files")
        return []

    async def cleanup(self) -> None:
        """Stop the scheduler and close the session (after in-flight requests finished)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
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
        """A low-level server for every request, with the connection limits. Not an
        Application: the proxy must see CONNECT and `OPTIONS *`, which aiohttp's router would
        answer itself with a plain 404."""
        limits = self.config.limits
        return self.guarded(self.handle, limits.max_connections, limits.header_timeout, "limits")

    def guarded(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        max_connections: int,
        header_timeout: float,
        section: str,
    ) -> GuardedServer:
        """A `GuardedServer` with this config's size limits, counting its refusals: the proxy
        listener's and the admin listener's differ only in their cap and header deadline."""
        limits = self.config.limits
        return GuardedServer(
            handler,
            max_connections=max_connections,
            header_timeout=header_timeout,
            max_request_line=limits.max_request_line,
            max_header_size=limits.max_header_size,
            max_headers=limits.max_headers,
            cap_setting=f"{section}.max_connections",
            reject=self.reject,
            access_log=None,
            # The header deadline bounds idle keep-alive connections; aiohttp's own
            # keep-alive timer would only add a second, longer one.
            keepalive_timeout=header_timeout + 1,
        )

    def reject(self, reason: str) -> None:
        """Count a request refused before it reached the upstream."""
        self.metrics.rejected.labels(reason).inc()

    # --- reloading ---------------------------------------------------------------------

    async def reload(self, config: Config) -> list[str]:
        """Replace the running routes with `config`'s, atomically; return the errors that made
        it refuse (then nothing changed). In-flight requests finish on the routes they started
        with; tokens of unchanged routes are kept; listener changes need a restart."""
        async with self._reload_lock:
            restart = _restart_needed(self.config, config)
            if restart:
                log.warning(
                    "config reload: %s changed; that needs a restart and is kept as it runs",
                    ", ".join(restart),
                )
                config = dataclasses.replace(
                    config,
                    listen=dataclasses.replace(
                        config.listen,
                        host=self.config.listen.host,
                        port=self.config.listen.port,
                        unix=self.config.listen.unix,
                    ),
                    admin=self.config.admin,
                    admin_settings=dataclasses.replace(
                        config.admin_settings,  # enable_reload applies at once; the rest waits
                        header_timeout=self.config.admin_settings.header_timeout,
                        max_connections=self.config.admin_settings.max_connections,
                    ),
                    shutdown_timeout=self.config.shutdown_timeout,
                    log=self.config.log,
                )
            try:
                # CA bundles and a client-token file are read off the event loop.
                built = await asyncio.to_thread(self._contexts, config)
                contexts = built.by_route
                client_token = await asyncio.to_thread(self._client_token, config)
            except StartupError as exc:
                return self._rejected(exc.lines)
            pending = self.store.prepare(
                config.routes, lambda route: self._sources(route, contexts)
            )
            admission = self._admission(config, contexts, client_token, pending)
            errors = await self.store.load(pending)
            if errors:
                return self._rejected(errors)
            # The swap: plain attribute assignments on the event loop, so no request ever sees
            # half of it. Requests already running keep the Target and token they started with.
            added = sorted(set(pending) - set(self.store.route_names))
            removed = sorted(set(self.store.route_names) - set(pending))
            self.store.commit(pending)
            self._watch.changed()  # the token files to watch may be others now
            self.handler.admission = admission
            self.ssl_contexts = contexts
            self._context_cache = built.by_key  # unchanged bundles keep their context
            self.config = config
            self.lifecycle.reload_successful = True
            self.lifecycle.reload_success_at = time.time()
            self.lifecycle.reload_errors = []
            for warning in config.warnings:
                log.warning("config: %s", warning)
            log.info(
                "config reloaded: %d route(s); added %s; removed %s",
                len(config.routes),
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )
            return []

    def _rejected(self, errors: list[str]) -> list[str]:
        self.lifecycle.reload_successful = False
        self.lifecycle.reload_errors = list(errors)
        log.error(
            "config reload rejected, the running config is kept: %s",
            "; ".join(errors),
            extra={"fields": {"errors": errors}},
        )
        return errors

    async def reload_from_source(self, trigger: str) -> list[str]:
        """Re-read the config (as `serve` was told to) and reload it."""
        if self.config_loader is None:
            return self._rejected(["no config file to reload from"])
        log.info("config reload requested (%s)", trigger)
        try:
            config = await asyncio.to_thread(self.config_loader)
        except ConfigError as exc:
            return self._rejected(exc.errors)
        return await self.reload(config)


def create_app(
    config: Config,
    *,
    upstream_ssl: ssl.SSLContext | None = None,
    resolver: AbstractResolver | None = None,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
    token_poll_interval: float = FILE_POLL_INTERVAL,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> ProxyApp:
    """Build the proxy (tokens load in `ProxyApp.startup`); raise StartupError when the client
    token or a ca_file can't be loaded."""
    for warning in config.warnings:
        log.warning("config: %s", warning)
    return ProxyApp(
        config,
        upstream_ssl=upstream_ssl,
        resolver=resolver,
        registry=registry if registry is not None else CollectorRegistry(),
        env=os.environ if env is None else env,
        token_poll_interval=token_poll_interval,
        clock=clock,
        sleep=sleep,
        rng=rng or random.Random(),  # noqa: S311 (back-off jitter, not security)
    )


def create_admin_app(proxy: ProxyApp) -> GuardedServer:
    """The admin listener's server: /, /status.json, /healthz, /livez, /readyz, /metrics,
    POST /-/reload, behind `AdminGate` and the same connection guards as the proxy listener
    (its own header deadline and connection cap from `admin:`)."""
    handlers = AdminHandlers(
        proxy.store,
        proxy.exposition,
        proxy.lifecycle,
        proxy.activity,
        lambda: proxy.config,
        proxy.reload_from_source,
        AdminGate(proxy.config.admin),
        proxy.reject,
    )
    admin = proxy.config.admin_settings
    return proxy.guarded(handlers.handle, admin.max_connections, admin.header_timeout, "admin")
