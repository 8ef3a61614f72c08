"""Which route a request belongs to, and which paths are refused before routing.

`RouteTable` is built once from the configured prefixes. Matching works on the raw (still
percent-encoded) path, on segment boundaries, longest prefix first, with a dict lookup on the
first segment so the cost does not grow with the number of routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

# RFC 9112 §3.2: a request target never carries a fragment. A URL library drops it, so a route
# policy would judge `/segments/abc#/profiles` while `/segments/abc` is sent: such targets are
# refused in both modes, and the policy always judges exactly the path that goes upstream.
FRAGMENT = "the request target must not contain a fragment (#)"

# How many rounds of percent-decoding are checked: `%252e` is `%2e` after one round and `.` after
# two. An upstream (or a component in front of it) that decodes twice must not see a dot segment.
_DECODE_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    target: T
    prefix: str
    rest: str  # the raw path after the prefix: "" or "/..."


class RouteTable(Generic[T]):
    """Prefix → target, matched on segment boundaries (`/acme` never matches `/acmeevil`)."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        by_first: dict[str, list[tuple[str, T]]] = {}
        for prefix, target in entries:
            first = prefix[1:].split("/", 1)[0]
            by_first.setdefault(first, []).append((prefix, target))
        for candidates in by_first.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)  # longest wins
        self._by_first = by_first
        self.prefixes = tuple(sorted(p for c in by_first.values() for p, _ in c))

    def match(self, path: str) -> Match[T] | None:
        """The route for a raw path (no query string), or None."""
        first = path[1:].split("/", 1)[0]
        for prefix, target in self._by_first.get(first, ()):
            if path == prefix:
                return Match(target, prefix, "")
            if path.startswith(prefix) and path[len(prefix)] == "/":
                return Match(target, prefix, path[len(prefix) :])
        return None


def path_problem(path: str) -> str | None:
    """Why a raw path is refused before routing, or None when it is acceptable.

    SECURITY: dot segments, encoded slashes/backslashes, raw backslashes and NULs are how a
    path escapes its prefix (`/acme/%2e%2e/other`); the Amperity API never needs them.
    """
    if not path.startswith("/"):
        return "the request target must be a path starting with '/'"
    if "\\" in path:
        return "the path contains a backslash"
    if "\x00" in path:
        return "the path contains a NUL byte"
    for segment in path.split("/"):
        decoded = segment
        for _ in range(_DECODE_ROUNDS + 1):
            # SECURITY: servlet-style servers drop `;parameters` before resolving dot segments,
            # so `..;` (and `%2e%2e;`, `..%3b`) is `..` to them.
            if decoded.partition(";")[0] in (".", ".."):
                return (
                    "the path contains a '.' or '..' segment (raw, percent-encoded or with ;params)"
                )
            if "/" in decoded or "\\" in decoded or "\x00" in decoded:
                return "the path contains an encoded slash, backslash or NUL (%2f, %5c, %00)"
            if "%" not in decoded:
                break
            decoded = unquote(decoded, errors="surrogateescape")
    return None


@dataclass(frozen=True, slots=True)
class AbsoluteTarget:
    """An absolute-form request target (`GET http://host:port/path?query`), already checked."""

    host: str  # lower case, no trailing dot, no brackets
    port: int
    path: str
    query: str  # "" or "?..."

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def parse_absolute_target(raw: str) -> AbsoluteTarget | str:
    """Parse an absolute-form target; a string result says why it is refused."""
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() != "http":
        return (
            "only http:// URLs can go through the proxy (it upgrades them to HTTPS itself); "
            f"got scheme {scheme.lower()!r}"
        )
    if "#" in rest:
        return FRAGMENT
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, remainder = rest[:cut], rest[cut:]
    if "@" in authority:
        return "user info (user@host) is not allowed in the request target"
    if "%" in authority:
        return "percent-encoding is not allowed in the host"
    if authority.startswith("["):
        host, _, port_text = authority[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = authority.partition(":")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) <= 65535):
        return f"invalid port in the request target: {port_text!r}"
    host = host.lower().rstrip(".")
    if not host:
        return "the request target has no host"
    path, qsep, query = remainder.partition("?")
    return AbsoluteTarget(host, int(port_text) if port_text else 80, path or "/", qsep + query)


@dataclass(frozen=True, slots=True)
class HostEntry(Generic[T]):
    host: str
    port: int
    default_port: bool  # the base URL uses its scheme's default port
    base_path: str
    tenant: str
    target: T


class HostTable(Generic[T]):
    """Forward-proxy matching: (host, port, path under the base path) → routes; exact hosts only."""

    def __init__(self, entries: Iterable[HostEntry[T]]) -> None:
        by_host: dict[str, list[HostEntry[T]]] = {}
        for entry in entries:
            by_host.setdefault(entry.host, []).append(entry)
        self._by_host = by_host

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_host))

    def match(self, target: AbsoluteTarget) -> list[tuple[HostEntry[T], str]] | None:
        """None for a host no route serves; else the routes whose base path holds the path
        (only the longest base path), each with the rest of the path; [] when none does."""
        entries = self._by_host.get(target.host)
        if entries is None:
            return None
        found: list[tuple[HostEntry[T], str]] = []
        longest = -1
        for e in entries:
            # Ports match when equal, or when each is its own scheme's default: the client
            # writes http://host/ (port 80) for an https://host/ (port 443) base.
            if not (target.port == e.port or (target.port == 80 and e.default_port)):
                continue
            path = target.path
            if not (path == e.base_path or path.startswith(e.base_path + "/")):
                continue
            if len(e.base_path) > longest:
                found, longest = [], len(e.base_path)
            if len(e.base_path) == longest:
                found.append((e, path[len(e.base_path) :]))
        return found

    def mismatch(self, target: AbsoluteTarget) -> str:
        """Why a served host matched no route: its port, or its path (for the 404's message)."""
        entries = self._by_host.get(target.host, [])
        ports = [
            e for e in entries if target.port == e.port or (target.port == 80 and e.default_port)
        ]
        if not ports:
            served = sorted(
                {
                    "the default port (no :port in the URL)" if e.default_port else str(e.port)
                    for e in entries
                }
            )
            return (
                f"the port does not match: routes for {target.host} serve {' or '.join(served)}, "
                f"not port {target.port}"
            )
        bases = sorted({e.base_path or "/" for e in ports})
        return f"the path must be under a route's base path ({', '.join(bases)})"
