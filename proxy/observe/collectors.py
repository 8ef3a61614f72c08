"""Metrics computed at scrape time (client_python's custom collectors): every route's token
state from the store's snapshot, and the process's readiness and last reload. Nothing here is
updated per request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.tokens import RouteStatus

REFRESH_RESULTS = ("success", "failure")


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
        reload_state: Callable[[], tuple[bool, float, bool]],
    ) -> None:
        self._ready = ready
        self._reload_state = reload_state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "amperity_proxy_ready",
            "1 when /readyz answers 200 (not draining, every route has a token).",
            value=1 if self._ready() else 0,
        )
        successful, timestamp, pending = self._reload_state()
        yield GaugeMetricFamily(
            "amperity_proxy_config_restart_pending",
            "1 when a reload changed a setting that applies only after a restart (kept as it "
            "runs until then; the reload's answer, the log and /status.json name it).",
            value=1 if pending else 0,
        )
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
