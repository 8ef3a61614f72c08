"""The `shared:` section: state that several proxy processes (workers, replicas) share, on Redis.

Today that is the rate-limit buckets: with `shared.redis` configured, a route's `rate_limit`
defaults to `store: shared`, and every process that points at the same Redis draws on the same
budget. The password is a secret source (`env` or `file`) and never part of `url`: a URL is
logged, shown and put in error messages, a password must not be.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.config.readers import Errors, join, mapping, number, positive, string
from proxy.config.sources import SECRET_KINDS, TokenSource, parse_source

# Share of a bucket's rate a process keeps while Redis is unreachable: a third, because the
# usual shared deployment is three replicas (deploy/kubernetes/shared); with N processes the
# worst case while all fall back is N/3 of the rate, and Amperity's own 429s (retried with
# back-off where `retry:` is on) cover the rest. Set it to 1/N for your N to stay under.
DEFAULT_FALLBACK_SHARE = 1 / 3
DEFAULT_TIMEOUT = 0.05  # seconds: a decision on loopback or in-cluster Redis takes ~0.2 ms
DEFAULT_KEY_PREFIX = "amperity-proxy"
_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class SharedRedis:
    url: str  # redis:// or rediss:// (TLS, verified), host, port, database; no password
    password: TokenSource | None
    ca_file: str | None  # extra trust anchors for rediss://
    key_prefix: str
    timeout: float  # seconds per Redis call; beyond it, this process falls back
    fallback_share: float  # share of each bucket's rate kept locally while Redis is down


def parse_shared(raw: object, errs: Errors) -> SharedRedis | None:
    """`shared:`; None when absent (every bucket is then local to its process)."""
    if raw is None:
        return None
    m = mapping(raw, "shared", errs, ("redis",))
    if m is None or m.get("redis") is None:
        if m is not None:
            errs.add("shared.redis", "missing: shared state needs a redis: section (url: ...)")
        return None
    path = "shared.redis"
    keys = ("url", "password", "ca_file", "key_prefix", "timeout", "fallback_share")
    r = mapping(m["redis"], path, errs, keys)
    if r is None:
        return None
    url = _url(r.get("url"), join(path, "url"), errs)
    password = None
    if r.get("password") is not None:
        password = parse_source(r["password"], join(path, "password"), errs, SECRET_KINDS)
    ca_file = string(r["ca_file"], join(path, "ca_file"), errs) if r.get("ca_file") else None
    prefix = string(r.get("key_prefix", DEFAULT_KEY_PREFIX), join(path, "key_prefix"), errs)
    timeout = positive(r.get("timeout", DEFAULT_TIMEOUT), join(path, "timeout"), errs)
    share = number(
        r.get("fallback_share", DEFAULT_FALLBACK_SHARE), join(path, "fallback_share"), errs
    )
    if share is not None and not 0 < share <= 1:
        errs.add(join(path, "fallback_share"), f"must be above 0 and at most 1, got {share:g}")
        share = None
    if url is None or prefix is None or timeout is None or share is None:
        return None
    return SharedRedis(url, password, ca_file, prefix, timeout, share)


def _url(raw: object, path: str, errs: Errors) -> str | None:
    text = string(raw, path, errs)
    if text is None:
        if raw is None:
            errs.add(path, "missing: for example redis://redis.proxy.svc:6379/0")
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        errs.add(path, "not a URL; expected redis://host:6379/0 or rediss://host:6380/0")
        return None
    if parts.password is not None or parts.username is not None:
        # SECURITY: the URL is shown in logs and errors; never echo it when it holds a secret.
        errs.add(
            path,
            "holds a user or password; move the password to shared.redis.password "
            "({env: REDIS_PASSWORD} or {file: /path}) and write the URL without it",
        )
        return None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        errs.add(
            path, f"expected redis://host:port/db or rediss://host:port/db, got {errs.show(text)}"
        )
        return None
    return text
