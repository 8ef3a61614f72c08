"""`token-info` and `doctor`: look at tokens and upstreams without serving traffic.

Both load the tokens exactly as `run` does (exec commands run, client credentials are minted)
and print what they find; neither ever prints a token or a secret.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp

from proxy.app import ProxyApp, create_app
from proxy.config import Config, Route
from proxy.config.presets import PRESETS
from proxy.refusals import REFUSAL_PEEK, upstream_message
from proxy.tokens import RouteStatus, TokenStatus, in_words
from proxy.tokens.health import EXPIRING, EXPLANATIONS, REMEDY, unauthorized_cause, utc

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s` or plain seconds; raises ValueError."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a duration like 7d, 12h, 30m or 90s, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else utc(timestamp)


async def _load(config: Config) -> tuple[ProxyApp, list[str]]:
    app = create_app(config)
    errors = await app.startup(strict=False)
    return app, errors


async def token_info(config: Config, warn: float, as_json: bool, out: TextIO) -> int:
    """Print one row per route and token; 1 when any is missing, expired or within `warn`."""
    app, _ = await _load(config)
    try:
        now = time.time()
        statuses = app.store.snapshot()
    finally:
        await app.cleanup()
    bad = any(
        t.state(now, warn) in ("missing", "expired", "expiring")
        for status in statuses
        for t in status.tokens
    )
    apis = {route.name: route.api for route in config.routes}
    if as_json:
        documents = [s.as_dict(now, warn) | {"api": apis.get(s.route)} for s in statuses]
        json.dump(documents, out, indent=2)
        out.write("\n")
        return 1 if bad else 0
    rows: list[tuple[str, ...]] = [_HEADER]
    rows += [
        _row(status, t, now, warn, apis.get(status.route, "amperity"))
        for status in statuses
        for t in status.tokens
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(_HEADER) - 1)]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, str(row[-1])]).rstrip() + "\n")
    return 1 if bad else 0


_HEADER = (
    "ROUTE",
    "TENANT",
    "API",
    "SOURCE",
    "FINGERPRINT",
    "SUBJECT",
    "ISSUED",
    "EXPIRES",
    "LEFT",
    "STATE",
)


def _row(status: RouteStatus, t: TokenStatus, now: float, warn: float, api: str) -> tuple[str, ...]:
    cred = t.credential
    left = "-"
    if cred is not None and cred.expires_at is not None:
        seconds = cred.expires_at - now
        left = in_words(seconds) if seconds > 0 else f"-{in_words(seconds)}"
    state = t.state(now, warn) + (" (in use)" if t.in_use else "")
    if t.last_error:
        state += f": {t.last_error}"
    issued = None
    if cred is not None:
        issued = cred.issued_at if cred.issued_at is not None else cred.loaded_at
    return (
        status.route,
        status.tenant,
        api,
        t.source,
        cred.fingerprint if cred else "-",
        (cred.subject or "-") if cred else "-",
        _when(issued),
        _when(cred.expires_at if cred else None),
        left,
        state,
    )


@dataclass
class Verdict:
    route: str
    checks: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, how to fix it)

    def ok(self, text: str) -> None:
        self.checks.append(text)

    def problem(self, what: str, fix: str) -> None:
        self.problems.append((what, fix))


def _check_tokens(status: RouteStatus, verdict: Verdict, now: float) -> None:
    for t in status.tokens:
        cred = t.credential
        if cred is None:
            verdict.problem(
                f"token from {t.source}: {t.last_error}", f"{REMEDY} and provide it via {t.source}"
            )
            continue
        if t.failing:
            verdict.problem(
                f"token from {t.source} can't be re-read: {t.last_error}",
                f"fix {t.source}; the last good token is used meanwhile",
            )
        if cred.expires_at is None:
            verdict.ok(f"token {cred.fingerprint} from {t.source}: no expiry claim")
        elif cred.expired(now):
            verdict.problem(
                f"token {cred.fingerprint} from {t.source} expired {in_words(now - cred.expires_at)} ago",
                f"{REMEDY} and replace {t.source}",
            )
        elif cred.expires_at - now < EXPIRING:
            verdict.problem(
                f"token {cred.fingerprint} from {t.source} expires in {in_words(cred.expires_at - now)}",
                f"{REMEDY} soon and add it under tokens: for a rotation without downtime",
            )
        else:
            verdict.ok(
                f"token {cred.fingerprint} from {t.source}: expires in {in_words(cred.expires_at - now)}"
            )


async def _check_network(route: Route, context: ssl.SSLContext, verdict: Verdict) -> bool:
    base = route.base_url
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(base.host, base.port, type=socket.SOCK_STREAM), route.timeouts.connect
        )
        verdict.ok(f"DNS: {base.host} -> {infos[0][4][0]}")
    except (OSError, TimeoutError) as exc:
        verdict.problem(
            f"DNS: cannot resolve {base.host} ({type(exc).__name__})",
            "check base_url and the machine's DNS/network settings",
        )
        return False
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(base.host, base.port, ssl=context, server_hostname=base.host)
            if base.scheme == "https"
            else asyncio.open_connection(base.host, base.port),
            route.timeouts.connect,
        )
        writer.close()
        verdict.ok(f"{'TLS handshake' if base.scheme == 'https' else 'TCP connect'}: {base.origin}")
    except ssl.SSLError as exc:
        verdict.problem(
            f"TLS: certificate of {base.origin} not accepted ({exc.reason or type(exc).__name__})",
            "if a corporate proxy re-signs TLS, set ca_file to its CA bundle",
        )
        return False
    except (OSError, TimeoutError) as exc:
        verdict.problem(
            f"connect: {base.origin} unreachable ({type(exc).__name__})",
            "check the network path (firewall, proxy) to Amperity",
        )
        return False
    return True


async def _probe(app: ProxyApp, route: Route, verdict: Verdict) -> None:
    credential = app.store.credential(route.name)
    session = app.session
    if credential is None or session is None:
        return
    check = PRESETS[route.api].probe
    if check is None:  # the Streaming API has no read-only call: DNS and TLS were the check
        verdict.ok(f"probe: none for the {route.api} API (it has no read-only request)")
        return
    url = f"{route.base_url}{check}"
    headers = {"Authorization": credential.authorization}
    headers |= dict.fromkeys(route.tenant_headers, route.tenant)
    if route.api_version:
        headers["api-version"] = route.api_version
    try:
        async with session.get(
            url,
            headers=headers,
            ssl=app.ssl_contexts[route.name],
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=route.timeouts.connect + route.timeouts.read),
        ) as response:
            status = response.status
            message = None
            if status in (401, 403):
                message = upstream_message(await response.content.read(REFUSAL_PEEK))
    except (aiohttp.ClientError, TimeoutError) as exc:
        verdict.problem(f"probe GET {url}: failed ({type(exc).__name__})", "see the checks above")
        return
    said = f'; Amperity said: "{message}"' if message else ""
    if status == 200:
        verdict.ok(f"probe GET {url}: 200")
    elif status == 401:
        cause = unauthorized_cause(credential, time.time(), route.tenant, message)
        explanation, fix = EXPLANATIONS[cause]
        verdict.problem(f"probe GET {url}: 401 ({cause}){said}: {explanation}", fix)
    elif status == 403:
        verdict.problem(
            f"probe GET {url}: 403{said}",
            "the API key's role may not read segments; check its policy",
        )
    else:
        verdict.problem(f"probe GET {url}: {status}", "check tenant, base_url and api_version")


async def doctor(config: Config, probe: bool, out: TextIO) -> int:
    """Check tokens, DNS and TLS per route (and one read-only request with `probe`)."""
    app, _ = await _load(config)
    verdicts = []
    try:
        now = time.time()
        for route in config.routes:
            verdict = Verdict(route.name)
            _check_tokens(app.store.status(route.name), verdict, now)
            reachable = await _check_network(route, app.ssl_contexts[route.name], verdict)
            if probe and reachable:
                await _probe(app, route, verdict)
            verdicts.append(verdict)
    finally:
        await app.cleanup()
    for verdict in verdicts:
        route = next(r for r in config.routes if r.name == verdict.route)
        head = "OK" if not verdict.problems else f"{len(verdict.problems)} problem(s)"
        out.write(
            f"route {route.name} ({route.prefix} -> {route.base_url}, tenant {route.tenant}): {head}\n"
        )
        for check in verdict.checks:
            out.write(f"  ok    {check}\n")
        for what, fix in verdict.problems:
            out.write(f"  FAIL  {what}\n        fix: {fix}\n")
    return 1 if any(v.problems for v in verdicts) else 0
