"""The upstream's answer, streamed down to the client: status, the response header policy, a
rewritten `Location`, then the body as it arrives (back-pressure both ways), never buffered.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from proxy.listener import CoalescedResponse
from proxy.observe.record import Record
from proxy.upstream.exchange import Answer, Outgoing
from proxy.upstream.failures import BadResponse
from proxy.upstream.headers import response_headers, rewrite_location
from proxy.upstream.plan import Plan


def check_status(answer: Answer) -> None:
    """RFC 9110 §15: a final status is 200-599; 1xx are interim, and `upstream.wire` skips 100,
    102 and 103 itself. A 101 nobody asked for, 000, 099 or 600 is a broken upstream. SECURITY: the
    connection's framing can't be trusted after it: it is closed, never reused."""
    status = answer.status
    if not 200 <= status <= 599:
        answer.close()  # SECURITY: its connection's framing can't be trusted: never reused
        raise BadResponse(f"status {status} outside 200-599")


def head(
    answer: Answer, plan: Plan, outgoing: Outgoing, public_base: str, record: Record
) -> CoalescedResponse:
    """The client's response to `answer`, before any byte of it is sent."""
    check_status(answer)
    record.upstream_status = answer.status
    record.deprecation = _deprecation(answer.headers)
    if answer.status == 429:
        record.retry_after = answer.headers.get("Retry-After")
    response = CoalescedResponse(status=answer.status, reason=answer.reason)
    response.as_bytes = answer.obs_text
    if not answer.request_sent:  # an early answer: the rest of the body is never read
        response.force_close()
    response.headers.extend(response_headers(answer.headers.items()))
    if "Location" in response.headers:
        base = plan.base_url
        response.headers["Location"] = rewrite_location(
            response.headers["Location"],
            request_url=outgoing.url,
            base_scheme=base.scheme,
            base_host=base.host,
            base_port=base.port,
            base_path=base.path,
            public_base=public_base,
        )
    if answer.resized is not None:  # a refusal's body lost an echoed secret
        response.headers.popall("Content-Length", None)
        if answer.resized >= 0:
            response.headers["Content-Length"] = str(answer.resized)
    response.headers["X-Request-ID"] = outgoing.request_id
    return response


async def stream(
    request: web.BaseRequest, response: web.StreamResponse, answer: Answer, record: Record
) -> None:
    """Send `response` and then the upstream's body as it arrives. Raises what reading the
    upstream raises; once `record.status_sent` is set, the caller can only cut the connection."""
    # The first body bytes are read before anything goes to the client: headers and first
    # bytes then leave in one write, and an upstream that fails before sending any body still
    # gets an honest 502/504 instead of a cut connection.
    first = answer.peeked if answer.peeked is not None else await answer.read()
    await response.prepare(request)
    record.status_sent = response.status
    transport = request.transport
    while first:
        await response.write(first)
        record.bytes_out += len(first)
        if transport is not None:  # a client that reads slowly keeps the upstream reads small
            answer.downstream(transport.get_write_buffer_size() > 0)
        first = await answer.read()
    await response.write_eof()


def _deprecation(headers: Mapping[str, str]) -> str | None:
    """Amperity announces api-version sunsets with `Deprecation` / `Sunset` headers."""
    found = [f"{name}: {headers[name]}" for name in ("Deprecation", "Sunset") if name in headers]
    return "; ".join(found)[:300] if found else None
