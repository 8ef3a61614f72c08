"""Read-only views of the store's tokens, shared by metrics, /readyz, /status.json and
`token-info` (one JSON shape for all of them; never the token itself)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from proxy.tokens.credential import LOAD_ERROR_REASONS, Credential
from proxy.tokens.health import EXPIRING


@dataclass(frozen=True)
class TokenStatus:
    """A read-only view of one token source for metrics, readiness and the CLI."""

    source: str
    label: str
    credential: Credential | None
    in_use: bool
    quarantined: bool
    failing: bool
    last_error: str | None
    last_loaded: float | None
    load_errors: dict[str, int]

    def state(self, now: float, warn: float = EXPIRING) -> str:
        """missing, quarantined, expired, expiring (within `warn`), ok."""
        if self.credential is None:
            return "missing"
        if self.quarantined:
            return "quarantined"
        if self.credential.expired(now):
            return "expired"
        exp = self.credential.expires_at
        return "expiring" if exp is not None and exp - now <= warn else "ok"

    def as_dict(self, now: float, warn: float = EXPIRING) -> dict[str, object]:
        """The JSON view shared by /readyz and `token-info` (never the token itself)."""
        cred = self.credential
        return {
            "source": self.source,
            "fingerprint": cred.fingerprint if cred else None,
            "subject": cred.subject if cred else None,
            "issued_at": (cred.issued_at if cred.issued_at is not None else cred.loaded_at)
            if cred
            else None,
            "expires_at": cred.expires_at if cred else None,
            "seconds_left": round(cred.expires_at - now) if cred and cred.expires_at else None,
            "state": self.state(now, warn),
            "in_use": self.in_use,
            "failing": self.failing,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class RouteStatus:
    route: str
    tenant: str
    tokens: tuple[TokenStatus, ...]
    refreshes: dict[str, int]

    @property
    def current(self) -> TokenStatus | None:
        return next((t for t in self.tokens if t.in_use), None)

    @property
    def credential(self) -> Credential | None:
        current = self.current
        return current.credential if current else None

    def valid(self, now: float) -> bool:
        cred = self.credential
        return cred is not None and not cred.expired(now)

    def as_dict(self, now: float, warn: float = EXPIRING) -> dict[str, object]:
        current = self.current
        tokens = [t.as_dict(now, warn) for t in self.tokens]
        in_use = next((t for t in tokens if t["in_use"]), None)
        return {
            "route": self.route,
            "tenant": self.tenant,
            # The token in use: ok, expiring, expired, or missing when the route has none.
            "state": in_use["state"] if in_use else "missing",
            "expires_at": in_use["expires_at"] if in_use else None,
            "fingerprint": in_use["fingerprint"] if in_use else None,
            "source": current.source if current else None,
            "failing": any(t.failing for t in self.tokens),
            "tokens": tokens,
        }

    def load_errors(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for token in self.tokens:
            total.update(token.load_errors)
        return {reason: total.get(reason, 0) for reason in LOAD_ERROR_REASONS}
