"""The store's state: one generation of one route's tokens (`RouteState`), each of its sources
(`SourceState`), and what changes them: a fetch that succeeded or failed, expiry warnings,
and the view the status page, `/readyz` and metrics read (`status_of`).

SECURITY: a `RouteState` is one *generation* of one route's tokens (its tenant, base URL and
sources, see `token_key`). A request holds the RouteState that admitted it and reads and
recovers its credential there, never by route name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from proxy.config import Route
from proxy.redaction import SECRETS
from proxy.tokens.credential import Credential, TokenError, in_words
from proxy.tokens.health import API_KEYS, EXPIRY_WARNINGS, REMEDY
from proxy.tokens.sources import Source
from proxy.tokens.views import RouteStatus, TokenStatus

log = logging.getLogger("amperity_proxy.tokens")

MAX_BACKOFF = 300.0  # seconds: the longest wait before retrying a failing source


@dataclass
class SourceState:
    """One source of one route, as the store keeps it."""

    source: Source
    credential: Credential | None = None
    last_error: str | None = None
    failing: bool = False
    quarantined: bool = False
    load_errors: Counter[str] = field(default_factory=Counter)
    refresh_at: float | None = None  # scheduled refresh (exec, client_credentials)
    retry_at: float | None = None  # back-off after a failed refresh
    failures: int = 0
    warned: int = 0  # how many EXPIRY_WARNINGS were logged for this credential
    last_loaded: float | None = None
    inflight: asyncio.Task[None] | None = None
    digest: str = ""


def token_key(route: Route) -> tuple[object, ...]:
    """What a route's tokens depend on: when equal across a reload, its tokens are kept."""
    return (route.tenant, route.tokens, route.base_url, route.ca_file, route.timeouts)


@dataclass(eq=False)
class RouteState:
    """One generation of one route's tokens (see the module docstring)."""

    route: str
    tenant: str
    sources: list[SourceState]
    key: tuple[object, ...] = ()
    loaded: bool = False
    current: SourceState | None = None
    last_recovery: float = float("-inf")
    recovering: asyncio.Task[None] | None = None
    refreshes: Counter[str] = field(default_factory=Counter)

    @property
    def recovery_wait(self) -> float:
        """How long a request waits for a 401-triggered re-read: the longest source timeout."""
        return max((s.source.config.timeout for s in self.sources), default=10.0)

    @property
    def credential(self) -> Credential | None:
        """The credential this generation uses now (the request path reads only this)."""
        return self.current.credential if self.current is not None else None

    @property
    def source(self) -> str:
        """Where the credential in use comes from, for logs."""
        return self.current.source.config.describe() if self.current else "no token source"


def rank(state: SourceState, now: float) -> tuple[int, float]:
    """Sort key, lowest first: unexpired with exp (latest first), unexpired without, expired."""
    cred = state.credential
    assert cred is not None
    if cred.expires_at is None:
        return (1, 0.0)
    if cred.expired(now):
        return (2, -cred.expires_at)
    return (0, -cred.expires_at)


def succeeded(rs: RouteState, state: SourceState) -> None:
    state.last_error = None
    state.retry_at = None
    state.failures = 0
    if state.source.refreshable and not state.source.polled:
        rs.refreshes["success"] += 1
    if state.failing:
        state.failing = False
        log.info("token source recovered", extra={"fields": log_fields(rs, state)})


def failed(rs: RouteState, state: SourceState, exc: TokenError, quiet: bool, now: float) -> None:
    state.load_errors[exc.reason] += 1
    state.last_error = str(exc)
    if state.source.refreshable and not state.source.polled:
        rs.refreshes["failure"] += 1
        state.failures += 1
        state.retry_at = now + min(MAX_BACKOFF, 2.0 ** (state.failures - 1))
    if not state.failing:
        state.failing = True
        if not quiet:  # at start-up the caller reports it, one line per route
            kept = "keeping the last good token" if state.credential else "no token loaded"
            log.warning(
                "token source failing: %s; %s",
                exc,
                kept,
                extra={"fields": log_fields(rs, state)},
            )


def warn_expiry(rs: RouteState, state: SourceState, now: float) -> None:
    cred = state.credential
    if cred is None or cred.expires_at is None:
        return
    left = cred.expires_at - now
    level = sum(1 for threshold, _ in EXPIRY_WARNINGS if left <= threshold)
    if left <= 0:
        level = len(EXPIRY_WARNINGS) + 1
    if level <= state.warned:
        return
    state.warned = level
    fields = log_fields(rs, state) | {"expires_at": cred.expires_at}
    if left <= 0:
        log.warning("token expired %s ago; %s", in_words(left), REMEDY, extra={"fields": fields})
    else:
        window = EXPIRY_WARNINGS[level - 1][1]
        log.warning(
            "token expires within %s (in %s); %s",
            window,
            in_words(left),
            REMEDY,
            extra={"fields": fields},
        )


def log_fields(rs: RouteState, state: SourceState) -> dict[str, object]:
    fields: dict[str, object] = {
        "route": rs.route,
        "tenant": rs.tenant,
        "source": state.source.config.describe(),
    }
    if state.credential is not None:
        fields["fingerprint"] = state.credential.fingerprint
    return fields


def status_of(rs: RouteState) -> RouteStatus:
    """One generation's tokens, as the views show them."""
    return RouteStatus(
        rs.route,
        rs.tenant,
        tuple(
            TokenStatus(
                s.source.config.describe(),
                # The metric label: the kind, and its place in `tokens:` when there are
                # several. SECURITY: never a file path or a program (the kubelet and
                # Prometheus on the pod IP read metrics; paths are for allow_clients).
                s.source.config.kind if len(rs.sources) == 1 else f"{s.source.config.kind}[{i}]",
                s.credential,
                s is rs.current,
                s.quarantined,
                s.failing,
                s.last_error,
                s.last_loaded,
                dict(s.load_errors),
            )
            for i, s in enumerate(rs.sources)
        ),
        dict(rs.refreshes),
    )


def installed(rs: RouteState, state: SourceState, credential: Credential, digest: str) -> None:
    """A newly fetched token becomes the source's: logged as loaded, rotated or refreshed."""
    previous = state.credential
    # SECURITY: from now on, no text from outside carries it (nor the two before it).
    SECRETS.remember(f"token:{rs.route}:{state.source.config.describe()}", credential.token)
    state.credential = credential
    state.digest = digest
    state.last_loaded = credential.loaded_at
    state.warned = 0
    changed = previous is None or previous.fingerprint != credential.fingerprint
    if changed:
        state.quarantined = False  # the source changed: a fresh chance
    succeeded(rs, state)
    fields = log_fields(rs, state)
    fields["expires_at"] = credential.expires_at
    if previous is not None:
        fields["previous_fingerprint"] = previous.fingerprint
    log.info(
        "token %s",
        "loaded" if previous is None else ("rotated" if changed else "refreshed"),
        extra={"fields": fields},
    )
    if changed and credential.malformed_jwt:  # once per token, at load
        log.warning(
            "token starts like a JWT but does not parse as one: it is used as an opaque "
            "token, and Amperity will likely refuse it; copy the whole token again from %s",
            API_KEYS,
            extra={"fields": log_fields(rs, state)},
        )


def select(rs: RouteState, now: float) -> None:
    """Use the best usable token (see `rank`); log a switch."""
    usable = [s for s in rs.sources if s.credential is not None and not s.quarantined]
    best = min(usable, key=lambda s: rank(s, now), default=None)
    if best is not rs.current and best is not None and rs.current is not None:
        assert best.credential is not None
        log.info(
            "route %s now uses token %s",
            rs.route,
            best.credential.fingerprint,
            extra={"fields": log_fields(rs, best)},
        )
    rs.current = best
