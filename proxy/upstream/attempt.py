"""One upstream attempt as a callable the retry layers loop over: `exchange.send` with the
request's plan, outgoing request, record and body clock bound, so `upstream.retry` calls down
into the exchange and never back up into `upstream.forwarding`. With tracing on, each attempt
is a client span of its own (a 401 replay or a 429/503 retry is the next span, with the reason)
that the upstream sees as its parent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from proxy.observe.record import Record
from proxy.observe.tracing import Tracing
from proxy.tokens import Credential
from proxy.upstream.bodies import BodyClock
from proxy.upstream.exchange import Answer, Outgoing, send
from proxy.upstream.plan import Plan
from proxy.upstream.pool import Pool

Attempt = Callable[[Credential], Awaitable[Answer]]  # one send with a credential


def attempts(
    pool: Pool,
    plan: Plan,
    outgoing: Outgoing,
    record: Record,
    body_clock: BodyClock,
    tracing: Tracing | None,
) -> Attempt:
    """One send per call, traced when `tracing` is given."""

    async def attempt(cred: Credential) -> Answer:
        return await send(pool, plan, outgoing, cred, record, body_clock)

    if tracing is None:
        return attempt
    url = outgoing.url.partition("?")[0]  # SECURITY: never the query in a trace
    statuses: list[int] = []

    async def traced(cred: Credential) -> Answer:
        last = statuses[-1] if statuses else None
        reason = None if last is None else "unauthorized" if last == 401 else f"status_{last}"
        span, trace = tracing.client(
            outgoing.method, url, plan.base_url.host, plan.base_url.port, len(statuses), reason
        )
        try:
            answer = await send(pool, plan, outgoing, cred, record, body_clock, trace)
        except BaseException as exc:
            tracing.finish(span, None, type(exc).__name__)
            raise
        statuses.append(answer.status)
        answer.on_release = lambda: tracing.finish(span, answer.status)
        return answer

    return traced
