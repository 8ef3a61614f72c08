"""A route's upstream, computed once at load time: everything a request to it needs besides
its own path, headers, body and credential. No Route object travels past here."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from proxy.config import BaseURL, Route, Timeouts
from proxy.config.traffic import RetryPolicy
from proxy.upstream.bodies import BodyClock


@dataclass(frozen=True, slots=True)
class Plan:
    """How to reach one route's upstream."""

    name: str  # the route's name: metric and log label
    tenant: str
    tenant_headers: tuple[str, ...]  # the header(s) that name it upstream (the api preset's)
    base_url: BaseURL
    url_prefix: str  # origin + base path, e.g. "https://acme.amperity.com/api"
    host_header: str
    api_version: str | None  # sent when the client sent none
    ssl_context: ssl.SSLContext
    timeouts: Timeouts  # as configured (connect, read, total)
    max_body_bytes: int | None
    retry_body_limit: int  # largest body kept for a replay
    retry: RetryPolicy | None  # back-off on 429/503
    body_timeout: float  # longest silence while reading the client's body (limits.body_timeout)
    body_deadline: float  # longest time for the whole body (limits.body_deadline)
    # http://<base host>[:port]<base path>: how a forward-mode client sees the base URL
    forward_base: str

    @classmethod
    def of(
        cls, route: Route, ssl_context: ssl.SSLContext, body_timeout: float, body_deadline: float
    ) -> Plan:
        t = route.timeouts
        base = route.base_url
        return cls(
            name=route.name,
            tenant=route.tenant,
            tenant_headers=route.tenant_headers,
            base_url=base,
            url_prefix=str(base),
            host_header=base.host_header,
            api_version=route.api_version,
            ssl_context=ssl_context,
            timeouts=t,
            max_body_bytes=route.max_body_bytes,
            retry_body_limit=route.retry_body_limit,
            retry=route.retry,
            body_timeout=body_timeout,
            body_deadline=body_deadline,
            forward_base=f"http://{base.host_header}{base.path}",
        )

    def body_clock(self) -> BodyClock:
        """The deadlines for one request's body, starting now."""
        return BodyClock(self.body_timeout, self.body_deadline)
