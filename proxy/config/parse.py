"""The configuration's parser: YAML and `${VAR}` in, the frozen model (`config.model`) out.

Pure: no aiohttp, no token reads. `parse_config` collects every mistake, each with its path
(`routes[1].token: expected exactly one of env, file, value`), and raises one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping

from proxy.config.checks import across_routes
from proxy.config.clients import parse_route_clients
from proxy.config.limits import parse_limits
from proxy.config.listen import (
    listen_problems,
    parse_admin,
    parse_proxy_listen,
)
from proxy.config.model import (
    LOG_LEVELS,
    Config,
    ConfigError,
    LogSettings,
    Route,
    RouteDefaults,
)
from proxy.config.overrides import OVERRIDABLE, inherit, parse_base_url
from proxy.config.presets import apply_preset
from proxy.config.readers import (
    MAX_CONFIG_NODES,
    Errors,
    TooLarge,
    expand_env,
    join,
    mapping,
    number,
    pattern_set,
    positive,
    string,
    string_list,
    type_name,
)
from proxy.config.shared import parse_shared
from proxy.config.sources import parse_sources

_TENANT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# A prefix is made of plain segments: no percent-encoding, no dot segments, nothing to normalise.
_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


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


_ROUTE_KEYS = (
    "name",
    "prefix",
    "tenant",
    "token",
    "tokens",
    "methods",
    "paths",
    "clients",
    *OVERRIDABLE,
)
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


def _tenant(raw: object, path: str, errs: Errors) -> str | None:
    tenant = string(raw, path, errs)
    if tenant is not None and not _TENANT_RE.fullmatch(tenant):
        errs.add(
            path, f"expected a DNS-label-like tenant id (a-z, 0-9, -), got {errs.show(tenant)}"
        )
        return None
    return tenant


def _name(raw: object, path: str, errs: Errors) -> str | None:
    name = string(raw, path, errs)
    if name is not None and not _NAME_RE.fullmatch(name):
        errs.add(path, f"expected letters, digits and _.- (max 63), got {errs.show(name)}")
        return None
    return name


def _route(raw: object, path: str, errs: Errors, defaults: RouteDefaults) -> Route | None:
    m = mapping(raw, path, errs, _ROUTE_KEYS)
    if m is None:
        return None
    for key in ("prefix", "tenant"):
        if key not in m:
            errs.add(join(path, key), "is required")
    prefix = _prefix(m["prefix"], join(path, "prefix"), errs) if "prefix" in m else None
    tenant = _tenant(m["tenant"], join(path, "tenant"), errs) if "tenant" in m else None
    tokens = parse_sources(m, path, errs)
    name = prefix.strip("/").replace("/", "-") if prefix else None
    if "name" in m:
        name = _name(m["name"], join(path, "name"), errs)
    methods = _methods(m["methods"], join(path, "methods"), errs) if "methods" in m else None
    paths = pattern_set(m["paths"], join(path, "paths"), errs) if "paths" in m else None
    clients = (
        parse_route_clients(m["clients"], join(path, "clients"), errs) if "clients" in m else None
    )
    own = inherit(m, path, errs, defaults)
    headers: tuple[str, ...] = ()
    if tenant and name:  # the api preset, under the route's own keys and over `defaults`
        own, headers = apply_preset(own, m.keys(), tenant, name, errs)
    # An inherited base_url's problem is reported once, at defaults.base_url (Errors keeps the
    # first problem per path), not once per route.
    where = join(path, "base_url") if "base_url" in m else "defaults.base_url"
    base_url = parse_base_url(own.base_url, tenant, where, errs) if tenant else None
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
        clients,
        own.api,
        headers,
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


_TOP_KEYS = (
    "shutdown_delay",
    "listen",
    "admin",
    "defaults",
    "shutdown_timeout",
    "routes",
    "log",
    "limits",
    "shared",
)


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
        d = mapping(m["defaults"], "defaults", errs, OVERRIDABLE)
        if d is not None:
            defaults = inherit(d, "defaults", errs, defaults)
            if "base_url" in d:  # judged once here, whatever the routes' tenants
                parse_base_url(defaults.base_url, "tenant", "defaults.base_url", errs)
    shutdown_timeout = 15.0
    if "shutdown_timeout" in m:
        shutdown_timeout = positive(m["shutdown_timeout"], "shutdown_timeout", errs) or 15.0
    delay = number(m.get("shutdown_delay", 0), "shutdown_delay", errs)
    if delay is not None and delay < 0:
        errs.add("shutdown_delay", f"must be 0 or more seconds, got {delay:g}")
    routes = _routes(m.get("routes"), errs, defaults)
    log = _log(m.get("log"), errs)
    limits = parse_limits(m.get("limits"), errs)
    shared = parse_shared(m.get("shared"), errs)
    routes = across_routes(routes, m.get("routes"), listen, shared is not None, errs)
    for problem in listen_problems(listen):
        errs.messages.append(problem)
    if errs.messages:
        raise ConfigError(errs.final(), source)
    warnings = tuple(errs.warnings)
    config = Config(
        listen, admin, shutdown_timeout, routes, log, warnings, admin_settings, limits, shared
    )
    return dataclasses.replace(config, shutdown_delay=max(0.0, delay or 0.0))
