"""Prometheus metrics: request counters in an injected registry, token state at scrape time.

Labels come only from the config (route, tenant) or from small fixed sets (code, reason):
never from paths, queries or tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.access import REJECT_REASONS as ACCESS_REJECT_REASONS
from proxy.tokens import LOAD_ERROR_REASONS, TokenStatus

UPSTREAM_ERROR_REASONS = ("connect", "tls", "timeout", "reset")
REJECT_REASONS = ("no_route", "bad_path", "bad_target", *ACCESS_REJECT_REASONS)
# Amperity API calls range from milliseconds to minutes (large exports).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ProxyMetrics:
    """The request-path metrics, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.unauthorized = Counter(
            "amperity_proxy_upstream_unauthorized",
            "Upstream 401 responses.",
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
        self.unauthorized = metrics.unauthorized.labels(route, tenant)
        self.duration = metrics.duration.labels(route, tenant)
        self.errors = {
            reason: metrics.upstream_errors.labels(route, tenant, reason)
            for reason in UPSTREAM_ERROR_REASONS
        }
        self._responses: dict[int, Counter] = {}

    def response(self, status: int) -> None:
        child = self._responses.get(status)
        if child is None:
            child = self._metrics.responses.labels(*self._labels, str(status))
            self._responses[status] = child
        child.inc()
        if status == 401:
            self.unauthorized.inc()


class TokenCollector(Collector):
    """Token age, issue and expiry times, and load errors, read from the store at scrape time."""

    def __init__(
        self,
        snapshot: Callable[[], Iterable[TokenStatus]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
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
        load_errors = CounterMetricFamily(
            "amperity_proxy_token_load_errors",
            "Failed reads of a route's token source, by reason.",
            labels=["route", "reason"],
        )
        for status in self._snapshot():
            values = [status.route, status.tenant]
            cred = status.credential
            if cred is not None:
                age.add_metric(values, cred.age(now))
                issued.add_metric(
                    values, cred.issued_at if cred.issued_at is not None else cred.loaded_at
                )
                if cred.expires_at is not None:
                    expiry.add_metric(values, cred.expires_at)
            for reason in LOAD_ERROR_REASONS:
                load_errors.add_metric([status.route, reason], status.load_errors.get(reason, 0))
        yield from (age, expiry, issued, load_errors)

    def describe(self) -> Iterator[Metric]:
        return iter(())
