"""Route tokens: loading, JWT claims, file re-reads, and a snapshot of their state.

`TokenStore` holds one `Credential` per route. A `Credential` carries the ready-made
`Bearer …` header value; its `repr` shows only a fingerprint. JWT claims are read without
verifying the signature: the proxy cannot check Amperity's signature and does not pretend to;
claims only feed metrics, logs and readiness.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from proxy.config import Route, TokenSource

log = logging.getLogger("amperity_proxy.tokens")

# SECURITY: a token goes into a header verbatim, so it may hold only visible ASCII; anything
# else (a CR/LF, a space, a stray quote of a copied value) would corrupt or split the request.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
MAX_TOKEN_BYTES = 64 * 1024  # a JWT is a few KB; a larger file is not a token

LOAD_ERROR_REASONS = ("missing", "empty", "unreadable", "invalid")
EXPIRY_WARNING = 7 * 86400  # a token loaded with less than this left is warned about


class TokenError(Exception):
    """A token source could not give a usable token; the message never holds the token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fingerprint(token: str) -> str:
    """First 8 hex digits of the token's sha256: safe to log, enough to tell tokens apart."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def in_words(seconds: float) -> str:
    """A duration for people: `3.2 days`, `5.0 hours`, `12 minutes`."""
    seconds = abs(seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"


def _claim_time(claims: Mapping[str, object], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class Credential:
    """A loaded token. SECURITY: `authorization` is the secret; `repr` never shows it."""

    authorization: str = field(repr=False)
    fingerprint: str
    loaded_at: float
    issued_at: float | None = None  # JWT `iat`
    expires_at: float | None = None  # JWT `exp`
    subject: str | None = None  # JWT `sub`
    is_jwt: bool = False

    def age(self, now: float) -> float:
        """Seconds since the token was issued (or loaded, for an opaque token)."""
        return now - (self.issued_at if self.issued_at is not None else self.loaded_at)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def parse_token(text: str, loaded_at: float) -> Credential:
    """Turn a token string into a Credential, reading JWT claims when it is a JWT."""
    token = text.strip()
    if not token:
        raise TokenError("empty", "the token is empty")
    if not _TOKEN_RE.fullmatch(token):
        raise TokenError("invalid", "the token holds characters not allowed in an HTTP header")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:  # an opaque token still works; it just has no claims
        claims = None
    sub = claims.get("sub") if claims else None
    return Credential(
        authorization=f"Bearer {token}",
        fingerprint=fingerprint(token),
        loaded_at=loaded_at,
        issued_at=_claim_time(claims, "iat") if claims else None,
        expires_at=_claim_time(claims, "exp") if claims else None,
        subject=sub if isinstance(sub, str) else None,
        is_jwt=claims is not None,
    )


def read_source(source: TokenSource, env: Mapping[str, str]) -> str:
    """Read a source's raw token text (blocking for `file`); raise TokenError when unusable."""
    if source.kind == "value":
        return source.value
    if source.kind == "env":
        value = env.get(source.location)
        if value is None:
            raise TokenError("missing", f"environment variable {source.location} is not set")
        if not value.strip():
            raise TokenError("empty", f"environment variable {source.location} is empty")
        return value
    path = Path(source.location)
    try:
        with path.open("rb") as f:  # follows the Kubernetes `..data` symlink at every read
            data = f.read(MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        raise TokenError("missing", f"token file {path} does not exist") from None
    except OSError as exc:
        raise TokenError("unreadable", f"cannot read token file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise TokenError("invalid", f"token file {path} is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenError("invalid", f"token file {path} is not ASCII text") from None
    if not text.strip():
        raise TokenError("empty", f"token file {path} is empty")
    return text


@dataclass
class TokenState:
    """One route's token, as the store keeps it."""

    route: str
    tenant: str
    source: TokenSource
    credential: Credential | None = None
    last_error: str | None = None
    failing: bool = False
    load_errors: Counter[str] = field(default_factory=Counter)
    _raw_digest: str = ""


@dataclass(frozen=True)
class TokenStatus:
    """A read-only view of one route's token for metrics, readiness and the CLI."""

    route: str
    tenant: str
    source: str
    credential: Credential | None
    last_error: str | None
    failing: bool
    load_errors: Mapping[str, int]

    def state(self, now: float) -> str:
        if self.credential is None:
            return "missing"
        return "expired" if self.credential.expired(now) else "ok"


class TokenStore:
    """Per-route credentials; file sources are re-read off the event loop."""

    def __init__(
        self,
        routes: Iterable[Route],
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._env = os.environ if env is None else env
        self._clock = clock
        self._states = {r.name: TokenState(r.name, r.tenant, r.token) for r in routes}

    def load_initial(self) -> list[str]:
        """Load every route's token once; return one error line per route that has none."""
        errors = []
        for state in self._states.values():
            result = self._read(state.source)
            if isinstance(result, TokenError):  # reported by the caller, one line per route
                state.load_errors[result.reason] += 1
                state.last_error = str(result)
                state.failing = True
            else:
                self._apply(state, result)
            if state.credential is None:
                errors.append(f"route {state.route}: {state.last_error}")
        return errors

    def credential(self, route: str) -> Credential | None:
        return self._states[route].credential

    def snapshot(self) -> list[TokenStatus]:
        return [
            TokenStatus(
                s.route,
                s.tenant,
                s.source.describe(),
                s.credential,
                s.last_error,
                s.failing,
                dict(s.load_errors),
            )
            for s in self._states.values()
        ]

    async def reload_files(self) -> None:
        """Re-read every file source (in a thread) and apply what changed."""
        for state in self._states.values():
            if state.source.kind == "file":
                result = await asyncio.to_thread(self._read, state.source)
                self._apply(state, result)

    async def run(self, interval: float) -> None:
        """Poll file sources every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload_files()
            except Exception:  # never let the poller die; the next round tries again
                log.exception("token reload failed")

    def _read(self, source: TokenSource) -> str | TokenError:
        try:
            return read_source(source, self._env)
        except TokenError as exc:
            return exc

    def _apply(self, state: TokenState, result: str | TokenError) -> None:
        fields: dict[str, object] = {
            "route": state.route,
            "tenant": state.tenant,
            "source": state.source.describe(),
        }
        if isinstance(result, TokenError):
            state.load_errors[result.reason] += 1
            state.last_error = str(result)
            if not state.failing:
                state.failing = True
                kept = "keeping the last good token" if state.credential else "no token loaded"
                log.warning("token source failing: %s; %s", result, kept, extra={"fields": fields})
            return
        digest = hashlib.sha256(result.strip().encode()).hexdigest()
        if digest == state._raw_digest and state.credential is not None:
            self._recovered(state, fields)
            return
        try:
            credential = parse_token(result, self._clock())
        except TokenError as exc:
            self._apply(state, exc)
            return
        previous = state.credential
        state.credential = credential
        state._raw_digest = digest
        self._recovered(state, fields)
        now = self._clock()
        fields |= {
            "fingerprint": credential.fingerprint,
            "expires_at": credential.expires_at,
            "previous_fingerprint": previous.fingerprint if previous else None,
        }
        log.info("token %s", "rotated" if previous else "loaded", extra={"fields": fields})
        remedy = "generate a new one in Settings > Security > API keys"
        if credential.expired(now):
            log.warning("token is already expired; %s", remedy, extra={"fields": fields})
        elif credential.expires_at is not None and credential.expires_at - now < EXPIRY_WARNING:
            left = in_words(credential.expires_at - now)
            log.warning("token expires in %s; %s", left, remedy, extra={"fields": fields})

    @staticmethod
    def _recovered(state: TokenState, fields: dict[str, object]) -> None:
        state.last_error = None
        if state.failing:
            state.failing = False
            log.info("token source recovered", extra={"fields": fields})
