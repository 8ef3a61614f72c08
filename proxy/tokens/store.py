"""Per-route tokens: several sources, the one in use, refresh, quarantine and 401 recovery.

A route has one or more sources (`token:` or `tokens:`). The token in use is the usable one
with the latest `exp` (a token without `exp` ranks after any unexpired one with `exp`; expired
ones come last). A token that got a 401 while another usable token exists is quarantined until
its source gives a different token. Refreshes are single-flight per source; failures back off
exponentially and keep the last good token.

SECURITY: a `RouteState` is one *generation* of one route's tokens (its tenant, base URL and
sources, see `_token_key`). A request holds the RouteState that admitted it (through its
`Target`) and reads and recovers its credential there, never by route name: after a reload that
changes the route, the name leads to another generation (another tenant, host or token), and a
401 on the old host must not be replayed with the new generation's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config import Route
from proxy.tokens.credential import (
    Credential,
    TokenError,
    in_words,
    parse_token,
)
from proxy.tokens.health import API_KEYS, EXPIRY_WARNINGS, REMEDY
from proxy.tokens.sources import Fetched, Source
from proxy.tokens.views import RouteStatus, TokenStatus

log = logging.getLogger("amperity_proxy.tokens")

FILE_POLL_INTERVAL = 5.0  # seconds between re-reads of file sources
# At most one 401-triggered re-read per route in this many seconds: fast enough that a token
# revoked right after its file was swapped costs about a second of 401s, not ten.
RECOVERY_INTERVAL = 1.0
MAX_BACKOFF = 300.0
MIN_REFRESH_GAP = 60.0  # a scheduled refresh never follows the last one sooner than this

SourceFactory = Callable[[Route], list[Source]]


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


def _token_key(route: Route) -> tuple[object, ...]:
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


def _rank(state: SourceState, now: float) -> tuple[int, float]:
    """Sort key, lowest first: unexpired with exp (latest first), unexpired without, expired."""
    cred = state.credential
    assert cred is not None
    if cred.expires_at is None:
        return (1, 0.0)
    if cred.expired(now):
        return (2, -cred.expires_at)
    return (0, -cred.expires_at)


class TokenStore:
    """Every route's token sources and the credential each route uses now."""

    def __init__(
        self,
        routes: Iterable[Route],
        sources: SourceFactory,
        *,
        clock: Callable[[], float] = time.time,
        file_poll_interval: float = FILE_POLL_INTERVAL,
    ) -> None:
        self._clock = clock
        self._file_poll_interval = file_poll_interval
        self._next_file_poll = 0.0
        self._routes: dict[str, RouteState] = {}
        self._routes = self.prepare(routes, sources)

    # --- the request path -------------------------------------------------------------

    @property
    def routes(self) -> Mapping[str, RouteState]:
        """The current generation of every route, by name (what new requests are admitted to)."""
        return self._routes

    def credential(self, route: str) -> Credential | None:
        """The credential the current generation of `route` uses (views and diagnostics; the
        request path reads its own generation's `RouteState.credential`)."""
        state = self._routes.get(route)  # a route removed by a reload has none
        return state.credential if state else None

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(self._routes)

    # --- reloads: prepare, load, commit --------------------------------------------------

    def prepare(self, routes: Iterable[Route], sources: SourceFactory) -> dict[str, RouteState]:
        """Route states for a new config: a route whose token settings are unchanged keeps its
        state (and its tokens); any other gets fresh sources, not loaded yet."""
        prepared = {}
        for route in routes:
            key = _token_key(route)
            old = self._routes.get(route.name)
            if old is not None and old.key == key:
                prepared[route.name] = old
            else:
                sources_ = [SourceState(s) for s in sources(route)]
                prepared[route.name] = RouteState(route.name, route.tenant, sources_, key=key)
        return prepared

    async def load(self, routes: dict[str, RouteState]) -> list[str]:
        """Fetch the sources of prepared routes that were never loaded; one error per route
        left without a token."""
        fresh = [rs for rs in routes.values() if not rs.loaded]
        await asyncio.gather(
            *(self._refresh(rs, s, quiet=True) for rs in fresh for s in rs.sources)
        )
        errors = []
        now = self._clock()
        for rs in fresh:
            rs.loaded = True
            self._select(rs)
            for state in rs.sources:
                self._warn_expiry(rs, state, now)
            if rs.current is None:
                problems = "; ".join(s.last_error or "no token" for s in rs.sources)
                errors.append(f"route {rs.route}: {problems}")
        return errors

    def commit(self, routes: dict[str, RouteState]) -> None:
        """Make prepared (and loaded) routes the ones in use."""
        self._routes = routes

    # --- loading and refreshing -------------------------------------------------------

    async def load_initial(self) -> list[str]:
        """Fetch every source once; return one error line per route left without a token."""
        self._next_file_poll = self._clock() + self._file_poll_interval
        return await self.load(self._routes)

    async def reload_files(self) -> None:
        """Re-read every file source now."""
        await self._refresh_where(lambda s: s.source.polled)

    def file_paths(self) -> list[str]:
        """The paths of every current file source (what the file watch watches)."""
        return [
            s.source.config.location
            for rs in self._routes.values()
            for s in rs.sources
            if s.source.config.kind == "file"
        ]

    async def reread_directories(self, directories: set[str]) -> None:
        """Re-read the file sources whose files sit in one of `directories` (a watch event)."""

        def inside(state: SourceState) -> bool:
            config = state.source.config
            return config.kind == "file" and str(Path(config.location).absolute().parent) in (
                directories
            )

        await self._refresh_where(inside)

    async def tick(self) -> None:
        """One scheduler round: file polls, due refreshes, back-off retries, expiry warnings."""
        now = self._clock()
        poll_files = now >= self._next_file_poll
        if poll_files:
            self._next_file_poll = now + self._file_poll_interval

        def due(state: SourceState) -> bool:
            if state.source.polled:
                return poll_files
            if state.retry_at is not None:
                return now >= state.retry_at
            return state.refresh_at is not None and now >= state.refresh_at

        await self._refresh_where(due)
        for rs in self._routes.values():
            self._select(rs)
            for state in rs.sources:
                self._warn_expiry(rs, state, now)

    async def run(self, interval: float) -> None:
        """Call `tick` every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # never let the scheduler die; the next round tries again
                log.exception("token refresh round failed")

    async def recover(self, rs: RouteState, failed: Credential) -> Credential | None:
        """After an upstream 401 with `failed`: re-read the sources of the generation that sent
        it (at most once per RECOVERY_INTERVAL), quarantine `failed` if another usable token
        exists, and return the credential that generation uses now. SECURITY: never another
        generation's, even when a reload replaced this one while the request was in flight."""
        now = self._clock()
        if rs.recovering is None and now - rs.last_recovery >= RECOVERY_INTERVAL:
            rs.last_recovery = now
            rs.recovering = asyncio.create_task(self._recover_sources(rs))
        if rs.recovering is not None:
            # Concurrent 401s wait for the same re-read instead of giving up on it, but no
            # longer than the sources' own timeout: then they carry on with what there is.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(rs.recovering), rs.recovery_wait)
        now = self._clock()
        failed_state = next(
            (
                s
                for s in rs.sources
                if s.credential and s.credential.fingerprint == failed.fingerprint
            ),
            None,
        )
        others = [
            s
            for s in rs.sources
            if s is not failed_state
            and s.credential
            and not s.quarantined
            and not s.credential.expired(now)
        ]
        if failed_state is not None and others and not failed_state.quarantined:
            failed_state.quarantined = True
            log.warning(
                "token %s set aside after a 401 until its source changes; another token is in use",
                failed.fingerprint,
                extra={"fields": self._fields(rs, failed_state)},
            )
        self._select(rs)
        return rs.credential

    async def _recover_sources(self, rs: RouteState) -> None:
        try:
            await asyncio.gather(
                *(self._refresh(rs, s) for s in rs.sources if s.source.refreshable)
            )
        finally:
            rs.recovering = None

    async def _refresh_where(self, predicate: Callable[[SourceState], bool]) -> None:
        await asyncio.gather(
            *(
                self._refresh(rs, s)
                for rs in self._routes.values()
                for s in rs.sources
                if predicate(s)
            )
        )
        for rs in self._routes.values():
            self._select(rs)

    async def _refresh(self, rs: RouteState, state: SourceState, *, quiet: bool = False) -> None:
        """Fetch one source; concurrent callers share one fetch (single flight)."""
        if state.inflight is None or state.inflight.done():
            state.inflight = asyncio.create_task(self._fetch(rs, state, quiet))
        await asyncio.shield(state.inflight)

    async def _fetch(self, rs: RouteState, state: SourceState, quiet: bool) -> None:
        try:
            fetched: Fetched | TokenError = await state.source.fetch()
        except TokenError as exc:
            fetched = exc
        if isinstance(fetched, TokenError):
            self._failed(rs, state, fetched, quiet)
            return
        digest = hashlib.sha256(fetched.text.strip().encode()).hexdigest()
        if digest == state.digest and state.credential is not None and fetched.expires_in is None:
            self._schedule(state, state.credential)
            self._succeeded(rs, state)  # unchanged (a file re-read, mostly)
            return
        try:
            credential = parse_token(fetched.text, self._clock(), fetched.expires_in)
        except TokenError as exc:
            self._failed(rs, state, exc, quiet)
            return
        previous = state.credential
        state.credential = credential
        state.digest = digest
        state.last_loaded = credential.loaded_at
        state.warned = 0
        self._schedule(state, credential)
        if previous is None or previous.fingerprint != credential.fingerprint:
            state.quarantined = False  # the source changed: a fresh chance
        self._succeeded(rs, state)
        fields = self._fields(rs, state)
        fields["expires_at"] = credential.expires_at
        if previous is not None:
            fields["previous_fingerprint"] = previous.fingerprint
        changed = previous is None or previous.fingerprint != credential.fingerprint
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
                extra={"fields": self._fields(rs, state)},
            )

    def _schedule(self, state: SourceState, credential: Credential) -> None:
        """The next planned refresh, never sooner than MIN_REFRESH_GAP from now (a command
        that keeps printing the same nearly-expired token must not run in a loop)."""
        planned = state.source.next_refresh(credential)
        if planned is not None:
            planned = max(planned, self._clock() + MIN_REFRESH_GAP)
        state.refresh_at = planned

    def _succeeded(self, rs: RouteState, state: SourceState) -> None:
        state.last_error = None
        state.retry_at = None
        state.failures = 0
        if state.source.refreshable and not state.source.polled:
            rs.refreshes["success"] += 1
        if state.failing:
            state.failing = False
            log.info("token source recovered", extra={"fields": self._fields(rs, state)})

    def _failed(self, rs: RouteState, state: SourceState, exc: TokenError, quiet: bool) -> None:
        state.load_errors[exc.reason] += 1
        state.last_error = str(exc)
        if state.source.refreshable and not state.source.polled:
            rs.refreshes["failure"] += 1
            state.failures += 1
            state.retry_at = self._clock() + min(MAX_BACKOFF, 2.0 ** (state.failures - 1))
        if not state.failing:
            state.failing = True
            if not quiet:  # at start-up the caller reports it, one line per route
                kept = "keeping the last good token" if state.credential else "no token loaded"
                log.warning(
                    "token source failing: %s; %s",
                    exc,
                    kept,
                    extra={"fields": self._fields(rs, state)},
                )

    def _select(self, rs: RouteState) -> None:
        now = self._clock()
        usable = [s for s in rs.sources if s.credential is not None and not s.quarantined]
        best = min(usable, key=lambda s: _rank(s, now), default=None)
        if best is not rs.current and best is not None and rs.current is not None:
            assert best.credential is not None
            log.info(
                "route %s now uses token %s",
                rs.route,
                best.credential.fingerprint,
                extra={"fields": self._fields(rs, best)},
            )
        rs.current = best

    def _warn_expiry(self, rs: RouteState, state: SourceState, now: float) -> None:
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
        fields = self._fields(rs, state) | {"expires_at": cred.expires_at}
        if left <= 0:
            log.warning(
                "token expired %s ago; %s", in_words(left), REMEDY, extra={"fields": fields}
            )
        else:
            window = EXPIRY_WARNINGS[level - 1][1]
            log.warning(
                "token expires within %s (in %s); %s",
                window,
                in_words(left),
                REMEDY,
                extra={"fields": fields},
            )

    @staticmethod
    def _fields(rs: RouteState, state: SourceState) -> dict[str, object]:
        fields: dict[str, object] = {
            "route": rs.route,
            "tenant": rs.tenant,
            "source": state.source.config.describe(),
        }
        if state.credential is not None:
            fields["fingerprint"] = state.credential.fingerprint
        return fields

    # --- views ------------------------------------------------------------------------

    def status(self, route: str) -> RouteStatus:
        """The current generation of `route`, as the views show it."""
        rs = self._routes.get(route)
        if rs is None:  # removed by a reload
            return RouteStatus(route, "", (), {})
        return self.status_of(rs)

    @staticmethod
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
                    s.source.config.kind
                    if len(rs.sources) == 1
                    else f"{s.source.config.kind}[{i}]",
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

    def snapshot(self) -> list[RouteStatus]:
        return [self.status(name) for name in self._routes]
