"""Building a proxy: `create_app` (its keywords are the test seams) and the admin listener's
server for it."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry

from proxy.admin.endpoints import AdminHandlers
from proxy.app.runtime import ProxyApp
from proxy.config import Config
from proxy.gate import AdminGate
from proxy.listener import GuardedServer
from proxy.observe.tracing import Tracing
from proxy.tokens.store import FILE_POLL_INTERVAL
from proxy.upstream.pool import IDLE_EXPIRY

log = logging.getLogger("amperity_proxy")


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
    pool_idle: float = IDLE_EXPIRY,
    rate_share: float = 1.0,
    tracing: Tracing | None = None,
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
        pool_idle=pool_idle,
        rate_share=rate_share,
        tracing=tracing,
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
        proxy.handler.pacer.mode,
    )
    admin = proxy.config.admin_settings
    return proxy.guarded(handlers.handle, admin.max_connections, admin.header_timeout, "admin")
