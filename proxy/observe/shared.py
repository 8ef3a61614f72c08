"""Metrics of the shared rate-limit state (`shared.redis`, see `request.shared`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SharedMetrics:
    """The shared rate-limit state (`shared.redis`): reachable or not, how long this process
    paced locally, the round trip of a decision, and decisions by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "amperity_proxy_shared_state_up",
            "1 while the shared rate-limit state (Redis) answers in time, 0 while this process "
            "paces locally at shared.redis.fallback_share of each rate.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.fallback_seconds = Counter(
            "amperity_proxy_shared_fallback_seconds",
            "Seconds this process paced locally because Redis was slow or down (counted when "
            "Redis answers again).",
            registry=registry,
        )
        self.roundtrip = Histogram(
            "amperity_proxy_shared_roundtrip_seconds",
            "Round trip of one shared rate-limit decision on Redis.",
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        )
        self.decisions = Counter(
            "amperity_proxy_shared_decisions",
            "Shared rate-limit decisions: immediate, wait (a slot later), refused (beyond "
            "max_wait: local 429), fallback (Redis unreachable: decided locally), bad_reply (a "
            "reply the script can't give: decided locally).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("immediate", "wait", "refused", "fallback", "bad_reply"):
            self.decisions.labels(outcome)
