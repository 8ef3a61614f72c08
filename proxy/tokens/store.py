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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from proxy.config import Route
from proxy.tokens.credential import (
    Credential,
    TokenError,
    parse_token,
)
from proxy.tokens.sources import Fetched, Source
from proxy.tokens.state import (
    RouteState,
    SourceState,
    failed,
    installed,
    log_fields,
    select,
    status_of,
    succeeded,
    token_key,
    warn_expiry,
)
from proxy.tokens.views import RouteStatus

log = logging.getLogger("amperity_proxy.tokens")

FILE_POLL_INTERVAL = 5.0  # seconds between re-reads of file sources
TICK_INTERVAL = 1.0  # seconds between scheduler rounds (file polls, refreshes, warnings)
# At most one 401-triggered re-read per route in this many seconds: fast enough that a token
# revoked right after its file was swapped costs about a second of 401s, not ten.
RECOVERY_INTERVAL = 1.0
MIN_REFRESH_GAP = 60.0  # a scheduled refresh never follows the last one sooner than this

SourceFactory = Callable[[Route], list[Source]]


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
            key = token_key(route)
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
            select(rs, self._clock())
            for state in rs.sources:
                warn_expiry(rs, state, now)
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
            select(rs, self._clock())
            for state in rs.sources:
                warn_expiry(rs, state, now)

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
                extra={"fields": log_fields(rs, failed_state)},
            )
        select(rs, self._clock())
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
            select(rs, self._clock())

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
            failed(rs, state, fetched, quiet, self._clock())
            return
        digest = hashlib.sha256(fetched.text.strip().encode()).hexdigest()
        if digest == state.digest and state.credential is not None and fetched.expires_in is None:
            self._schedule(state, state.credential)
            succeeded(rs, state)  # unchanged (a file re-read, mostly)
            return
        try:
            credential = parse_token(fetched.text, self._clock(), fetched.expires_in)
        except TokenError as exc:
            failed(rs, state, exc, quiet, self._clock())
            return
        installed(rs, state, credential, digest)
        self._schedule(state, credential)

    def _schedule(self, state: SourceState, credential: Credential) -> None:
        """The next planned refresh, never sooner than MIN_REFRESH_GAP from now (a command
        that keeps printing the same nearly-expired token must not run in a loop)."""
        planned = state.source.next_refresh(credential)
        if planned is not None:
            planned = max(planned, self._clock() + MIN_REFRESH_GAP)
        state.refresh_at = planned

    # --- views ------------------------------------------------------------------------

    def status(self, route: str) -> RouteStatus:
        """The current generation of `route`, as the views show it."""
        rs = self._routes.get(route)
        if rs is None:  # removed by a reload
            return RouteStatus(route, "", (), {})
        return status_of(rs)

    def snapshot(self) -> list[RouteStatus]:
        return [self.status(name) for name in self._routes]
