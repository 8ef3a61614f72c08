"""What happens when a token is the problem: upstream 401s and routes whose tokens all expired.

On an upstream 401 the cause is classified (`tokens.health.unauthorized_cause`), counted and
explained in the log with the upstream's own message (`refusals.upstream_message`), and the
store re-reads the route's sources. When that yields a different token and the request is
replayable, the request is sent once more with that token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from proxy.config import Route
from proxy.observe.activity import Activity
from proxy.observe.logs import Repeats
from proxy.observe.metrics import RouteMetrics
from proxy.refusals import Refusal
from proxy.tokens import Credential, RouteState, RouteStatus, TokenStore, in_words
from proxy.tokens.health import EXPLANATIONS, REMEDY, unauthorized_cause, utc

log = logging.getLogger("amperity_proxy.proxy")


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
        f"token {t.credential.fingerprint} ({t.source}) expired {utc(t.credential.expires_at)} "
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
