"""Readers for untrusted config data that collect path-qualified errors, and `${VAR}` expansion.

Each reader checks one value, records `path: message` in an `Errors` on failure and returns
None, so a parser can go on and report every mistake at once. It imports only `proxy.config.patterns` (RE2).
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import re
from collections.abc import Mapping
from typing import Any

from proxy.config.patterns import PatternSet, pattern_problem
from proxy.redaction import JWT_RE, looks_like_jwt

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `${VAR}`, `${VAR:-default}`; a default may hold `{...}` groups, as in
# `${AMPERITY_BASE_URL:-https://{tenant}.amperity.com/api}`.
_ENV_REF_RE = re.compile(r"\$\$|\$\{([^}:]*)(?::-((?:[^{}]|\{[^{}]*\})*))?\}")


# SECURITY: keys whose own string value (or list items) is a secret: a token pasted where a
# source mapping belongs, an inline `value:`, a password. Such values are never echoed.
SECRET_FIELDS = frozenset({"token", "tokens", "value", "client_secret", "client_token", "password"})
MAX_SHOWN = 64  # a longer value is never echoed: it is more likely a pasted secret than a name
_SUBSTRING_MIN = 8  # shorter registered values are too common to replace inside other text
# A real config has a few hundred values; YAML aliases can make 500 bytes expand to millions
# (the "billion laughs"), and `${VAR}` expansion copies every one of them.
MAX_CONFIG_NODES = 100_000


# `scheme://` + `user[:password]@`: the user info goes; `?...` / `#...`: they go too.
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_QUERY_RE = re.compile(r"[?#].*$", re.DOTALL)


def without_secrets(url: str) -> str:
    """A URL as it may appear in a message: `<user info>` and `<query>` stand for what went."""
    shown = _USERINFO_RE.sub(r"\1<user info>@", url)
    return _QUERY_RE.sub(lambda m: m.group(0)[0] + "<hidden>", shown)


class TooLarge(Exception):
    """The config expands to more than MAX_CONFIG_NODES values."""


class Errors:
    """Collected `path: message` errors and non-fatal warnings.

    SECURITY: a message echoes a config value only through `show`, which hides a value that
    came from a `${VAR}` expansion, sits in a secret-bearing field, looks like a JWT or is
    longer than MAX_SHOWN characters, and says what it was instead. `final` is the net under
    that rule for any message that slipped past it."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self._hidden: dict[str, str] = {}  # value -> where it came from (no value in it)
        self.nodes = 0  # values seen by expand_env, against MAX_CONFIG_NODES
        self._paths: set[str] = set()

    def add(self, path: str, message: str) -> None:
        """Report a problem at `path`. Only the first problem at a path is kept: a second is
        a consequence of the first (an unset `${VAR}` then reads as an empty string)."""
        if path in self._paths and path:
            return
        self._paths.add(path)
        self.messages.append(f"{path}: {message}" if path else message)

    def failed(self, path: str) -> bool:
        """A problem was reported at `path` already."""
        return path in self._paths

    def hide(self, value: str, origin: str) -> None:
        """Never echo `value`; say it was `origin` (e.g. `value from ${AMPERITY_TOKEN}`)."""
        for text in (value, value.strip()):
            if text:
                self._hidden.setdefault(text, origin)

    def reveal(self, value: str) -> None:
        """`value` may be echoed after all: only for a string whose shape shows it is a name
        (AMPERITY_TOKEN written where `{env: AMPERITY_TOKEN}` belongs). Never a value that
        came from a `${VAR}` expansion: that one stays hidden whatever its shape."""
        for text in (value, value.strip()):
            if not self._hidden.get(text, "").startswith("value from"):
                self._hidden.pop(text, None)

    def show_url(self, url: str) -> str:
        """How an error message may quote a URL: as `show` would, and even when shown, without
        user info (a password, often), query or fragment."""
        hidden = self._hidden_as(url)
        return hidden if hidden is not None else repr(without_secrets(url))

    def show(self, value: object) -> str:
        """How an error message may quote a config value: its repr, or what it was."""
        text = value.isoformat() if isinstance(value, datetime.date) else str(value)
        hidden = self._hidden_as(text)
        return hidden if hidden is not None else repr(value)

    def _hidden_as(self, text: str) -> str | None:
        """What stands for `text` when it may not be shown; None when it may."""
        origin = self._hidden.get(text) or next(
            (o for v, o in self._hidden.items() if len(v) >= _SUBSTRING_MIN and v in text), None
        )
        jwt = looks_like_jwt(text)
        if origin is None and not jwt and len(text) <= MAX_SHOWN:
            return None
        what = [origin or "a value", f"{len(text)} chars"]
        if jwt:
            what.append("looks like a JWT")
        return ", ".join(what) + ": hidden"

    def final(self) -> list[str]:
        """The messages, with any hidden value or JWT that a message quotes without `show`
        replaced all the same."""
        out = []
        for message in self.messages:
            for value, origin in self._hidden.items():
                if len(value) >= _SUBSTRING_MIN and value in message:
                    message = message.replace(value, f"<{origin}: hidden>")
            message = JWT_RE.sub("<a value that looks like a JWT: hidden>", message)
            out.append(message)
        return out


def type_name(value: object) -> str:
    """How a value's type reads in an error message (`a mapping`, `null`)."""
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def join(path: str, key: str) -> str:
    """`listen` + `port` -> `listen.port`."""
    return f"{path}.{key}" if path else key


def mapping(
    raw: object, path: str, errs: Errors, allowed: tuple[str, ...]
) -> dict[str, Any] | None:
    """Check `raw` is a mapping with only `allowed` keys; report unknown keys with a hint."""
    if not isinstance(raw, dict):
        errs.add(path, f"expected a mapping, got {type_name(raw)}")
        return None
    for key in raw:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(allowed)}"
            errs.add(join(path, str(key)), f"unknown key{suffix}")
    return raw


def string(raw: object, path: str, errs: Errors) -> str | None:
    """A non-empty, stripped string (a YAML date becomes its ISO form)."""
    if isinstance(raw, datetime.date):  # YAML reads an unquoted 2024-04-01 as a date
        return raw.isoformat()
    if not isinstance(raw, str) or not raw.strip():
        errs.add(
            path,
            f"expected a non-empty string, got {type_name(raw) if raw != '' else 'an empty one'}",
        )
        return None
    return raw.strip()


def number(raw: object, path: str, errs: Errors, *, integer: bool = False) -> float | None:
    """An int or float (or a numeric string from `${VAR}` expansion)."""
    value: object = raw
    if isinstance(raw, str):  # values that came through ${VAR} expansion are strings
        with contextlib.suppress(ValueError):
            value = int(raw) if integer else float(raw)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errs.add(path, f"expected {'an integer' if integer else 'a number'}, got {type_name(raw)}")
        return None
    if integer and not float(value).is_integer():
        errs.add(path, f"expected an integer, got {errs.show(value)}")
        return None
    return float(value)


def positive(raw: object, path: str, errs: Errors) -> float | None:
    """A number greater than 0."""
    value = number(raw, path, errs)
    if value is not None and value <= 0:
        errs.add(path, f"must be greater than 0, got {errs.show(raw)}")
        return None
    return value


def non_negative_int(raw: object, path: str, errs: Errors) -> int | None:
    """An integer that is 0 or more (a byte count)."""
    value = number(raw, path, errs, integer=True)
    if value is not None and value < 0:
        errs.add(path, f"must be 0 or more, got {errs.show(int(value))}")
        return None
    return None if value is None else int(value)


def expand_env(
    raw: object, path: str, errs: Errors, env: Mapping[str, str], *, secret: bool = False
) -> object:
    """Expand `${VAR}` and `${VAR:-default}` in every string value (`$$` is a literal `$`).
    Every expanded value, and every string in a secret-bearing field, is registered with
    `errs.hide`: error messages never echo it. Raises TooLarge past MAX_CONFIG_NODES values."""
    errs.nodes += 1
    if errs.nodes > MAX_CONFIG_NODES:
        raise TooLarge
    if isinstance(raw, dict):
        return {
            k: expand_env(v, join(path, str(k)), errs, env, secret=k in SECRET_FIELDS)
            for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [expand_env(v, f"{path}[{i}]", errs, env, secret=secret) for i, v in enumerate(raw)]
    if not isinstance(raw, str):
        return raw
    if "$" not in raw:
        if secret:
            errs.hide(raw, f"value of {path}")
        return raw
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if not ENV_NAME_RE.fullmatch(name):
            errs.add(path, f"invalid variable reference {errs.show(match.group(0))}")
            return ""
        names.append(name)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        errs.add(
            path,
            f"environment variable {name} is not set: export {name}=..., or write "
            f"${{{name}:-default}} for a default",
        )
        return ""

    expanded = _ENV_REF_RE.sub(replace, raw)
    if names:
        errs.hide(expanded, "value from " + ", ".join(f"${{{n}}}" for n in names))
    elif secret:
        errs.hide(expanded, f"value of {path}")
    return expanded


def string_list(raw: object, path: str, errs: Errors) -> list[tuple[str, str]]:
    """(path, value) for each non-empty string of a list."""
    if not isinstance(raw, list):
        errs.add(path, f"expected a list, got {type_name(raw)}")
        return []
    out = []
    for i, item in enumerate(raw):
        value = string(item, f"{path}[{i}]", errs)
        if value is not None:
            out.append((f"{path}[{i}]", value))
    return out


def pattern_set(raw: object, path: str, errs: Errors) -> PatternSet | None:
    """A list of regular expressions RE2 can run (see proxy.config.patterns), as one PatternSet."""
    patterns = []
    ok = True
    for item_path, value in string_list(raw, path, errs):
        problem = pattern_problem(value)
        if problem is not None:
            errs.add(
                item_path,
                f"RE2 can't run {errs.show(value)} ({problem}); patterns run on RE2, which has no "
                "backreferences or lookaround: see the README's 'Regular expressions'",
            )
            ok = False
        patterns.append(value)
    if not ok or not isinstance(raw, list) or len(patterns) != len(raw):
        return None
    try:
        return PatternSet(tuple(patterns))
    except Exception as exc:  # re2.error: the set as a whole is over RE2's memory budget
        errs.add(path, f"RE2 can't run these patterns together ({exc}); use fewer or simpler ones")
        return None
