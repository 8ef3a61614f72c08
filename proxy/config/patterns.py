"""Regular expressions from the config (`paths`, `rate_limit.id_patterns`), on RE2.

SECURITY: these run on every request against a path the client chose. Python's `re`
backtracks: `/segments/([a-z0-9]+-?)+` against `/segments/aaaa…!` takes minutes and stops the
event loop for every client. RE2 (Google's `google-re2` binding) matches in time linear in the
path, whatever the pattern, so no config can freeze the proxy.

RE2's syntax is Python's without the features that need backtracking: no backreferences
(`\\1`, `(?P=name)`), no lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`), no possessive or atomic
groups, repetition counts up to 1000, and `\\Z` is written `\\z`. A pattern RE2 can't run is a
config error with RE2's reason (`check-config` reports it), never a silent fallback to `re`.

A list of patterns is compiled once into one RE2 set, so a path is matched against all of them
in a single pass.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any


@functools.cache
def _re2() -> tuple[ModuleType, Any]:
    """RE2 and its options, imported on first use: a config without `paths` or a rate limit
    never loads it (about 2 MiB of RSS)."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr itself
    return re2, options


def pattern_problem(pattern: str) -> str | None:
    """Why RE2 can't run `pattern` (RE2's own words), or None when it can."""
    re2, options = _re2()
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        return text
    return None


class PatternSet:
    """Patterns that a whole string must match (any one of them), matched in one RE2 pass.
    Build it from patterns `pattern_problem` accepted."""

    __slots__ = ("_set", "patterns")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        re2, options = _re2()
        compiled: Any = re2.Set.FullMatchSet(options)
        for pattern in patterns:
            compiled.Add(pattern)
        compiled.Compile()
        self._set = compiled

    def fullmatch(self, text: str) -> bool:
        """Whether `text` as a whole matches one of the patterns."""
        if not self.patterns:
            return False
        # A raw path may carry undecodable bytes as surrogates (aiohttp decodes with
        # surrogateescape): they go to RE2 as the original bytes and never match by accident.
        return bool(self._set.Match(text.encode("utf-8", "surrogateescape")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatternSet) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"PatternSet({self.patterns!r})"
