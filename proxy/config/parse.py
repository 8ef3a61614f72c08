"""The configuration's parser: YAML and `${VAR}` in, the frozen model (`config.model`) out.

Pure: no aiohttp, no token reads. `parse_config` collects every mistake, each with its path
(`routes[1].token: expected exactly one of env, file, value`), and raises one `ConfigError`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config.limits import parse_limits
from proxy.config.listen import (
    listen_problems,
    parse_admin,
    parse_proxy_listen,
)
from proxy.config.model import (
    LOG_LEVELS,
    MAX_CONFIG_BYTES,
    BaseURL,
    Config,
    ConfigError,
    LogSettings,
    Route,
    RouteDefaults,
    Timeouts,
)
from proxy.config.readers import (
    MAX_CONFIG_NODES,
    Errors,
    TooLarge,
    expand_env,
    join,
    mapping,
    non_negative_int,
    pattern_set,
    positive,
    string,
    string_list,
    type_name,
)
from proxy.config.sources import parse_sources
from proxy.config.traffic import parse_rate_limit, parse_retry

_TENANT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# A prefix is made of plain segments: no percent-encoding, no dot segments, nothing to normalise.
_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")
_BASE_PATH_RE = re.compile(r"(/[A-Za-z0-9._~-]+)*")
_HEADER_VALUE_RE = re.compile(r"[\x21-\x7e]+")


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


def _base_url(template: str, tenant: str, path: str, errs: Errors) -> BaseURL | None:
    unknown = set(re.findall(r"\{([^}]*)\}", template)) - {"tenant"}
    if unknown:
        errs.add(path, f"unknown placeholder {{{sorted(unknown)[0]}}}; only {{tenant}} is expanded")
        return None
    text = template.replace("{tenant}", tenant)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        errs.add(path, f"not a valid URL ({exc}): {errs.show(text)}")
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
        errs.add(path, f"{'; '.join(problems)}: {errs.show(text)}")
        return None
    scheme = parts.scheme
    if scheme == "http":
        errs.warnings.append(
            f"{path}: plain http upstream {errs.show(text)}; use only for local testing"
        )
    assert parts.hostname is not None
    host = parts.hostname.lower().rstrip(".")
    return BaseURL(scheme, host, port or (443 if scheme == "https" else 80), url_path)


_OVERRIDABLE = (
    "base_url",
    "api_version",
    "ca_file",
    "timeouts",
    "retry_body_limit",
    "expired_token",
    "max_body_bytes",
    "rate_limit",
    "retry",
)


def _overrides(m: Mapping[str, Any], path: str, errs: Errors, base: RouteDefaults) -> RouteDefaults:
    """Apply the keys a route shares with `defaults:` on top of `base`."""
    base_url, api_version, ca_file = base.base_url, base.api_version, base.ca_file
    if "base_url" in m:
        base_url = string(m["base_url"], join(path, "base_url"), errs) or base_url
    if "api_version" in m:
        api_version = None
        if m["api_version"] is not None:
            api_version = string(m["api_version"], join(path, "api_version"), errs)
            if api_version is not None and not _HEADER_VALUE_RE.fullmatch(api_version):
                errs.add(
                    join(path, "api_version"), f"not a valid header value: {errs.show(api_version)}"
                )
    if "ca_file" in m:
        ca_file = None
        if m["ca_file"] is not None:
            # "" (an unset `${AMPERITY_CA_FILE:-}`) means none; `~` expands as in a shell.
            text = m["ca_file"].strip() if isinstance(m["ca_file"], str) else None
            if text != "":
                ca_file = string(m["ca_file"], join(path, "ca_file"), errs)
                ca_file = os.path.expanduser(ca_file) if ca_file is not None else None
                if ca_file is not None and not os.path.isfile(ca_file):
                    errs.add(join(path, "ca_file"), f"no such file: {ca_file}")
    timeouts = _timeouts(m.get("timeouts"), join(path, "timeouts"), errs, base.timeouts)
    retry_body_limit = base.retry_body_limit
    if "retry_body_limit" in m:
        limit = non_negative_int(m["retry_body_limit"], join(path, "retry_body_limit"), errs)
        retry_body_limit = retry_body_limit if limit is None else limit
    expired_token = base.expired_token
    if "expired_token" in m:
        if m["expired_token"] in ("forward", "reject"):
            expired_token = m["expired_token"]
        else:
            errs.add(
                join(path, "expired_token"),
                f"expected forward or reject, got {errs.show(m['expired_token'])}",
            )
    max_body_bytes = base.max_body_bytes
    if "max_body_bytes" in m:
        max_body_bytes = None
        if m["max_body_bytes"] is not None:
            max_body_bytes = non_negative_int(
                m["max_body_bytes"], join(path, "max_body_bytes"), errs
            )
    rate_limit = base.rate_limit
    if "rate_limit" in m:
        rate_limit = parse_rate_limit(m["rate_limit"], join(path, "rate_limit"), errs)
    retry = base.retry
    if "retry" in m:
        retry = parse_retry(m["retry"], join(path, "retry"), errs)
    return RouteDefaults(
        base_url,
        api_version,
        ca_file,
        timeouts,
        retry_body_limit,
        expired_token,
        max_body_bytes,
        rate_limit,
        retry,
    )


def _prefix(raw: object, path: str, errs: Errors) -> str | None:
    prefix = string(raw, path, errs)
    if prefix is None:
        return None
    if not prefix.startswith("/"):
        errs.add(path, f"must start with '/', got {errs.show(prefix)}")
    elif prefix.endswith("/"):
        errs.add(path, f"must not end with '/', got {errs.show(prefix)}")
    elif not all(_PREFIX_SEGMENT_RE.fullmatch(s) for s in prefix[1:].split("/")):
        errs.add(
            path,
            f"segments may hold only letters, digits and ._~- (no dot segments), got {errs.show(prefix)}",
        )
    else:
        return prefix
    return None


_ROUTE_KEYS = ("name", "prefix", "tenant", "token", "tokens", "methods", "paths", *_OVERRIDABLE)
# IANA's HTTP Method Registry (RFC 9110 §16.1); a method outside it (FETCH, a typo like GTE)
# would only ever turn into 403s.
_REGISTERED = """ACL BASELINE-CONTROL BIND CHECKIN CHECKOUT CONNECT COPY DELETE GET HEAD LABEL LINK
LOCK MERGE MKACTIVITY MKCALENDAR MKCOL MKREDIRECTREF MKWORKSPACE MOVE OPTIONS ORDERPATCH PATCH POST
PRI PROPFIND PROPPATCH PUT QUERY REBIND REPORT SEARCH TRACE UNBIND UNCHECKOUT UNLINK UNLOCK UPDATE
UPDATEREDIRECTREF VERSION-CONTROL"""
HTTP_METHODS = frozenset(_REGISTERED.split())
_COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _methods(raw: object, path: str, errs: Errors) -> frozenset[str] | None:
    methods = set()
    for item_path, value in string_list(raw, path, errs):
        method = value.upper()
        if method in HTTP_METHODS:
            methods.add(method)
            continue
        hint = difflib.get_close_matches(method, _COMMON_METHODS, n=1, cutoff=0.5)
        fix = f"did you mean {hint[0]}?" if hint else f"use one of {', '.join(_COMMON_METHODS)}"
        errs.add(item_path, f"not a registered HTTP method: {errs.show(value)} ({fix})")
    return frozenset(methods)


def _route(raw: object, path: str, errs: Errors, defaults: RouteDefaults) -> Route | None:
    m = mapping(raw, path, errs, _ROUTE_KEYS)
    if m is None:
        return None
    for key in ("prefix", "tenant"):
        if key not in m:
            errs.add(join(path, key), "is required")
    prefix = _prefix(m["prefix"], join(path, "prefix"), errs) if "prefix" in m else None
    tenant = string(m["tenant"], join(path, "tenant"), errs) if "tenant" in m else None
    if tenant is not None and not _TENANT_RE.fullmatch(tenant):
        errs.add(
            join(path, "tenant"),
            f"expected a DNS-label-like tenant id (a-z, 0-9, -), got {errs.show(tenant)}",
        )
        tenant = None
    tokens = parse_sources(m, path, errs)
    name = prefix.strip("/").replace("/", "-") if prefix else None
    if "name" in m:
        name = string(m["name"], join(path, "name"), errs)
        if name is not None and not _NAME_RE.fullmatch(name):
            errs.add(
                join(path, "name"),
                f"expected letters, digits and _.- (max 63), got {errs.show(name)}",
            )
            name = None
    methods = _methods(m["methods"], join(path, "methods"), errs) if "methods" in m else None
    paths = pattern_set(m["paths"], join(path, "paths"), errs) if "paths" in m else None
    own = _overrides(m, path, errs, defaults)
    # An inherited base_url's problem is reported once, at defaults.base_url (Errors keeps the
    # first problem per path), not once per route.
    where = join(path, "base_url") if "base_url" in m else "defaults.base_url"
    base_url = _base_url(own.base_url, tenant, where, errs) if tenant else None
    if None in (name, prefix, tenant, tokens, base_url) or ("paths" in m and paths is None):
        return None
    assert name and prefix and tenant and tokens and base_url
    return Route(
        name,
        prefix,
        tenant,
        base_url,
        own.api_version,
        own.ca_file,
        own.timeouts,
        tokens,
        methods,
        paths,
        own.retry_body_limit,
        own.expired_token,
        own.max_body_bytes,
        own.rate_limit,
        own.retry,
    )


def _routes(raw: object, errs: Errors, defaults: RouteDefaults) -> tuple[Route, ...]:
    if not isinstance(raw, list) or not raw:
        errs.add("routes", f"expected a non-empty list of routes, got {type_name(raw)}")
        return ()
    routes = [_route(item, f"routes[{i}]", errs, defaults) for i, item in enumerate(raw)]
    # Duplicates are judged on what was written, so they are reported in the same pass as
    # any other problem of those routes.
    for attr in ("prefix", "name"):
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            value = _written(item, attr)
            if value is None or (attr == "name" and errs.failed(f"routes[{i}].prefix")):
                continue  # a name taken from a duplicate prefix is the same problem
            if value in seen:
                errs.add(
                    f"routes[{i}].{attr}",
                    f"duplicate {attr} {errs.show(value)} (also routes[{seen[value]}])",
                )
            seen.setdefault(value, i)
    return tuple(r for r in routes if r is not None)


def _written(item: object, attr: str) -> str | None:
    """A route's prefix or name as written (a name defaults to its prefix), for duplicates."""
    if not isinstance(item, dict):
        return None
    prefix = item.get("prefix")
    value = item.get(
        attr,
        prefix.strip("/").replace("/", "-") if attr == "name" and isinstance(prefix, str) else None,
    )
    return value.strip() if isinstance(value, str) and value.strip() else None


def _log(raw: object, errs: Errors) -> LogSettings:
    if raw is None:
        return LogSettings()
    m = mapping(raw, "log", errs, ("format", "level"))
    if m is None:
        return LogSettings()
    fmt: str = m.get("format", "auto")
    if fmt not in ("auto", "json", "text"):
        errs.add("log.format", f"expected auto, json or text, got {errs.show(fmt)}")
        fmt = "auto"
    level = str(m.get("level", "INFO")).upper()
    if level not in LOG_LEVELS:
        errs.add(
            "log.level",
            f"expected one of {', '.join(LOG_LEVELS)}, got {errs.show(m.get('level'))}",
        )
        level = "INFO"
    return LogSettings(fmt, level)  # type: ignore[arg-type]


_TOP_KEYS = ("listen", "admin", "defaults", "shutdown_timeout", "routes", "log", "limits")


def parse_config(
    raw: object, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate a loaded YAML document; raise one ConfigError listing every problem."""
    errs = Errors()
    try:
        raw = expand_env(raw, "", errs, os.environ if env is None else env)
    except TooLarge:
        message = (
            f"the config expands to more than {MAX_CONFIG_NODES} values (YAML aliases and "
            "anchors repeating each other?); a proxy config has a few hundred: write it out "
            "without nested aliases"
        )
        raise ConfigError([message], source) from None
    m = mapping(raw, "", errs, _TOP_KEYS) if raw is not None else None
    if m is None:
        if raw is None:
            errs.add("", "the config is empty; it needs at least a routes: list")
        raise ConfigError(errs.final(), source)
    listen = parse_proxy_listen(m.get("listen"), errs)
    admin, admin_settings = parse_admin(m.get("admin"), errs)
    defaults = RouteDefaults()
    if m.get("defaults") is not None:
        d = mapping(m["defaults"], "defaults", errs, _OVERRIDABLE)
        if d is not None:
            defaults = _overrides(d, "defaults", errs, defaults)
            if "base_url" in d:  # judged once here, whatever the routes' tenants
                _base_url(defaults.base_url, "tenant", "defaults.base_url", errs)
    shutdown_timeout = 15.0
    if "shutdown_timeout" in m:
        shutdown_timeout = positive(m["shutdown_timeout"], "shutdown_timeout", errs) or 15.0
    routes = _routes(m.get("routes"), errs, defaults)
    log = _log(m.get("log"), errs)
    limits = parse_limits(m.get("limits"), errs)
    for problem in listen_problems(listen):
        errs.messages.append(problem)
    if errs.messages:
        raise ConfigError(errs.final(), source)
    return Config(
        listen, admin, shutdown_timeout, routes, log, tuple(errs.warnings), admin_settings, limits
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and parse a YAML config file; file and YAML errors become a ConfigError too."""
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror or exc}"], source) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"the config file is larger than 1 MiB ({MAX_CONFIG_BYTES} bytes); a proxy "
                "config is a few KiB: check that --config names the right file"
            ],
            source,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["config file is not valid UTF-8"], source) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, text)], source) from None
    return parse_config(raw, source, env)


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """PyYAML's error as `line L, column C: what is wrong (how to fix it)`. SECURITY: the
    offending line is never quoted (it may hold a token); only its position."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = str(getattr(exc, "problem", None) or "invalid YAML")
    line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
    if "'\\t'" in problem or ("\t" in line[: mark.column + 1] if mark else False):
        return f"{where}a tab; YAML forbids tabs for indentation: indent with spaces"
    if "${" in line and ("flow" in str(getattr(exc, "context", "")) or "'}'" in problem):
        return (
            f"{where}{problem}; inside a flow mapping {{...}} a value holding ${{...}} must be "
            'quoted: write {key: "${VAR}"}'
        )
    if "mapping values are not allowed" in problem:
        return f"{where}{problem} (a ': ' inside a value: quote the value)"
    if "found undefined alias" in problem or "found unhashable key" in problem:
        return f"{where}{problem}"
    return f"{where}{problem} (check the indentation and quoting around this position)"
