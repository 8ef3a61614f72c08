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
            if decoded in (".", ".."):
                return "the path contains a '.' or '..' segment (raw or percent-encoded)"
            if "/" in decoded or "\\" in decoded or "\x00" in decoded:
                return "the path contains an encoded slash, backslash or NUL (%2f, %5c, %00)"
            if "%" not in decoded:
                break
            decoded = unquote(decoded, errors="surrogateescape")
    return None
