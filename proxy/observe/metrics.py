"""Prometheus metrics: request counters in an injected registry, token state at scrape time.

Labels come only from the config (route, tenant) or from small fixed sets (code, reason):
never from paths, queries or tokens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from proxy.refusals import REJECT_REASONS
from proxy.tokens import RouteStatus

# No `*_created` series: they double the series count and no alert or dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

UPSTREAM_ERROR_REASONS = ("connect", "tls", "timeout", "reset", "bad_response")
UNAUTHORIZED_CAUSES = ("expired", "rejected", "unknown", "tenant_mismatch")
RETRY_REASONS = ("unauthorized", "status_429", "status_503")
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REFRESH_RESULTS = ("success", "failure")
# Amperity API calls range from milliseconds to minutes (large exports).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ProxyMetrics:
    """The request-path metrics, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self._upstream(registry)
        self._requests(registry, version)

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

    def for_route(self, route: str, tenant: str) -> RouteMetrics:
        """Pre-bound children for one route; also pre-initialises its series at 0."""
        return RouteMetrics(self, route, tenant)


class RouteMetrics:
    """One route's metric children, bound once so the request path does no label lookups."""

    def __init__(self, metrics: ProxyMetrics, route: str, tenant: str) -> None:
        self._metrics = metrics
        self._labels = (route, tenant)
        self.unauthorized = {
            cause: metrics.unauthorized.labels(route, tenant, cause)
            for cause in UNAUTHORIZED_CAUSES
        }
        self.retries = {
            reason: metrics.retries.labels(route, tenant, reason) for reason in RETRY_REASONS
        }
        self.deprecations = metrics.deprecations.labels(route, tenant)
        self.ratelimit_wait = metrics.ratelimit_wait.labels(route)
        self.ratelimit_rejected = metrics.ratelimit_rejected.labels(route)
        self.duration = metrics.duration.labels(route, tenant)
        self.errors = {
            reason: metrics.upstream_errors.labels(route, tenant, reason)
            for reason in UPSTREAM_ERROR_REASONS
        }
        self._responses: dict[int, Counter] = {}

    def retry(self, reason: str) -> None:
        child = self.retries.get(reason)
        if child is None:
            child = self._metrics.retries.labels(*self._labels, reason)
            self.retries[reason] = child
        child.inc()

    def response(self, status: int) -> None:
        child = self._responses.get(status)
        if child is None:
            child = self._metrics.responses.labels(*self._labels, str(status))
            self._responses[status] = child
        child.inc()


_Families = tuple[
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
]


def _token_families() -> _Families:
    """The token metrics, computed at scrape time (empty families, filled by the collector)."""
    labels = ["route", "tenant"]
    age = GaugeMetricFamily(
        "amperity_proxy_token_age_seconds",
        "Now minus the token's JWT iat (or its load time for an opaque token).",
        labels=labels,
    )
    expiry = GaugeMetricFamily(
        "amperity_proxy_token_expiry_timestamp_seconds",
        "The token's JWT exp as a Unix timestamp; absent when the token has none.",
        labels=labels,
    )
    issued = GaugeMetricFamily(
        "amperity_proxy_token_issued_timestamp_seconds",
        "The token's JWT iat (or its load time for an opaque token) as a Unix timestamp.",
        labels=labels,
    )
    info = GaugeMetricFamily(
        "amperity_proxy_token_info",
        "1 for the token in use, identified by source and fingerprint.",
        labels=[*labels, "source", "fingerprint", "has_expiry"],
    )
    valid = GaugeMetricFamily(
        "amperity_proxy_token_valid",
        "1 while the route has a usable, unexpired token.",
        labels=labels,
    )
    load_errors = CounterMetricFamily(
        "amperity_proxy_token_load_errors",
        "Failed reads of a route's token sources, by reason.",
        labels=["route", "reason"],
    )
    refreshes = CounterMetricFamily(
        "amperity_proxy_token_refreshes",
        "Runs of exec and client_credentials sources, by result.",
        labels=[*labels, "result"],
    )
    return (age, expiry, issued, info, valid, load_errors, refreshes)


class TokenCollector(Collector):
    """Token state read from the store at scrape time: age, issue and expiry of the token in
    use, which token that is, whether the route has a valid one, load errors and refreshes."""

    def __init__(
        self,
        snapshot: Callable[[], Iterable[RouteStatus]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        age, expiry, issued, info, valid, load_errors, refreshes = _token_families()
        for route in self._snapshot():
            values = [route.route, route.tenant]
            current = route.current
            cred = current.credential if current else None
            if current is not None and cred is not None:
                age.add_metric(values, cred.age(now))
                issued.add_metric(
                    values, cred.issued_at if cred.issued_at is not None else cred.loaded_at
                )
                if cred.expires_at is not None:
                    expiry.add_metric(values, cred.expires_at)
                has_expiry = "true" if cred.expires_at is not None else "false"
                info.add_metric([*values, current.label, cred.fingerprint, has_expiry], 1)
            valid.add_metric(values, 1 if route.valid(now) else 0)
            for reason, count in route.load_errors().items():
                load_errors.add_metric([route.route, reason], count)
            for result in REFRESH_RESULTS:
                refreshes.add_metric([*values, result], route.refreshes.get(result, 0))
        yield from (age, expiry, issued, info, valid, load_errors, refreshes)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class StateCollector(Collector):
    """Process state at scrape time: readiness and the last config reload."""

    def __init__(
        self,
        ready: Callable[[], bool],
        reload_state: Callable[[], tuple[bool, float]],
    ) -> None:
        self._ready = ready
        self._reload_state = reload_state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "amperity_proxy_ready",
            "1 when /readyz answers 200 (not draining, every route has a token).",
            value=1 if self._ready() else 0,
        )
        successful, timestamp = self._reload_state()
        yield GaugeMetricFamily(
            "amperity_proxy_config_last_reload_successful",
            "1 when the last config (re)load succeeded.",
            value=1 if successful else 0,
        )
        yield GaugeMetricFamily(
            "amperity_proxy_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (start-up or reload).",
            value=timestamp,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


def expose(registry: CollectorRegistry, *collectors: Collector) -> CollectorRegistry:
    """Register the scrape-time collectors; return what /metrics serves: this process's
    registry, or with `run --workers N` (prometheus-client multiprocess mode) the counters of
    every worker, aggregated, plus the collectors."""
    exposition = registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        exposition = CollectorRegistry()
        MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]
    for collector in collectors:
        registry.register(collector)
        if exposition is not registry:
            exposition.register(collector)
    return exposition
