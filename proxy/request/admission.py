"""Admission: turn a raw request into the route it may use, or a refusal.

The order is fixed and cheap-first: client network, method (CONNECT/TRACE/Upgrade), client
token, browser protections, then the target — reverse mode (`/prefix/...`) through the
`RouteTable`, forward mode (`http://host/...`, from clients whose HTTP_PROXY is the proxy)
through the `HostTable` — then the path checks and the route's own policy. Nothing that is
refused here reaches the upstream or even a DNS lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from proxy.config import Route
from proxy.refusals import Refusal
from proxy.request.gate import Gate, method_refusal, route_policy
from proxy.request.routing import (
    FRAGMENT,
    AbsoluteTarget,
    HostEntry,
    HostTable,
    RouteTable,
    parse_absolute_target,
    path_problem,
)
from proxy.upstream.headers import normalize

_TENANT_HEADERS = frozenset({"amperity-tenant", "x-amperity-tenant"})
_MAX_ECHOED_PATH = 200


class HasRoute(Protocol):
    @property
    def route(self) -> Route: ...

    @property
    def forward_base(self) -> str: ...


T = TypeVar("T", bound=HasRoute)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    target: T
    rest: str  # raw path after the prefix / base path
    query: str  # "" or "?..."
    public_base: str  # how the client reaches the route's base URL through the proxy
    log_path: str  # what the access log shows (never the query)


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_ECHOED_PATH else text[:_MAX_ECHOED_PATH] + "..."


class Admission(Generic[T]):
    """Every check between a raw request and the route it is sent with."""

    def __init__(self, gate: Gate, prefixes: RouteTable[T], hosts: HostTable[T]) -> None:
        self.gate = gate
        self.prefixes = prefixes
        self.hosts = hosts
        self._prefix_list = ", ".join(prefixes.prefixes)

    def admit(self, request: web.BaseRequest) -> Admitted[T] | Refusal:
        """The route and rewritten target for a request, or why it is refused."""
        raw = request.raw_path
        forward = not raw.startswith("/")
        refusal = (
            self.gate.client(request.remote)
            or method_refusal(request)
            or self.gate.client_token(request, forward=forward)
            or self.gate.browser(request, forward=forward)
        )
        if refusal is not None:
            return refusal
        admitted = self._forward(request, raw) if forward else self._reverse(request, raw)
        if isinstance(admitted, Refusal):
            return admitted
        return route_policy(admitted.target.route, request.method, admitted.rest) or admitted

    def _reverse(self, request: web.BaseRequest, raw: str) -> Admitted[T] | Refusal:
        if "#" in raw:
            return Refusal(400, "bad_target", FRAGMENT)
        path, sep, query = raw.partition("?")
        problem = path_problem(path)
        if problem is not None:
            return Refusal(400, "bad_path", f"refused path: {problem}")
        match = self.prefixes.match(path)
        if match is None:
            return Refusal(
                404,
                "no_route",
                f"no route for {_shown(path)}; configured prefixes: {self._prefix_list}",
            )
        public_base = f"http://{request.host}{match.prefix}"
        return Admitted(match.target, match.rest, sep + query, public_base, path)

    def _forward(self, request: web.BaseRequest, raw: str) -> Admitted[T] | Refusal:
        parsed = parse_absolute_target(raw)
        if isinstance(parsed, str):
            if raw == "*":
                parsed = "'*' request targets are not supported"
            return Refusal(400, "bad_target", parsed)
        problem = path_problem(parsed.path)
        if problem is not None:
            return Refusal(400, "bad_path", f"refused path: {problem}")
        matches = self.hosts.match(parsed)
        if matches is None:
            # SECURITY: never an open proxy; no connection and no DNS lookup for such a host.
            return Refusal(
                403,
                "foreign_host",
                f"this proxy only forwards to its configured Amperity hosts "
                f"({', '.join(self.hosts.hosts)}); {_shown(parsed.host)} is not one of them",
            )
        if not matches:
            return Refusal(
                404,
                "no_route",
                f"no route for http://{parsed.authority}{_shown(parsed.path)}; "
                f"{self.hosts.mismatch(parsed)}",
            )
        chosen = self._pick_tenant(request, parsed, matches)
        if isinstance(chosen, Refusal):
            return chosen
        entry, rest = chosen
        log_path = f"http://{parsed.authority}{parsed.path}"
        return Admitted(entry.target, rest, parsed.query, entry.target.forward_base, log_path)

    @staticmethod
    def _pick_tenant(
        request: web.BaseRequest, parsed: AbsoluteTarget, matches: list[tuple[HostEntry[T], str]]
    ) -> tuple[HostEntry[T], str] | Refusal:
        """Several routes can share a host (AWS tenants on app.amperity.com): the client's
        Amperity-Tenant header picks one. SECURITY: never send another tenant's token."""
        hints = {
            v.strip().lower() for k, v in request.headers.items() if normalize(k) in _TENANT_HEADERS
        }
        tenants = ", ".join(sorted(e.tenant for e, _ in matches))
        if len(hints) > 1:
            return Refusal(421, "ambiguous_tenant", "conflicting Amperity-Tenant headers")
        if not hints:
            if len(matches) == 1:
                return matches[0]
            return Refusal(
                421,
                "ambiguous_tenant",
                f"several routes serve http://{parsed.authority}; send an Amperity-Tenant "
                f"header naming one of: {tenants}",
            )
        hint = hints.pop()
        for entry, rest in matches:
            if entry.tenant == hint:
                return entry, rest
        return Refusal(
            421,
            "ambiguous_tenant",
            f"no route for http://{parsed.authority} serves tenant {_shown(hint)!r}; "
            f"send an Amperity-Tenant header naming one of: {tenants}",
        )
