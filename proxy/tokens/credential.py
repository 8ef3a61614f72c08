"""A loaded token: the ready-made `Bearer …` value, its claims, and a safe fingerprint.

JWT claims are read without verifying the signature: the proxy cannot check Amperity's
signature and does not pretend to; claims only feed metrics, logs and readiness.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import jwt

# SECURITY: a token goes into a header verbatim, so it may hold only visible ASCII; anything
# else (a CR/LF, a space, a stray quote of a copied value) would corrupt or split the request.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
MAX_TOKEN_BYTES = 64 * 1024  # a JWT is a few KB; a larger file is not a token

LOAD_ERROR_REASONS = ("missing", "empty", "unreadable", "invalid", "exec_failed", "mint_failed")


class TokenError(Exception):
    """A token source could not give a usable token; the message never holds a secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fingerprint(token: str) -> str:
    """First 8 hex digits of the token's sha256: safe to log, enough to tell tokens apart."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def in_words(seconds: float) -> str:
    """A duration for people: `3.2 days`, `1 hour`, `12 minutes`, `1 minute`."""
    seconds = abs(seconds)
    if seconds >= 86400:
        value, unit = round(seconds / 86400, 1), "day"
    elif seconds >= 3600:
        value, unit = round(seconds / 3600, 1), "hour"
    else:
        value, unit = round(seconds / 60), "minute"
    if value == 1:
        return f"1 {unit}"
    return f"{value:g} {unit}s" if unit == "minute" else f"{value:.1f} {unit}s"


# Claims a token may name its tenant in. Amperity does not document its tokens' claims; these
# are the names seen or plausible (the bundled fake uses `tenant`). When none is present the
# proxy simply can't tell from the token, and judges by the upstream's message alone.
TENANT_CLAIMS = ("tenant", "amperity_tenant", "tenant_id")


def _claim_tenant(claims: Mapping[str, object]) -> str | None:
    for name in TENANT_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


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
    expires_at: float | None = None  # JWT `exp` (or load time + `expires_in` for minted tokens)
    subject: str | None = None  # JWT `sub`
    tenant: str | None = None  # the tenant the JWT names, if one of TENANT_CLAIMS is present
    is_jwt: bool = False
    # Starts like a JWT (`eyJ`) but does not parse as one: used as an opaque token, which
    # Amperity will likely refuse; a copy-paste that lost or gained characters, mostly.
    malformed_jwt: bool = False

    @property
    def token(self) -> str:
        """SECURITY: the raw token, for scrubbing it out of text; never log it."""
        return self.authorization.removeprefix("Bearer ")

    def age(self, now: float) -> float:
        """Seconds since the token was issued (or loaded, for an opaque token)."""
        return now - (self.issued_at if self.issued_at is not None else self.loaded_at)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def lifetime(self) -> float | None:
        """Seconds from issue (or load) to expiry, when the token expires."""
        if self.expires_at is None:
            return None
        start = self.issued_at if self.issued_at is not None else self.loaded_at
        return max(self.expires_at - start, 0.0)


def parse_token(text: str, loaded_at: float, expires_in: float | None = None) -> Credential:
    """Turn a token string into a Credential, reading JWT claims when it is a JWT.

    `expires_in` (from an OAuth2 token response) gives the expiry of an opaque token; a JWT's
    own `exp` wins when present.
    """
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
    expires_at = _claim_time(claims, "exp") if claims else None
    if expires_at is None and expires_in is not None:
        expires_at = loaded_at + expires_in
    return Credential(
        authorization=f"Bearer {token}",
        fingerprint=fingerprint(token),
        loaded_at=loaded_at,
        issued_at=_claim_time(claims, "iat") if claims else None,
        expires_at=expires_at,
        subject=sub if isinstance(sub, str) else None,
        tenant=_claim_tenant(claims) if claims else None,
        is_jwt=claims is not None,
        malformed_jwt=claims is None and token.startswith("eyJ"),
    )
