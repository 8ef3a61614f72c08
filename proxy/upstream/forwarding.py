"""One request forwarded: the retry layers around single attempts, then the answer relayed,
and every failure turned into the documented answer (see `upstream.exchange`).

`forward` is what the request pipeline calls; it returns the client's response and leaves
what happened in the request's Record.
"""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web

from proxy.listener import force_close
from proxy.observe.record import Record
from proxy.observe.tracing import Tracing
from proxy.tokens import Credential
from proxy.upstream.answer import MalformedAnswer
from proxy.upstream.attempt import attempts
from proxy.upstream.bodies import BodyClock, BodyLimit, body_refusal
from proxy.upstream.exchange import Answer, Outgoing
from proxy.upstream.failures import BadResponse, failure
from proxy.upstream.pool import Pool
from proxy.upstream.relay import head, stream
from proxy.upstream.retry import Exchange, Retry

# What an exchange can raise: the upstream failed, or the client's body broke a limit.
_FAILURES = (TimeoutError, ssl.SSLError, OSError, BodyLimit, BadResponse, MalformedAnswer)


async def forward(
    pool: Pool,
    retry: Retry,
    request: web.BaseRequest,
    exchange: Exchange,
    outgoing: Outgoing,
    credential: Credential,
    public_base: str,
    record: Record,
    body_clock: BodyClock,
    tracing: Tracing | None = None,
) -> web.StreamResponse:
    """Send `outgoing` upstream (with retries) and stream the answer back."""
    plan = exchange.plan
    attempt = attempts(pool, plan, outgoing, record, body_clock, tracing)

    answer: Answer | None = None
    response: web.StreamResponse | None = None
    try:
        async with asyncio.timeout(plan.timeouts.total):  # None: no cap (long exports)
            answer = await retry.send(attempt, credential, exchange, record)
            response = head(answer, plan, outgoing, public_base, record)
            await stream(request, response, answer, record)
        return response
    except ConnectionResetError as exc:
        if request.transport is None or request.transport.is_closing():
            record.client_gone = True  # the client went away; not an upstream failure
            return response if response is not None else web.StreamResponse(status=499)
        return _failed(exc, request, exchange, credential, record, response)
    except _FAILURES as exc:
        if record.body_error is not None:  # the client's body, not the upstream, failed
            if response is not None and response.prepared:
                force_close(request)
                return response
            return body_refusal(record, outgoing.request_id)
        return _failed(exc, request, exchange, credential, record, response)
    finally:
        if answer is not None:
            answer.release()


def _failed(
    exc: BaseException,
    request: web.BaseRequest,
    exchange: Exchange,
    credential: Credential,
    record: Record,
    response: web.StreamResponse | None,
) -> web.StreamResponse:
    answer = failure(exc, exchange.plan, credential, record, exchange.request_id)
    if response is not None and response.prepared:
        # The status line is gone already: the only honest signal left is a cut connection.
        force_close(request)
        return response
    return answer
