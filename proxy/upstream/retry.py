"""Retries as layers around one upstream attempt, as httpx's send wraps its single send: each
layer loops over the one below and never calls back up.

- **401 recovery** (`Recovery`): the cause is classified (`tokens.health.unauthorized_cause`),
  counted and explained in the log with the upstream's own message; the store re-reads the
  sources of the route generation that admitted the request. When that yields a different token
  and the request is replayable, it is sent once more with that token.
- **429/503 back-off**: a replayable request (idempotent method, body kept) is sent again after
  the upstream's `Retry-After` or a full-jitter exponential delay, up to the route's `retry`
  policy's attempts. POST and PATCH are never replayed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from proxy.config.traffic import RetryPolicy
from proxy.observe.activity import Activity
from proxy.observe.logs import Repeats
from proxy.observe.metrics import RouteMetrics
from proxy.observe.record import Record
from proxy.tokens import Credential, RouteState, TokenStore, in_words
from proxy.tokens.health import EXPLANATIONS, unauthorized_cause
from proxy.upstream.attempt import Attempt
from proxy.upstream.exchange import Answer
from proxy.upstream.plan import Plan

log = logging.getLogger("amperity_proxy.proxy")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request's context for the retry layers."""

    plan: Plan
    tokens: RouteState  # SECURITY: the generation that admitted the request, and only it
    metrics: RouteMetrics
    request_id: str
    replayable: bool


class Retry:
    """The retry layers of one proxy (injected clock, sleep and randomness for tests)."""

    def __init__(
        self,
        store: TokenStore,
        activity: Activity,
        clock: Callable[[], float] = time.time,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.recovery = Recovery(store, clock, activity)
        self.sleep: Sleep = sleep or asyncio.sleep
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)

    async def send(
        self, attempt: Attempt, credential: Credential, exchange: Exchange, record: Record
    ) -> Answer:
        """`attempt` with `credential`, then once more after a recoverable 401, then again on
        429/503 per the route's policy; the last answer is the one relayed."""
        answer = await attempt(credential)
        if answer.status == 401:
            replacement = await self.recovery.unauthorized(exchange, credential, record)
            if replacement is not None:
                answer.release()
                record.retried = True
                credential = replacement
                answer = await attempt(credential)
        return await self._back_off(attempt, credential, exchange, answer)

    async def _back_off(
        self, attempt: Attempt, credential: Credential, exchange: Exchange, answer: Answer
    ) -> Answer:
        policy = exchange.plan.retry
        sent = 1
        while (
            policy is not None
            and exchange.replayable
            and answer.status in policy.on
            and sent < policy.attempts
        ):
            delay = retry_delay(policy, sent, answer.headers.get("Retry-After"), self.rng)
            answer.release()
            exchange.metrics.retry(f"status_{answer.status}")
            await self.sleep(delay)
            sent += 1
            answer = await attempt(credential)
        return answer


def retry_delay(
    policy: RetryPolicy, attempt: int, retry_after: str | None, rng: random.Random
) -> float:
    """Seconds before send number `attempt + 1`: the upstream's `Retry-After` (seconds or an
    HTTP date) when given, else full-jitter exponential back-off; capped at `policy.max`."""
    if retry_after:
        seconds = retry_after_seconds(retry_after)
        if seconds is not None:
            return min(policy.max, max(0.0, seconds))
    return rng.uniform(0, min(policy.max, policy.base * 2 ** (attempt - 1)))


def retry_after_seconds(value: str) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date); None when unreadable."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


class Recovery:
    """The 401 path of one proxy: classify, count, log, recover, decide on a retry."""

    def __init__(
        self, store: TokenStore, clock: Callable[[], float], activity: Activity | None
    ) -> None:
        self.store = store
        self.clock = clock
        self.activity = activity
        # A broken token answers 401 to every request: one warning a minute, then a count.
        self.repeats = Repeats(log, clock=clock)

    async def unauthorized(
        self, exchange: Exchange, credential: Credential, record: Record
    ) -> Credential | None:
        """Handle an upstream 401; return the credential to retry with, or None. The
        replacement comes only from `exchange.tokens`, the generation that admitted it."""
        plan, now, message = exchange.plan, self.clock(), record.upstream_message
        cause = unauthorized_cause(credential, now, plan.tenant, message)
        record.unauthorized_cause = cause
        exchange.metrics.unauthorized[cause].inc()
        if self.activity is not None:
            self.activity.unauthorized(plan.name, cause, now)
        fields: dict[str, object] = {
            "request_id": exchange.request_id,
            "route": plan.name,
            "tenant": plan.tenant,
            "fingerprint": credential.fingerprint,
            "cause": cause,
            "token_age_seconds": round(credential.age(now)),
            "token_expires_at": credential.expires_at,
            "upstream_message": message,
        }
        self._explain(exchange, credential, cause, message, fields, now)
        replacement = await self.store.recover(exchange.tokens, credential)
        if replacement is None or replacement.fingerprint == credential.fingerprint:
            return None
        if not exchange.replayable:
            log.info(
                "token %s is in use now; this request can't be replayed (method or body), so "
                "its 401 goes back to the client",
                replacement.fingerprint,
                extra={"fields": fields},
            )
            return None
        exchange.metrics.response(401)  # the first answer; the retry's is counted as usual
        exchange.metrics.retries["unauthorized"].inc()
        log.info("retrying once with token %s", replacement.fingerprint, extra={"fields": fields})
        return replacement

    def _explain(
        self,
        exchange: Exchange,
        credential: Credential,
        cause: str,
        message: str | None,
        fields: dict[str, object],
        now: float,
    ) -> None:
        """The warning for a 401: once per route, cause and token per interval, then a count."""
        plan = exchange.plan
        held = self.repeats.admit(
            ("401", plan.name, cause, credential.fingerprint),
            f"401s for route {plan.name} (cause {cause}, token {credential.fingerprint})",
            {"route": plan.name, "tenant": plan.tenant, "cause": cause},
        )
        if held is None:  # a line for this route, cause and token went out recently
            return
        expiry = credential.expires_at
        if expiry is None:
            expires = "no exp claim"
        elif expiry <= now:
            expires = f"expired {in_words(now - expiry)} ago"
        else:
            expires = f"expires in {in_words(expiry - now)}"
        explanation, fix = EXPLANATIONS[cause]
        log.warning(
            "Amperity answered 401 for route %s (tenant %s, token %s, age %s, %s)%s: %s; "
            "%s (token source: %s)",
            plan.name,
            plan.tenant,
            credential.fingerprint,
            in_words(credential.age(now)),
            expires,
            f'; Amperity said: "{message}"' if message else "",
            explanation,
            fix,
            exchange.tokens.source,
            extra={"fields": fields | ({"repeated": held} if held else {})},
        )
