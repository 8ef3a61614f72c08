"""The configuration's model: the frozen dataclasses `parse_config` builds, and their defaults.

Each section's own dataclass (Listen, Limits, RateLimit, TokenSource, ...) lives beside the
table that parses it (`config.listen`, `config.limits`, ...); this module holds the ones that
tie them together: Config, Route and its parts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from proxy.config.limits import Limits
from proxy.config.listen import AdminSettings, Listen
from proxy.config.patterns import PatternSet
from proxy.config.shared import SharedRedis
from proxy.config.sources import TokenSource
from proxy.config.traffic import RateLimit, RetryPolicy

DEFAULT_BASE_URL = "https://{tenant}.amperity.com/api"
MAX_CONFIG_BYTES = 1024 * 1024  # a real config is a few KiB
DEFAULT_API_VERSION = "2024-04-01"

ExpiredTokenPolicy = Literal["forward", "reject"]
LogFormat = Literal["auto", "json", "text"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """Every problem found in a config, one `path: message` line each."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.errors))

    def render(self) -> str:
        """The multi-line form printed by the CLI."""
        lines = [f"{self.source}: {len(self.errors)} error(s)"]
        lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)


# Re-reads the config file (with the command line's overrides): what a reload applies.
ConfigLoader = Callable[[], "Config"]


class StartupError(Exception):
    """The proxy cannot start; `lines` are printed one per line, without a traceback."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float
    total: float | None = None


@dataclass(frozen=True)
class BaseURL:
    """A parsed upstream base URL, e.g. https://acme.amperity.com/api."""

    scheme: str
    host: str
    port: int
    path: str  # "" or "/api": never ends with "/"

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if self.default_port else f"{host}:{self.port}"
        return f"{self.scheme}://{netloc}"

    @property
    def host_header(self) -> str:
        return self.origin.split("://", 1)[1]

    def __str__(self) -> str:
        return self.origin + self.path


@dataclass(frozen=True)
class RouteDefaults:
    """What a route inherits (from `defaults:`, else from here): the one place these defaults
    are declared."""

    api: str = "amperity"  # which of Amperity's APIs: amperity, profile, streaming (presets)
    tenant_header: str | None = None  # None: the preset's; "both": both spellings
    base_url: str = DEFAULT_BASE_URL  # {tenant} expands to the route's tenant
    api_version: str | None = DEFAULT_API_VERSION
    ca_file: str | None = None
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=10.0, read=300.0))
    # Largest body kept in memory so a request can be replayed after a 401 (the only buffering).
    retry_body_limit: int = 1024 * 1024
    expired_token: ExpiredTokenPolicy = "forward"  # noqa: S105 (a policy name; reject = answer locally)
    max_body_bytes: int | None = None  # larger request bodies get 413
    rate_limit: RateLimit | None = None  # pacing toward Amperity's per-endpoint limits
    retry: RetryPolicy | None = None  # back-off on 429/503 for replayable requests


@dataclass(frozen=True)
class Route:
    """One route, every inherited value resolved (parse fills each from RouteDefaults)."""

    name: str
    prefix: str
    tenant: str
    base_url: BaseURL
    api_version: str | None
    ca_file: str | None
    timeouts: Timeouts
    tokens: tuple[TokenSource, ...]  # `token:` is a one-source list
    # Per-route policy; None = no restriction. Paths are matched (fullmatch) against the raw
    # path after the prefix, e.g. "/segments/123".
    methods: frozenset[str] | None
    paths: PatternSet | None  # RE2 (proxy.config.patterns): linear time, whatever the path
    retry_body_limit: int
    expired_token: ExpiredTokenPolicy
    max_body_bytes: int | None
    rate_limit: RateLimit | None
    retry: RetryPolicy | None
    clients: frozenset[str] | None = None  # names from listen.clients; None: any client
    api: str = "amperity"  # the preset (config.presets)
    tenant_headers: tuple[str, ...] = ("Amperity-Tenant",)  # the header(s) naming the tenant

    @functools.cached_property
    def budget(self) -> tuple[str, ...]:
        """The rate budget the route draws on: Amperity counts per origin, tenant and endpoint
        (`key: endpoint`; the endpoint is added per request), per tenant (`key: tenant`, a
        sandbox maybe on its production tenant's), or `key: route` for the route alone. Shared
        by routes that call the same budget. Computed once (parse touches it), not per request."""
        limit = self.rate_limit
        if limit is None or limit.key == "route":
            return ("route", self.name)
        if limit.key == "tenant":  # Amperity counts these per tenant, whatever the host
            return ("tenant", self.api, limit.budget_tenant or self.tenant)
        return ("endpoint", self.base_url.origin, self.tenant)


@dataclass(frozen=True)
class LogSettings:
    format: LogFormat = "auto"
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    listen: Listen
    admin: Listen
    shutdown_timeout: float
    routes: tuple[Route, ...]
    log: LogSettings = LogSettings()
    warnings: tuple[str, ...] = ()  # non-fatal findings, logged at start-up
    admin_settings: AdminSettings = field(default_factory=AdminSettings)
    limits: Limits = field(default_factory=Limits)
    shared: SharedRedis | None = None  # state shared by processes (rate-limit buckets)

    shutdown_delay: float = 0.0  # seconds serving on after SIGTERM before the drain starts

    @property
    def enable_reload(self) -> bool:
        """admin.enable_reload: serve POST /-/reload."""
        return self.admin_settings.enable_reload


def restart_needed(old: Config, new: Config) -> list[str]:
    """Settings a reload can't apply to a running process."""
    changes = []
    if (old.listen.host, old.listen.port, old.listen.unix, old.listen.tls) != (
        new.listen.host,
        new.listen.port,
        new.listen.unix,
        new.listen.tls,
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
    if old.shared != new.shared:
        changes.append("shared (the Redis connection)")
    if old.limits.allow_pure_python_parser != new.limits.allow_pure_python_parser:
        changes.append("limits.allow_pure_python_parser (checked at start)")
    return changes


def keep_running(new: Config, running: Config) -> Config:
    """`new` with the settings a reload can't apply (see `restart_needed`) kept as they run;
    `admin.enable_reload` applies at once."""
    return dataclasses.replace(
        new,
        listen=dataclasses.replace(
            new.listen,
            host=running.listen.host,
            port=running.listen.port,
            unix=running.listen.unix,
            tls=running.listen.tls,
        ),
        admin=running.admin,
        admin_settings=dataclasses.replace(
            new.admin_settings,
            header_timeout=running.admin_settings.header_timeout,
            max_connections=running.admin_settings.max_connections,
        ),
        shutdown_timeout=running.shutdown_timeout,
        log=running.log,
        shared=running.shared,
        limits=dataclasses.replace(
            new.limits, allow_pure_python_parser=running.limits.allow_pure_python_parser
        ),
    )
