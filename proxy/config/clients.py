"""Named client tokens (`listen.clients`) and which routes each may use (a route's `clients`).

A shared deployment serves several teams' tools: each gets its own token, and a route names the
clients that may use it. The name goes into the access log and metrics; the token never does.
`listen.client_token` (one token for every client and route) keeps working; the two together
are an error, since a token without a name would slip past every route's list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.config.readers import Errors, join, mapping, string
from proxy.config.sources import SECRET_KINDS, TokenSource, parse_source

_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class NamedClient:
    name: str  # a label in logs and metrics
    token: TokenSource  # env or file: the secret the client presents


def parse_clients(raw: object, errs: Errors) -> tuple[NamedClient, ...]:
    """`listen.clients: [{name, token: {env|file}}, ...]`."""
    if not isinstance(raw, list) or not raw:
        errs.add("listen.clients", "expected a list of {name: ..., token: {env: ...}} entries")
        return ()
    clients, seen = [], set()
    for i, item in enumerate(raw):
        path = f"listen.clients[{i}]"
        m = mapping(item, path, errs, ("name", "token"))
        if m is None:
            continue
        name = client_name(m.get("name"), join(path, "name"), errs)
        if name is not None and name in seen:
            errs.add(join(path, "name"), f"duplicate client name {errs.show(name)}")
        token = None
        if m.get("token") is None:
            errs.add(join(path, "token"), "missing: {env: NAME} or {file: PATH}")
        else:
            token = parse_source(m["token"], join(path, "token"), errs, SECRET_KINDS)
        if name is not None and token is not None and name not in seen:
            clients.append(NamedClient(name, token))
        seen.add(name)
    return tuple(clients)


def client_name(raw: object, path: str, errs: Errors) -> str | None:
    text = string(raw, path, errs)
    if text is not None and not _NAME.fullmatch(text):
        errs.add(
            path,
            f"expected a lower-case name like ci-exports (a-z 0-9 . _ -), got {errs.show(text)}",
        )
        return None
    return text


def parse_route_clients(raw: object, path: str, errs: Errors) -> frozenset[str] | None:
    """A route's `clients: [name, ...]`."""
    if not isinstance(raw, list) or not raw:
        errs.add(path, "expected a non-empty list of client names from listen.clients")
        return None
    names = [client_name(item, f"{path}[{i}]", errs) for i, item in enumerate(raw)]
    return frozenset(n for n in names if n is not None)


def check_clients(
    clients: tuple[NamedClient, ...], single_token: bool, routes: object, errs: Errors
) -> None:
    """Every route names only known clients; with `listen.clients`, every route names some.
    Judged on the routes as written, so it is reported with any other problem of a route."""
    known = {c.name for c in clients}
    route_clients = [_written(item) for item in routes] if isinstance(routes, list) else []
    if clients and single_token:
        errs.add(
            "listen.client_token",
            "use one of listen.client_token (one token for all) and listen.clients (named "
            "tokens per route): drop client_token and give its holder a listen.clients entry",
        )
    for i, names in enumerate(route_clients):
        path = f"routes[{i}].clients"
        if names is None:
            if clients:
                errs.add(
                    path,
                    "missing: listen.clients is set, so list the clients that may "
                    "use this route (for example [ci-exports])",
                )
            continue
        if not clients:
            errs.add(path, "names clients, but listen.clients defines none")
            continue
        for name in sorted(names - known):
            errs.add(
                path,
                f"unknown client {errs.show(name)}; defined in listen.clients: "
                f"{', '.join(sorted(known))}",
            )


def _written(item: object) -> frozenset[str] | None:
    raw = item.get("clients") if isinstance(item, dict) else None
    return frozenset(str(n) for n in raw) if isinstance(raw, list) else None
