"""The keys a route may override (and `defaults:` sets for all), as a table: key -> reader.

Each reader takes the written value, its path, the error collector and the inherited value,
and returns the new value (the inherited one when the written one is refused). `inherit`
applies a mapping's keys on top of a `RouteDefaults`; `base_url` turns the template into a
BaseURL once the route's tenant is known.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy.config.model import BaseURL, RouteDefaults, Timeouts
from proxy.config.presets import API_NAMES
from proxy.config.readers import Errors, join, mapping, non_negative_int, positive, string
from proxy.config.traffic import parse_rate_limit, parse_retry

_BASE_PATH_RE = re.compile(r"(/[A-Za-z0-9._~-]+)*")
_HEADER_VALUE_RE = re.compile(r"[\x21-\x7e]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)

Reader = Callable[[object, str, Errors, Any], Any]


def _timeouts(raw: object, path: str, errs: Errors, base: Timeouts) -> Timeouts:
    if raw is None:
        return base
    m = mapping(raw, path, errs, ("connect", "read", "total"))
    if m is None:
        return base
    connect, read, total = base.connect, base.read, base.total
    if "connect" in m:
        connect = positive(m["connect"], join(path, "connect"), errs) or connect
    if "read" in m:
        read = positive(m["read"], join(path, "read"), errs) or read
    if "total" in m:
        total = None if m["total"] is None else positive(m["total"], join(path, "total"), errs)
    return Timeouts(connect, read, total)


def _base_url_template(raw: object, path: str, errs: Errors, inherited: str) -> str:
    return string(raw, path, errs) or inherited


def _api_version(raw: object, path: str, errs: Errors, inherited: str | None) -> str | None:
    if raw is None:
        return None
    value = string(raw, path, errs)
    if value is not None and not _HEADER_VALUE_RE.fullmatch(value):
        errs.add(path, f"not a valid header value: {errs.show(value)}")
    return value


def _ca_file(raw: object, path: str, errs: Errors, inherited: str | None) -> str | None:
    """None, or "" (an unset `${AMPERITY_CA_FILE:-}`): none. `~` expands as in a shell."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    value = string(raw, path, errs)
    value = os.path.expanduser(value) if value is not None else None
    if value is not None and not os.path.isfile(value):
        errs.add(path, f"no such file: {value}")
    return value


def _byte_count(raw: object, path: str, errs: Errors, inherited: int | None) -> int | None:
    if raw is None:
        return None
    value = non_negative_int(raw, path, errs)
    return inherited if value is None else value


def _retry_body_limit(raw: object, path: str, errs: Errors, inherited: int) -> int:
    value = non_negative_int(raw, path, errs)
    return inherited if value is None else value


def _expired_token(raw: object, path: str, errs: Errors, inherited: str) -> str:
    if raw in ("forward", "reject"):
        return str(raw)
    errs.add(path, f"expected forward or reject, got {errs.show(raw)}")
    return inherited


def _api(raw: object, path: str, errs: Errors, inherited: str) -> str:
    if raw in API_NAMES:
        return str(raw)
    errs.add(path, f"expected one of {', '.join(API_NAMES)}, got {errs.show(raw)}")
    return inherited


def _tenant_header(raw: object, path: str, errs: Errors, inherited: str | None) -> str | None:
    value = string(raw, path, errs)
    if value is None or value == "both" or _TOKEN_RE.fullmatch(value):
        return value or inherited
    errs.add(path, f"expected a header name or both, got {errs.show(value)}")
    return inherited


OVERRIDES: dict[str, Reader] = {
    "api": _api,
    "tenant_header": _tenant_header,
    "base_url": _base_url_template,
    "api_version": _api_version,
    "ca_file": _ca_file,
    "timeouts": lambda raw, path, errs, inherited: _timeouts(raw, path, errs, inherited),
    "retry_body_limit": _retry_body_limit,
    "expired_token": _expired_token,
    "max_body_bytes": _byte_count,
    "rate_limit": lambda raw, path, errs, inherited: parse_rate_limit(raw, path, errs),
    "retry": lambda raw, path, errs, inherited: parse_retry(raw, path, errs),
}
OVERRIDABLE = tuple(OVERRIDES)


def inherit(m: Mapping[str, Any], path: str, errs: Errors, base: RouteDefaults) -> RouteDefaults:
    """`base` with the overridable keys written in `m` applied."""
    changes = {
        key: read(m[key], join(path, key), errs, getattr(base, key))
        for key, read in OVERRIDES.items()
        if key in m
    }
    return dataclasses.replace(base, **changes)


def parse_base_url(template: str, tenant: str, path: str, errs: Errors) -> BaseURL | None:
    unknown = set(re.findall(r"\{([^}]*)\}", template)) - {"tenant"}
    if unknown:
        errs.add(path, f"unknown placeholder {{{sorted(unknown)[0]}}}; only {{tenant}} is expanded")
        return None
    text = template.replace("{tenant}", tenant)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        errs.add(path, f"not a valid URL ({exc}): {errs.show_url(text)}")
        return None
    problems = []
    if parts.scheme not in ("https", "http"):
        problems.append("scheme must be https")
    if not parts.hostname:
        problems.append("host is missing")
    if parts.username is not None or parts.password is not None:
        problems.append("user info is not allowed")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        problems.append("query and fragment are not allowed")
    url_path = parts.path.rstrip("/")
    if not _BASE_PATH_RE.fullmatch(url_path) or any(s in (".", "..") for s in url_path.split("/")):
        problems.append("path may hold only plain segments (letters, digits, ._~-)")
    if problems:
        errs.add(path, f"{'; '.join(problems)}: {errs.show_url(text)}")
        return None
    scheme = parts.scheme
    if scheme == "http":
        errs.warnings.append(
            f"{path}: plain http upstream {errs.show_url(text)}; use only for local testing"
        )
    assert parts.hostname is not None
    host = parts.hostname.lower().rstrip(".")
    return BaseURL(scheme, host, port or (443 if scheme == "https" else 80), url_path)
