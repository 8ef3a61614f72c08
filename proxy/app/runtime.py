"""`ProxyApp`: every part of a running proxy. It builds each generation (plans, TLS contexts,
targets, token states) at load time; `startup`/`cleanup` own the upstream pool, the session for
token mints and the token tasks; `reload` builds the next generation and swaps it in with plain
assignments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry

from proxy import __version__
from proxy.admin.endpoints import Lifecycle
from proxy.config import (
    Config,
    ConfigError,
    ConfigLoader,
    Route,
    StartupError,
    keep_running,
    restart_needed,
)
from proxy.gate import client_tokens, shared_password
from proxy.listener import GuardedServer
from proxy.observe.activity import Activity
from proxy.observe.collectors import StateCollector, TokenCollector
from proxy.observe.exposition import Exposition, expose
from proxy.observe.metrics import ProxyMetrics
from proxy.observe.record import Recorder
from proxy.observe.shared import SharedMetrics
from proxy.observe.tracing import Tracing, from_env
from proxy.request.admission import Admission
from proxy.request.pacing import Pacer
from proxy.request.pipeline import Pipeline
from proxy.request.shared import SharedBuckets
from proxy.request.targets import Target, admit
from proxy.tokens import RouteState, TokenStore, make_sources
from proxy.tokens.sources import Source
from proxy.tokens.store import TICK_INTERVAL
from proxy.tokens.watch import FileWatch
from proxy.upstream.pool import Pool
from proxy.upstream.retry import Retry
from proxy.upstream.session import upstream_session
from proxy.upstream.slots import UpstreamSlots
from proxy.upstream.tls import Contexts, TlsContexts

log = logging.getLogger("amperity_proxy")


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
        pool_idle: float,
        rate_share: float = 1.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self._rate_share = rate_share  # of each local bucket: 1/N under --workers N
        self.tracing = tracing if tracing is not None else from_env(env)  # OTEL_TRACES_EXPORTER
        self.registry, self._pool_idle, self._resolver = registry, pool_idle, resolver
        self.lifecycle = Lifecycle()
        self.config_loader: ConfigLoader | None = None  # set by `serve`: re-reads the file
        self._env, self._tick_interval = env, min(TICK_INTERVAL, token_poll_interval)
        self.session: aiohttp.ClientSession | None = None  # while running, as is `pool`
        self.pool: Pool | None = None
        self._poller: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._listeners: list[GuardedServer] = []  # the proxy listener's servers (reloads)
        self._tls = TlsContexts(upstream_ssl)
        self._tls.keep(built := self._tls.build(config))
        self.ssl_contexts = contexts = built.by_route  # route name -> its upstream's context
        self.store = TokenStore(
            config.routes,
            lambda route: self._sources(route, contexts),
            clock=clock,
            file_poll_interval=token_poll_interval,
        )
        # token files are re-read within about a second of a change (the poll is the fallback)
        self._watch = FileWatch(self.store.file_paths, self.store.reread_directories)
        self.metrics = ProxyMetrics(registry, __version__)
        self.exposition = self._exposition()
        self.activity = Activity()  # the status page's per-route traffic; survives reloads
        self.handler = self._pipeline(contexts, clock, sleep, rng)

    def _exposition(self) -> Exposition:
        """What /metrics serves: the request metrics and, computed at scrape time, the tokens
        and the process's own state."""
        return expose(
            self.registry,
            self.metrics,
            TokenCollector(self.store.snapshot),
            StateCollector(
                lambda: self.lifecycle.ready(self.store),
                lambda: (
                    self.lifecycle.reload_successful,
                    self.lifecycle.reload_success_at,
                    bool(self.lifecycle.restart_pending),
                ),
            ),
        )

    def _pipeline(
        self,
        contexts: Mapping[str, ssl.SSLContext],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
    ) -> Pipeline:
        config = self.config
        token = client_tokens(config.listen, self._env)
        shared = None
        if config.shared is not None:  # one Redis client for the process, across reloads
            password = shared_password(config.shared, self._env)
            shared = SharedBuckets(config.shared, password, SharedMetrics(self.registry))
        return Pipeline(
            admit(config, contexts, token, self.store.routes, self.metrics),
            self.store,
            self.metrics,
            UpstreamSlots.of(config.limits),
            Retry(self.store, self.activity, clock, sleep, rng),
            Recorder(self.activity, config.listen.unix is not None, clock),
            Pacer(clock, sleep, 1.0 if shared else self._rate_share, shared),
            clock,
            self.tracing,
        )

    def _sources(self, route: Route, contexts: Mapping[str, ssl.SSLContext]) -> list[Source]:
        return make_sources(
            route, env=self._env, session=lambda: self.session, ssl=contexts[route.name]
        )

    async def startup(self, *, strict: bool = True) -> list[str]:
        """Open the upstream session, load every route's tokens, then start the token
        scheduler. `strict` (serving): a route without a token is a StartupError (fail fast).
        Otherwise (diagnostics) the problems are returned and nothing runs in the background."""
        # Forwarding uses its own keep-alive pool; the session is for token mints and doctor.
        self.session = upstream_session(self._resolver)
        self.pool = self.handler.pool = Pool(self._resolver, self._pool_idle)
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
        for task in filter(None, (self._watcher, self._poller)):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watcher = self._poller = None
        if self.pool is not None:
            self.pool.close()
        if self.session is not None:
            await self.session.close()
        if self.handler.pacer.shared is not None:
            await self.handler.pacer.shared.close()
        if self.tracing is not None:  # export what is pending (off the event loop)
            await asyncio.to_thread(self.tracing.shutdown)
        self.session, self.pool, self.handler.pool = None, None, None

    def upstream_in_use(self) -> int:
        """Upstream connections lent out now (tests check it returns to 0)."""
        return self.pool.in_use if self.pool is not None else 0

    def queued(self) -> int:
        """Requests waiting for their rate-limit slot (tests wait on it)."""
        return self.handler.pacer.queued()

    def server(self, tls: ssl.SSLContext | None = None) -> GuardedServer:
        """A low-level server for every request, with the connection limits; `tls`: the
        listener's certificate (listen.tls), whose handshake the server runs and counts. Not
        an Application: the proxy must see CONNECT and `OPTIONS *`, which aiohttp's router
        would answer itself with a plain 404. A peer outside `listen.allow_clients` is
        closed at accept (the gate of the generation serving then), never counted."""
        limits = self.config.limits
        server = GuardedServer.of(
            self.handler.handle,
            limits,
            limits.max_connections,
            limits.header_timeout,
            "limits",
            self.reject,
            admit_peer=lambda address: self.handler.admission.gate.client(address) is None,
        )
        server.tls = tls
        self._listeners.append(server)  # a reload's limits apply to it too
        return server

    def guarded(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        max_connections: int,
        header_timeout: float,
        section: str,
    ) -> GuardedServer:
        """A `GuardedServer` with this config's size limits, counting its refusals: the proxy
        listener's and the admin listener's differ only in their cap and header deadline."""
        return GuardedServer.of(
            handler, self.config.limits, max_connections, header_timeout, section, self.reject
        )

    def reject(self, reason: str) -> None:
        """Count a request refused before it reached the upstream."""
        self.metrics.rejected.labels(reason).inc()

    async def reload(self, config: Config) -> list[str]:
        """Replace the running routes with `config`'s, atomically; return the errors that made
        it refuse (then nothing changed). In-flight requests finish on the routes they started
        with; tokens of unchanged routes are kept; listener changes need a restart."""
        async with self._reload_lock:
            errors = await self._reload(config)
            # The series of routes no longer served go (a rejected reload may have made some).
            self.metrics.keep_only({(r.name, r.tenant, r.api) for r in self.config.routes})
            return errors

    async def _reload(self, config: Config) -> list[str]:
        """One reload attempt (under the reload lock)."""
        restart = restart_needed(self.config, config)
        if restart:
            log.warning(
                "config reload: %s changed; that needs a restart and is kept as it runs",
                ", ".join(restart),
            )
            config = keep_running(config, self.config)
            # Until a restart: the file says one thing, the process does another.
            waiting = self.lifecycle.restart_pending
            waiting.extend(change for change in restart if change not in waiting)
        try:
            # CA bundles and a client-token file are read off the event loop.
            built = await asyncio.to_thread(self._tls.build, config)
            contexts = built.by_route
            token = await asyncio.to_thread(client_tokens, config.listen, self._env)
        except StartupError as exc:
            return self.lifecycle.rejected(exc.lines)
        pending = self.store.prepare(config.routes, lambda route: self._sources(route, contexts))
        admission = admit(config, contexts, token, pending, self.metrics)
        errors = await self.store.load(pending)
        if errors:
            return self.lifecycle.rejected(errors)
        self._swap(config, pending, admission, built)
        return []

    def _swap(
        self,
        config: Config,
        pending: dict[str, RouteState],
        admission: Admission[Target],
        built: Contexts,
    ) -> None:
        """The swap: plain attribute assignments on the event loop, so no request ever sees
        half of it. Requests already running keep the Target and token they started with."""
        added = sorted(set(pending) - set(self.store.route_names))
        removed = sorted(set(self.store.route_names) - set(pending))
        self.store.commit(pending)
        self._watch.changed()  # the token files to watch may be others now
        self.handler.admission = admission
        limits = config.limits
        self.handler.slots.configure(limits)
        for server in self._listeners:
            server.configure(limits, limits.max_connections, limits.header_timeout)
        self.ssl_contexts = built.by_route
        self._tls.keep(built)  # unchanged bundles keep their context
        self.config = config
        self.lifecycle.reloaded()
        for warning in config.warnings:
            log.warning("config: %s", warning)
        log.info(
            "config reloaded: %d route(s); added %s; removed %s",
            len(config.routes),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )

    async def reload_from_source(self, trigger: str) -> list[str]:
        """Re-read the config (as `serve` was told to) and reload it."""
        if self.config_loader is None:
            return self.lifecycle.rejected(["no config file to reload from"])
        log.info("config reload requested (%s)", trigger)
        try:
            config = await asyncio.to_thread(self.config_loader)
        except ConfigError as exc:
            return self.lifecycle.rejected(exc.errors)
        return await self.reload(config)
