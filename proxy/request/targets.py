"""What each route of one config generation maps to, and the admission that finds it.

Built once per generation (at start and on each reload): the route's upstream plan, its bound
metric children and its token generation, reachable by prefix (reverse mode) and by host,
port and base path (forward mode).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config import Config, Route
from proxy.gate import Gate
from proxy.observe.metrics import ProxyMetrics, RouteMetrics
from proxy.request.admission import Admission
from proxy.request.routing import HostEntry, HostTable, RouteTable
from proxy.tokens import RouteState
from proxy.upstream.plan import Plan


@dataclass(frozen=True, slots=True)
class Target:
    """What a route maps to in one config generation: the route, its upstream plan, its bound
    metrics and the generation of its tokens. SECURITY: a request reads (and after a 401
    recovers) its credential only from `tokens`, never by route name."""

    route: Route
    plan: Plan
    metrics: RouteMetrics
    tokens: RouteState

    @property
    def forward_base(self) -> str:
        return self.plan.forward_base


def admit(
    config: Config,
    contexts: Mapping[str, ssl.SSLContext],
    clients: Mapping[str, str],
    tokens: Mapping[str, RouteState],
    metrics: ProxyMetrics,
) -> Admission[Target]:
    """The admission for one config generation (`tokens`: that generation's token states)."""
    prefixes, hosts = [], []
    for route in config.routes:
        base = route.base_url
        plan = Plan.of(
            route, contexts[route.name], config.limits.body_timeout, config.limits.body_deadline
        )
        # SECURITY: this generation's tokens, for this Target only
        target = Target(
            route, plan, metrics.for_route(route.name, route.tenant, route.api), tokens[route.name]
        )
        prefixes.append((route.prefix, target))
        hosts.append(
            HostEntry(base.host, base.port, base.default_port, base.path, route.tenant, target)
        )
    return Admission(Gate(config.listen, clients), RouteTable(prefixes), HostTable(hosts))
