"""Prometheus metrics: request counters in an injected registry, token state at scrape time.

Labels come only from the config (route, tenant) or from small fixed sets (code, reason):
never from paths, queries or tokens.
"""

from __future__ import annotations

import os
from functools import cached_property

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase

from proxy.refusals import REJECT_REASONS

# No `*_created` series: they double the series count and no alert or dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

UPSTREAM_ERROR_REASONS = ("connect", "tls", "timeout", "reset", "bad_response")
UNAUTHORIZED_CAUSES = ("expired", "rejected", "unknown", "tenant_mismatch")
RETRY_REASONS = ("unauthorized", "status_429", "status_503")
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Amperity API calls range from milliseconds to minutes (large exports).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def multiprocess() -> bool:
    """Whether prometheus-client runs in multiprocess mode (`run --workers N` sets its
    directory): counters live in per-worker files, aggregated by the process that serves."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ProxyMetrics:
    """The request-path metrics, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self._upstream(registry)
        self._requests(registry, version)
        self._unbound: dict[tuple[str, str], RouteMetrics] = {}
        self._known: set[tuple[str, str, str]] = set()  # route_info's series: route, tenant, api
        # The per-route metrics by the labels that name a route: (route, tenant), or route.
        self._per_pair: tuple[MetricWrapperBase, ...] = (
            self.unauthorized,
            self.retries,
            self.upstream_errors,
            self.deprecations,
            self.duration,
            self.responses,
        )
        self._per_name: tuple[MetricWrapperBase, ...] = (
            self.ratelimit_wait,
            self.ratelimit_rejected,
            self.client_requests,
        )

    def _upstream(self, registry: CollectorRegistry) -> None:
        """Per route: what the upstream answered, and what the proxy did about it."""
        self.unauthorized = Counter(
            "amperity_proxy_upstream_unauthorized",
            "Upstream 401 responses, by cause: expired, rejected (not expired, refused), "
            "unknown (no exp), tenant_mismatch (the token is for another tenant).",
            ["route", "tenant", "cause"],
            registry=registry,
        )
        self.retries = Counter(
            "amperity_proxy_upstream_retries",
            "Requests sent upstream again, by reason.",
            ["route", "tenant", "reason"],
            registry=registry,
        )
        self.ratelimit_wait = Histogram(
            "amperity_proxy_ratelimit_wait_seconds",
            "Time requests waited for a rate-limit slot (rate_limit: on the route).",
            ["route"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.ratelimit_rejected = Counter(
            "amperity_proxy_ratelimit_rejected",
            "Requests answered with a local 429 because their wait would exceed max_wait.",
            ["route"],
            registry=registry,
        )
        self.deprecations = Counter(
            "amperity_proxy_upstream_deprecation_responses",
            "Upstream responses carrying a Deprecation or Sunset header.",
            ["route", "tenant"],
            registry=registry,
        )
        self.responses = Counter(
            "amperity_proxy_upstream_responses",
            "Upstream responses by status code.",
            ["route", "tenant", "code"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "amperity_proxy_upstream_errors",
            "Upstream exchanges that failed without a complete response.",
            ["route", "tenant", "reason"],
            registry=registry,
        )

    def _requests(self, registry: CollectorRegistry, version: str) -> None:
        """Requests as the proxy sees them, and the build."""
        self.duration = Histogram(
            "amperity_proxy_request_duration_seconds",
            "Time from request received to response finished, per route.",
            ["route", "tenant"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.client_requests = Counter(
            "amperity_proxy_client_requests",
            "Requests admitted per named client (listen.clients) and route.",
            ["client", "route"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "amperity_proxy_requests_in_flight",
            "Requests being proxied right now.",
            registry=registry,
            multiprocess_mode="livesum",  # summed over live workers (`run --workers N`)
        )
        self.rejected = Counter(
            "amperity_proxy_rejected_requests",
            "Requests refused before reaching the upstream.",
            ["reason"],
            registry=registry,
        )
        build_info = Gauge(
            "amperity_proxy_build_info",
            "Always 1; the version label tells which build runs.",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        )
        build_info.labels(version).set(1)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.route_info = Gauge(
            "amperity_proxy_route_info",
            "Always 1 per route; `api` is which of Amperity's APIs it fronts (the route's preset).",
            ["route", "tenant", "api"],
            registry=registry,
            multiprocess_mode="max",
        )

    def for_route(self, route: str, tenant: str, api: str = "amperity") -> RouteMetrics:
        """One route's metrics. Its children are bound when first used or, at the latest, by
        the next scrape (`bind_pending`): every per-route series is at 0 in the first scrape,
        and a config of 1,000 routes doesn't wait for 16,000 `labels()` calls to be ready."""
        self.route_info.labels(route, tenant, api).set(1)
        self._known.add((route, tenant, api))
        metrics = RouteMetrics(self, route, tenant)
        self._unbound[(route, tenant)] = metrics  # one per series set: reloads don't pile up
        return metrics

    def bind_pending(self) -> None:
        """Bind every route's children not bound yet (before a scrape renders them)."""
        while self._unbound:
            self._unbound.popitem()[1].bind()

    def keep_only(self, live: set[tuple[str, str, str]]) -> None:
        """Drop the series of routes not in `live` (route, tenant, api): a reload removed them
        or changed their tenant or API, or a rejected reload prepared them. /metrics then shows
        only routes that are served. Under `run --workers N` prometheus-client can't remove a
        series (multiprocess mode), so there they stay until a restart."""
        gone, self._known = self._known - live, set(live)
        if not gone or multiprocess():
            return
        pairs, names = {(r, t) for r, t, _ in live}, {r for r, _, _ in live}
        for route, tenant, api in gone:
            self.route_info.remove(route, tenant, api)
            if (route, tenant) not in pairs:
                self._unbound.pop((route, tenant), None)
                for metric in self._per_pair:
                    metric.remove_by_labels({"route": route, "tenant": tenant})
            if route not in names:
                for metric in self._per_name:
                    metric.remove_by_labels({"route": route})


_CHILDREN = (  # RouteMetrics' children, bound together by `bind`
    "unauthorized",
    "retries",
    "errors",
    "deprecations",
    "ratelimit_wait",
    "ratelimit_rejected",
    "duration",
)


class RouteMetrics:
    """One route's metric children, each bound once (on first use or by `bind`), so the request
    path does no label lookups."""

    def __init__(self, metrics: ProxyMetrics, route: str, tenant: str) -> None:
        self._metrics = metrics
        self._labels = (route, tenant)
        self._responses: dict[int, Counter] = {}
        self._clients: dict[str, Counter] = {}

    def bind(self) -> None:
        """Bind (and so pre-initialise at 0) every child of this route."""
        for name in _CHILDREN:
            getattr(self, name)

    @cached_property
    def unauthorized(self) -> dict[str, Counter]:
        metric = self._metrics.unauthorized
        return {cause: metric.labels(*self._labels, cause) for cause in UNAUTHORIZED_CAUSES}

    @cached_property
    def retries(self) -> dict[str, Counter]:
        metric = self._metrics.retries
        return {reason: metric.labels(*self._labels, reason) for reason in RETRY_REASONS}

    @cached_property
    def errors(self) -> dict[str, Counter]:
        metric = self._metrics.upstream_errors
        return {reason: metric.labels(*self._labels, reason) for reason in UPSTREAM_ERROR_REASONS}

    @cached_property
    def deprecations(self) -> Counter:
        return self._metrics.deprecations.labels(*self._labels)

    @cached_property
    def ratelimit_wait(self) -> Histogram:
        return self._metrics.ratelimit_wait.labels(self._labels[0])

    @cached_property
    def ratelimit_rejected(self) -> Counter:
        return self._metrics.ratelimit_rejected.labels(self._labels[0])

    @cached_property
    def duration(self) -> Histogram:
        return self._metrics.duration.labels(*self._labels)

    def retry(self, reason: str) -> None:
        child = self.retries.get(reason)
        if child is None:
            child = self._metrics.retries.labels(*self._labels, reason)
            self.retries[reason] = child
        child.inc()

    def client(self, name: str) -> None:
        """A request admitted for the named client (listen.clients) on this route."""
        child = self._clients.get(name)
        if child is None:
            child = self._metrics.client_requests.labels(name, self._labels[0])
            self._clients[name] = child
        child.inc()

    def response(self, status: int) -> None:
        child = self._responses.get(status)
        if child is None:
            child = self._metrics.responses.labels(*self._labels, str(status))
            self._responses[status] = child
        child.inc()
