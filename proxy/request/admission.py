"""Admission: turn a raw request into the route it may use, or a refusal.

The order is fixed and cheap-first: client network, method (CONNECT/TRACE/Upgrade), client
token, browser protections, then the target — reverse mode (`/prefix/...`) through the
`RouteTable`, forward mode (`http://host/...`, from clients whose HTTP_PROXY is the proxy)
through the `HostTable` — then the path checks and the route's own policy. Nothing that is
refused here reaches the upstream or even a DNS lookup.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from proxy.config import Route
from proxy.gate import Gate
from proxy.refusals import Refusal, refuse
from proxy.request.routing import (
    FRAGMENT,
    AbsoluteTarget,
    HostEntry,
    HostTable,
    RouteTable,
    parse_absolute_target,
    path_problem,
)
from proxy.upstream.bodies import CONTINUE_EXPECTATION
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
    client: str | None = None  # the named client (listen.clients) that presented its token


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
        refusal = self.gate.client(request.remote) or method_refusal(request)
        if refusal is not None:
            return refusal
        client = self.gate.identify(request, forward=forward)
        if isinstance(client, Refusal):
            return client
        refusal = self.gate.browser(request, forward=forward)
        if refusal is not None:
            return refusal
        admitted = self._forward(request, raw) if forward else self._reverse(request, raw)
        if isinstance(admitted, Refusal):
            return admitted
        route = admitted.target.route
        refusal = route_policy(route, request.method, admitted.rest) or client_policy(route, client)
        if refusal is not None:
            return refusal
        if client:  # a named client: the access log and metrics carry its name
            admitted = dataclasses.replace(admitted, client=client)
        return admitted

    def _reverse(self, request: web.BaseRequest, raw: str) -> Admitted[T] | Refusal:
        if "#" in raw:
            return refuse("bad_target", FRAGMENT)
        path, sep, query = raw.partition("?")
        problem = path_problem(path)
        if problem is not None:
            return refuse("bad_path", f"refused path: {problem}")
        match = self.prefixes.match(path)
        if match is None:
            return refuse(
                "no_route",
                f"no route for {_shown(path)}; configured prefixes: {self._prefix_list}",
            )
        public_base = f"{request.scheme}://{request.host}{match.prefix}"  # https on listen.tls
        return Admitted(match.target, match.rest, sep + query, public_base, path)

    def _forward(self, request: web.BaseRequest, raw: str) -> Admitted[T] | Refusal:
        parsed = parse_absolute_target(raw)
        if isinstance(parsed, str):
            if raw == "*":
                parsed = "'*' request targets are not supported"
            return refuse("bad_target", parsed)
        problem = path_problem(parsed.path)
        if problem is not None:
            return refuse("bad_path", f"refused path: {problem}")
        matches = self.hosts.match(parsed)
        if matches is None:
            # SECURITY: never an open proxy; no connection and no DNS lookup for such a host.
            return refuse(
                "foreign_host",
                f"this proxy only forwards to its configured Amperity hosts "
                f"({', '.join(self.hosts.hosts)}); {_shown(parsed.host)} is not one of them",
            )
        if not matches:
            return refuse(
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
            return refuse("ambiguous_tenant", "conflicting Amperity-Tenant headers")
        if not hints:
            if len(matches) == 1:
                return matches[0]
            return refuse(
                "ambiguous_tenant",
                f"several routes serve http://{parsed.authority}; send an Amperity-Tenant "
                f"header naming one of: {tenants}",
            )
        hint = hints.pop()
        for entry, rest in matches:
            if entry.tenant == hint:
                return entry, rest
        return refuse(
            "ambiguous_tenant",
            f"no route for http://{parsed.authority} serves tenant {_shown(hint)!r}; "
            f"send an Amperity-Tenant header naming one of: {tenants}",
        )


# The methods the proxy forwards (route policies may narrow them).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_refusal(request: web.BaseRequest) -> Refusal | None:
    """CONNECT, TRACE, protocol upgrades and unknown expectations are never proxied."""
    if request.method == "CONNECT":
        return refuse(
            "connect",
            "CONNECT is not supported: an HTTPS tunnel can't carry an injected credential. "
            "Use http:// URLs through the proxy; it upgrades them to HTTPS itself",
        )
    if request.method == "TRACE":
        return refuse("unsupported_method", "TRACE is not allowed")
    if request.method not in _METHODS:
        # Methods are case-sensitive tokens; `get` is not GET. llhttp refuses unknown methods
        # itself; the pure-Python parser accepts any token, so both end up here.
        return refuse(
            "unsupported_method",
            f"method {request.method[:20]!r} is not supported; use one of "
            + ", ".join(sorted(_METHODS)),
        )
    if "Upgrade" in request.headers:
        return refuse(
            "upgrade", "protocol upgrades (WebSocket, h2c) are not supported by this proxy"
        )
    expect = request.headers.get("Expect")
    if expect is not None and expect.strip().lower() != CONTINUE_EXPECTATION:
        # RFC 9110 §10.1.1: a server "MAY respond with a 417 (Expectation Failed)" to an
        # expectation other than 100-continue.
        return refuse(
            "bad_expect",
            f"Expect: {expect[:40]!r} is not supported; only Expect: 100-continue is",
        )
    return None


def client_policy(route: Route, client: str | None) -> Refusal | None:
    """SECURITY: a named client may use only the routes that list it (`routes[].clients`)."""
    if route.clients is None or client in route.clients:
        return None
    return refuse(
        "client_route",
        f"client {client!r} may not use route {route.name}; add it to that route's clients "
        "in the proxy's config, or use a route that lists it",
    )


def route_policy(route: Route, method: str, rest: str) -> Refusal | None:
    """A route's `methods` and `paths` restrictions, checked before anything is sent."""
    if route.methods is not None and method not in route.methods:
        return refuse(
            "route_method",
            f"route {route.name} allows only {', '.join(sorted(route.methods)) or 'no methods'}",
        )
    if route.paths is not None and not route.paths.fullmatch(rest):
        return refuse(
            "forbidden_path",
            f"route {route.name} does not allow this path; allowed (after the prefix): "
            + ", ".join(route.paths.patterns),
        )
    return None
