"""What the admin listener's /metrics serves: this process's registry, or under `run --workers
N` every worker's counters aggregated (prometheus-client's multiprocess mode), with the
scrape-time collectors and prometheus-client's process and runtime collectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from proxy.observe.metrics import ProxyMetrics, multiprocess


@dataclass(frozen=True)
class Exposition:
    """What /metrics serves: `registry`, after `before` (binding the routes' pending series)."""

    registry: CollectorRegistry
    before: Callable[[], None]

    def latest(self) -> bytes:
        self.before()
        return generate_latest(self.registry)


def expose(
    registry: CollectorRegistry, metrics: ProxyMetrics, *collectors: Collector
) -> Exposition:
    """Register the scrape-time collectors; return what /metrics serves: this process's
    registry, or with `run --workers N` (prometheus-client multiprocess mode) the counters of
    every worker, aggregated, plus the collectors."""
    exposition = registry
    if multiprocess():
        exposition = CollectorRegistry()
        MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]
    # process_* (RSS, CPU, open fds, start time) and python_* (GC, version), as operators expect
    # from prometheus-client; of the process that serves /metrics (worker 0 under --workers).
    ProcessCollector(registry=exposition)
    PlatformCollector(registry=exposition)
    GCCollector(registry=exposition)
    for collector in collectors:
        registry.register(collector)
        if exposition is not registry:
            exposition.register(collector)
    return Exposition(exposition, metrics.bind_pending)
