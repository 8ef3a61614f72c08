"""What happens when a token is the problem: upstream 401s and routes whose tokens all expired.

On an upstream 401 the cause is classified (`expired`: `exp` passed, allowing 30 s of clock
skew; `tenant_mismatch`: the upstream's message says the tenant does not match, or the token
names another tenant than the route's; `rejected`: not expired, yet refused, for a reason the
proxy can't know (a rotated or revoked key, a wrong role); `unknown`: no `exp`), counted and
explained in the log with the upstream's own message, and the store re-reads the route's
sources. When that yields a different token and the request is replayable, the caller sends it
once more with that token.

The upstream's message comes from `errors.upstream_message`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from proxy.config import Route
from proxy.errors import Refusal
from proxy.logs import Repeats
from proxy.metrics import RouteMetrics
from proxy.status import Activity
from proxy.tokens import Credential, RouteState, RouteStatus, TokenStore, in_words

log = logging.getLogger("amperity_proxy.proxy")

CLOCK_SKEW = 30.0
REMEDY = "generate a new token in Settings > Security > API keys"


# "Amperity-Tenant does not match the token's tenant", "token is not valid for tenant x", ...
_TENANT_MISMATCH_RE = re.compile(
    r"tenant.*(not match|mismatch|does not belong|not valid for|wrong|unknown|invalid)"
    r"|(mismatch|wrong|invalid|unknown).*tenant",
    re.IGNORECASE,
)


def tenant_mismatch(credential: Credential, tenant: str, message: str | None) -> bool:
    """The evidence says the token is for another tenant: the upstream's message says so, or
    the token's own claims name a different tenant than the route's."""
    if message is not None and _TENANT_MISMATCH_RE.search(message):
        return True
    return credential.tenant is not None and credential.tenant != tenant


def unauthorized_cause(
    credential: Credential, now: float, tenant: str | None = None, message: str | None = None
) -> str:
    """expired, tenant_mismatch, rejected or unknown (see the module docstring)."""
    if credential.expires_at is not None and credential.expires_at - CLOCK_SKEW <= now:
        return "expired"
    if tenant is not None and tenant_mismatch(credential, tenant, message):
        return "tenant_mismatch"
    return "unknown" if credential.expires_at is None else "rejected"


# What each cause means, and its fix: the log, `doctor` and the status page say the same.
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
        f"check the key in Settings > Security > API keys; {REMEDY} if it was rotated",
    ),
    "unknown": ("the token has no expiry, so the cause is unknown", REMEDY),
}


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


class Recovery:
    """The 401 path of one proxy: classify, count, log, recover, decide on a retry."""

    def __init__(
        self,
        store: TokenStore,
        clock: Callable[[], float] = time.time,
        activity: Activity | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.activity = activity
        # A broken token answers 401 to every request: one warning a minute, then a count.
        self.repeats = Repeats(log, clock=clock)

    async def unauthorized(
        self,
        route: Route,
        tokens: RouteState,
        metrics: RouteMetrics,
        credential: Credential,
        replayable: bool,
        request_id: str,
        message: str | None = None,
    ) -> Credential | None:
        """Handle an upstream 401; return the credential to retry with, or None. `tokens` is
        the route generation that admitted the request: the only place a replacement may come
        from."""
        now = self.clock()
        cause = unauthorized_cause(credential, now, route.tenant, message)
        metrics.unauthorized[cause].inc()
        if self.activity is not None:
            self.activity.unauthorized(route.name, cause, now)
        expiry = credential.expires_at
        if expiry is None:
            expires = "no exp claim"
        elif expiry <= now:
            expires = f"expired {in_words(now - expiry)} ago"
        else:
            expires = f"expires in {in_words(expiry - now)}"
        explanation, fix = EXPLANATIONS[cause]
        said = f'; Amperity said: "{message}"' if message else ""
        fields: dict[str, object] = {
            "request_id": request_id,
            "route": route.name,
            "tenant": route.tenant,
            "fingerprint": credential.fingerprint,
            "cause": cause,
            "token_age_seconds": round(credential.age(now)),
            "token_expires_at": expiry,
            "upstream_message": message,
        }
        held = self.repeats.admit(
            ("401", route.name, cause, credential.fingerprint),
            f"401s for route {route.name} (cause {cause}, token {credential.fingerprint})",
            {"route": route.name, "tenant": route.tenant, "cause": cause},
        )
        if held is not None:  # else a line for this route, cause and token went out recently
            log.warning(
                "Amperity answered 401 for route %s (tenant %s, token %s, age %s, %s)%s: %s; "
                "%s (token source: %s)",
                route.name,
                route.tenant,
                credential.fingerprint,
                in_words(credential.age(now)),
                expires,
                said,
                explanation,
                fix,
                tokens.source,
                extra={"fields": fields | ({"repeated": held} if held else {})},
            )
        replacement = await self.store.recover(tokens, credential)
        if replacement is None or replacement.fingerprint == credential.fingerprint:
            return None
        if not replayable:
            log.info(
                "token %s is in use now; this request can't be replayed (method or body), so "
                "its 401 goes back to the client",
                replacement.fingerprint,
                extra={"fields": fields},
            )
            return None
        metrics.response(401)  # the first answer; the retry's answer is counted as usual
        metrics.retries["unauthorized"].inc()
        log.info("retrying once with token %s", replacement.fingerprint, extra={"fields": fields})
        return replacement


def expired_refusal(route: Route, status: RouteStatus, now: float) -> Refusal | None:
    """With `expired_token: reject`: a local 401 when every token of the route is expired."""
    if route.expired_token != "reject" or status.valid(now):  # noqa: S105 (a policy name)
        return None
    expired = [t for t in status.tokens if t.credential is not None and t.credential.expired(now)]
    details = "; ".join(
        f"token {t.credential.fingerprint} ({t.source}) expired {_utc(t.credential.expires_at)} "
        f"({in_words(now - t.credential.expires_at)} ago)"
        for t in expired
        if t.credential is not None and t.credential.expires_at is not None
    )
    return Refusal(
        401,
        "token_expired",
        f"every token for route {route.name} is expired: {details}; {REMEDY} and put it in "
        "the token source (or add it under tokens:). Not sent to Amperity (expired_token: reject)",
    )
