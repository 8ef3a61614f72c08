"""Rate-limit pacing and retry settings (`rate_limit:` and `retry:` on a route or in defaults).

Amperity answers 429 beyond about 10 requests per second per endpoint; both settings are off by
default. Pure: patterns are compiled here (on RE2), nothing runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.config.patterns import PatternSet
from proxy.config.readers import Errors, join, mapping, number, pattern_set, positive

RateKey = Literal["endpoint", "route", "tenant"]
RateStore = Literal["local", "shared"]

# Path segments that identify a resource rather than an endpoint: UUIDs, runs of 3+ digits,
# and hex runs of 12+ characters (Amperity ids). `/segments/123` and `/segments/456` are one
# endpoint: `GET /segments/{id}`.
DEFAULT_ID_PATTERNS = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    r"[0-9]{3,}",
    r"[0-9a-fA-F]{12,}",
)


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: float
    burst: int
    max_wait: float  # seconds a request may wait for a slot; beyond: local 429 + Retry-After
    key: RateKey | None  # None as written: the api preset's (config.presets), resolved at parse
    id_patterns: PatternSet  # RE2 (proxy.config.patterns): linear time, whatever the path
    # Where the bucket lives: this process, or `shared.redis` (every process that uses it).
    # Written as None, resolved by parse_config: shared when `shared:` is configured.
    store: RateStore | None = None
    budget_tenant: str | None = None  # key tenant: whose budget (a sandbox's production tenant)
    documented: bool = False  # `rate_limit: documented`: the preset's numbers, set at parse


@dataclass(frozen=True)
class RetryPolicy:
    on: frozenset[int]  # upstream statuses that are retried (replayable requests only)
    attempts: int  # total sends, the first included
    base: float  # seconds; full-jitter exponential back-off: uniform(0, min(max, base * 2**n))
    max: float  # seconds; also caps an upstream's Retry-After


def parse_rate_limit(raw: object, path: str, errs: Errors) -> RateLimit | None:
    if raw is None:
        return None
    if raw == "documented":  # the api preset's documented budget, filled in by the preset
        patterns = pattern_set(list(DEFAULT_ID_PATTERNS), path, errs)
        assert patterns is not None
        return RateLimit(1.0, 1, 30.0, None, patterns, documented=True)
    keys = (
        "requests_per_second",
        "burst",
        "max_wait",
        "key",
        "id_patterns",
        "store",
        "budget_tenant",
    )
    m = mapping(raw, path, errs, keys)
    if m is None:
        return None
    rate = positive(m.get("requests_per_second", 10), join(path, "requests_per_second"), errs)
    burst = number(m.get("burst", 10), join(path, "burst"), errs, integer=True)
    if burst is not None and burst < 1:
        errs.add(join(path, "burst"), f"must be at least 1, got {errs.show(int(burst))}")
        burst = None
    max_wait = positive(m.get("max_wait", 30), join(path, "max_wait"), errs)
    key = m.get("key")
    if key not in (None, "endpoint", "route", "tenant"):
        errs.add(join(path, "key"), f"expected endpoint, tenant or route, got {errs.show(key)}")
        key = "invalid"
    store = m.get("store")
    if store not in (None, "local", "shared"):
        errs.add(join(path, "store"), f"expected local or shared, got {errs.show(store)}")
        store = None
    raw_patterns = m.get("id_patterns", list(DEFAULT_ID_PATTERNS))
    patterns = pattern_set(raw_patterns, join(path, "id_patterns"), errs)
    budget = m.get("budget_tenant")
    if budget is not None and not isinstance(budget, str):
        errs.add(join(path, "budget_tenant"), f"expected a tenant id, got {errs.show(budget)}")
        budget = None
    if rate is None or burst is None or max_wait is None or key == "invalid" or patterns is None:
        return None
    return RateLimit(rate, int(burst), max_wait, key, patterns, store, budget)  # type: ignore[arg-type]


def parse_retry(raw: object, path: str, errs: Errors) -> RetryPolicy | None:
    if raw is None:
        return None
    m = mapping(raw, path, errs, ("on", "attempts", "base", "max"))
    if m is None:
        return None
    statuses = m.get("on", [429, 503])
    on: set[int] = set()
    if not isinstance(statuses, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in statuses
    ):
        errs.add(
            join(path, "on"), f"expected a list of 4xx/5xx status codes, got {errs.show(statuses)}"
        )
    else:
        on = set(statuses)
    attempts = number(m.get("attempts", 3), join(path, "attempts"), errs, integer=True)
    if attempts is not None and not 1 <= attempts <= 10:
        errs.add(
            join(path, "attempts"), f"must be between 1 and 10, got {errs.show(int(attempts))}"
        )
        attempts = None
    base = positive(m.get("base", 0.5), join(path, "base"), errs)
    cap = positive(m.get("max", 8), join(path, "max"), errs)
    if attempts is None or base is None or cap is None or not on:
        return None
    return RetryPolicy(frozenset(on), int(attempts), base, cap)
