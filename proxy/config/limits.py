"""Protocol and resource limits (`limits:`): sizes, deadlines, connection caps, parser choice.

Every default is a safe one; docs/security.md lists them with what happens beyond each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.readers import Errors, join, mapping, number, positive


@dataclass(frozen=True)
class Limits:
    """Protocol and resource limits; every default is a safe one (see docs/security.md)."""

    max_request_line: int = 8190  # bytes -> 414
    max_header_size: int = 8190  # bytes per header line -> 431
    max_headers: int = 100  # -> 431
    header_timeout: float = 30.0  # seconds to receive complete request headers -> 408
    body_timeout: float = 60.0  # longest silence while receiving a request body -> 408
    max_connections: int = 4096  # concurrent client connections; beyond -> 503
    # One non-loopback address's connections (TLS handshakes included); None: max_connections
    # // 4. Loopback and Unix-socket peers (every tool of a sidecar) count toward the cap only.
    max_connections_per_address: int | None = None
    upstream_connections: int = 100  # upstream connections in use at once, in all
    # Absolute caps on one route's, or one client's, connections on top of the fair-share rule
    # (proxy.upstream.slots: none holds more than the pool less its reserve); None: the rule.
    upstream_connections_per_route: int | None = None
    upstream_connections_per_client: int | None = None
    upstream_queue_wait: float = 1.0  # seconds a request waits for a slot -> 503 upstream_busy
    body_deadline: float = 600.0  # seconds for a whole request body, however it trickles -> 408
    allow_pure_python_parser: bool = False  # start even without aiohttp's C (llhttp) parser

    @property
    def per_address(self) -> int:
        """`max_connections_per_address`, or its default."""
        if self.max_connections_per_address is not None:
            return self.max_connections_per_address
        return max(1, self.max_connections // 4)


_LIMIT_INTS = (
    "max_request_line",
    "max_header_size",
    "max_headers",
    "max_connections",
    "max_connections_per_address",
    "upstream_connections",
    "upstream_connections_per_route",
    "upstream_connections_per_client",
)
_NULLABLE = frozenset(
    {
        "max_connections_per_address",
        "upstream_connections_per_route",
        "upstream_connections_per_client",
    }
)
_LIMIT_SECONDS = ("header_timeout", "body_timeout", "upstream_queue_wait", "body_deadline")


def parse_limits(raw: object, errs: Errors) -> Limits:
    """The `limits:` section; every error with its path."""
    if raw is None:
        return Limits()
    keys = (*_LIMIT_INTS, *_LIMIT_SECONDS, "allow_pure_python_parser")
    m = mapping(raw, "limits", errs, keys)
    if m is None:
        return Limits()
    values: dict[str, Any] = {}
    for key in _LIMIT_INTS:
        if key in _NULLABLE and key in m and m[key] is None:
            continue  # null: the default rule
        if key in m:
            value = number(m[key], join("limits", key), errs, integer=True)
            if value is not None and value < 1:
                errs.add(join("limits", key), f"must be at least 1, got {errs.show(int(value))}")
            elif value is not None:
                values[key] = int(value)
    for key in _LIMIT_SECONDS:
        if key in m:
            seconds = positive(m[key], join("limits", key), errs)
            if seconds is not None:
                values[key] = seconds
    if "allow_pure_python_parser" in m:
        if isinstance(m["allow_pure_python_parser"], bool):
            values["allow_pure_python_parser"] = m["allow_pure_python_parser"]
        else:
            errs.add("limits.allow_pure_python_parser", "expected true or false")
    total = values.get("upstream_connections", Limits.upstream_connections)
    for key in ("upstream_connections_per_route", "upstream_connections_per_client"):
        share = values.get(key)
        if share is not None and share > total:
            errs.add(
                join("limits", key),
                f"{share} is more than limits.upstream_connections ({total}); a cap can't "
                "exceed the whole: lower it, raise upstream_connections, or drop it (null: no "
                "route or client holds more than the pool less its reserve)",
            )
    return Limits(**values)
