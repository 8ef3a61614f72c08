"""What a token's state means, and what to do about it: the one home of the thresholds, the
remedy texts, the token-state classification and the 401-cause classification. The store, the
status page, `/readyz`, `token-info`, `doctor` and the 401 log line all read them from here.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from proxy.config import Route
from proxy.refusals import Refusal, refuse
from proxy.tokens.credential import Credential, in_words

if TYPE_CHECKING:
    from proxy.tokens.views import RouteStatus

EXPIRING = 7 * 86400  # seconds: a token this close to its `exp` is "expiring"
# The log warns once as a token comes within each of these of its expiry (largest first).
EXPIRY_WARNINGS = ((EXPIRING, "7 days"), (86400, "1 day"), (3600, "1 hour"))
CLOCK_SKEW = 30.0  # seconds of clock difference tolerated before calling a 401 "expired"

API_KEYS = "Settings > Security > API keys"  # where Amperity makes and rotates tokens
REMEDY = f"generate a new token in {API_KEYS}"

# "Amperity-Tenant does not match the token's tenant", "token is not valid for tenant x", ...
_TENANT_MISMATCH_RE = re.compile(
    r"tenant.*(not match|mismatch|does not belong|not valid for|wrong|unknown|invalid)"
    r"|(mismatch|wrong|invalid|unknown).*tenant",
    re.IGNORECASE,
)

# What each 401 cause means, and its fix: the log, `doctor` and the status page say the same.
EXPLANATIONS = {
    "expired": ("the token has expired", REMEDY),
    "tenant_mismatch": (
        "the token is for another tenant than the route's",
        "check the route's tenant (it must be the tenant the API key was made in), or use a "
        "token made in that tenant",
    ),
    "rejected": (
        "the token has not expired, yet Amperity refused it (a rotated or revoked key, or a "
        "key without access; the proxy can't tell which)",
        f"check the key in {API_KEYS}; {REMEDY} if it was rotated",
    ),
    "unknown": ("the token has no expiry, so the cause is unknown", REMEDY),
}


def utc(timestamp: float) -> str:
    """A time for people and logs: `2026-12-01 17:26 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def tenant_mismatch(credential: Credential, tenant: str, message: str | None) -> bool:
    """The evidence says the token is for another tenant: the upstream's message says so, or
    the token's own claims name a different tenant than the route's."""
    if message is not None and _TENANT_MISMATCH_RE.search(message):
        return True
    return credential.tenant is not None and credential.tenant != tenant


# The 401 causes that blame the token: only these move a route's health (status page,
# /readyz detail). A cause that blames the request would be counted and shown, never judged.
TOKEN_CAUSES = frozenset({"expired", "rejected", "unknown", "tenant_mismatch"})


def unauthorized_cause(
    credential: Credential, now: float, tenant: str | None = None, message: str | None = None
) -> str:
    """Why Amperity answered 401: `expired` (`exp` passed, CLOCK_SKEW allowed),
    `tenant_mismatch` (on evidence only), `rejected` (not expired, reason unknown to the
    proxy) or `unknown` (no `exp`)."""
    if credential.expires_at is not None and credential.expires_at - CLOCK_SKEW <= now:
        return "expired"
    if tenant is not None and tenant_mismatch(credential, tenant, message):
        return "tenant_mismatch"
    return "unknown" if credential.expires_at is None else "rejected"


def token_state(status: RouteStatus, now: float) -> str:
    """A route's token state: ok, expiring (within EXPIRING), expired, failing (a source
    can't be read; the last good token is in use), missing."""
    current = status.current
    if current is None or current.credential is None:
        return "missing"
    state = current.state(now, EXPIRING)
    if state in ("expired", "expiring"):
        return state
    return "failing" if any(t.failing for t in status.tokens) else "ok"


def expired_refusal(route: Route, status: RouteStatus, now: float) -> Refusal | None:
    """With `expired_token: reject`: a local 401 when every token of the route is expired."""
    if route.expired_token != "reject" or status.valid(now):  # noqa: S105 (a policy name)
        return None
    expired = [t for t in status.tokens if t.credential is not None and t.credential.expired(now)]
    details = "; ".join(
        f"token {t.credential.fingerprint} ({t.source}) expired {utc(t.credential.expires_at)} "
        f"({in_words(now - t.credential.expires_at)} ago)"
        for t in expired
        if t.credential is not None and t.credential.expires_at is not None
    )
    return refuse(
        "token_expired",
        f"every token for route {route.name} is expired: {details}; {REMEDY} and put it in "
        "the token source (or add it under tokens:). Not sent to Amperity (expired_token: reject)",
    )
