"""Connection-level limits, below the request handler: what aiohttp's server does not do itself.

- **max_connections**: past it, a new connection gets a 503 envelope and is closed at once, so
  nothing queues without bound.
- **header deadline**: from the moment a connection opens (or its previous response was
  handed over) the client has `header_timeout` seconds to send complete request headers; a
  connection with a partial request gets a 408 envelope, an idle one is closed quietly (like
  HAProxy's `timeout http-request`, which also bounds keep-alive idleness). aiohttp has no such
  deadline, so slow-header clients (slowloris) could otherwise hold connections forever.
- **the Server field** of the proxy's own answers (both listeners) is `amperity-auth-proxy`,
  not aiohttp's `Python/3.x aiohttp/3.y.z`: a version in every answer tells a scanner which
  advisories to try. aiohttp has no setting for it, so its module default is replaced here.
  An upstream answer relayed with its own `Server` keeps it.
- **request bodies are never decompressed** (`auto_decompress=False`): what the client framed
  is what the upstream path reads, and its Content-Encoding travels with it.
- **parser errors** answer in the proxy's JSON envelope with the right status (414 request line
  too long, 431 headers too large or too many, 400 otherwise), never echoing request bytes, and
  are logged without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web, web_response
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from proxy.config.limits import Limits
from proxy.listener import accept
from proxy.refusals import Refusal, answer, internal_refusal, raw_envelope, refuse

log = logging.getLogger("amperity_proxy.connections")

SERVER = "amperity-auth-proxy"
web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]  # prepare()'s default

Reject = Callable[[str], None]
_UNWIND = 0.5  # seconds cancelled handlers get to write their log lines after the drain


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus the header deadline and enveloped parse errors."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._deadline: asyncio.TimerHandle | None = None
        self._busy = False
        self._idle_since = 0.0  # when the connection last became idle (loop time)
        self._partial = False  # bytes of a request arrived since the deadline was armed
        self.gone = asyncio.Event()  # set when the client disconnects (queued requests give up)
        self._counted = False  # held in the server's Occupancy (from accept until given back)
        self._address: str | None = None
        self._accepted = 0.0  # loop time of accept: the header deadline runs from there

    def counted(self, address: str | None, accepted: float) -> None:
        """Admitted at accept (`GuardedServer.take`): counted until the connection ends."""
        self._counted, self._address, self._accepted = True, address, accepted

    def never_made(self) -> None:
        """A TLS handshake that failed or timed out: give back what accept counted."""
        self._give_back()

    def _give_back(self) -> None:
        if self._counted:
            self._counted = False
            self._guard.occupancy.give_back(self._address)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._counted:  # plain TCP: admitted here, at accept
            address = accept.peer(transport)
            refusal = self._guard.take(address)
            if refusal is not None:
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(raw_envelope(refusal))
                self.force_close()
                return
            self.counted(address, asyncio.get_running_loop().time())
        # TLS: the handshake came out of the same header_timeout.
        elapsed = asyncio.get_running_loop().time() - self._accepted
        self._arm(max(self._guard.header_timeout - elapsed, 0.001))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._give_back()
        self.gone.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self._busy:
            self._partial = True
        super().data_received(data)

    @property
    def draining(self) -> bool:
        """The server is shutting down: a request cut now was cut by the drain."""
        return self._guard.draining

    def abandon_body(self) -> None:
        """Close after the current response instead of reading the rest of an unwanted body
        (aiohttp would otherwise linger up to 10 s draining it)."""
        self._lingering_time = 0.0
        self.close()

    # The deadline timer is not cancelled and re-created for every request (that was a
    # noticeable share of a small request's cost): requests only move `_idle_since`, and a timer
    # that fires early re-arms itself for the time that is left.

    def request_started(self) -> None:
        self._busy = True

    def request_finished(self) -> None:
        accept.idle(self.transport)  # a body that streamed grew the TLS read buffer
        self._busy = False
        self._partial = False
        self._idle_since = asyncio.get_running_loop().time()
        if (
            self._deadline is None
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._arm()

    def _arm(self, delay: float | None = None) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        if delay is None:
            self._idle_since = loop.time()
            delay = self._guard.header_timeout
        elif not self._idle_since:  # the first deadline: from accept
            self._idle_since = self._accepted or loop.time()
        self._deadline = loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if self._busy or transport is None or transport.is_closing():
            return  # a running request re-arms the deadline when it finishes
        left = self._idle_since + self._guard.header_timeout - asyncio.get_running_loop().time()
        if left > 0.001:  # a request finished since this timer was set: wait for the rest
            self._arm(left)
            return
        if self._partial:  # headers started but never completed: tell the client why
            self._guard.reject("header_timeout")
            transport.write(raw_envelope(self._guard.header_timeout_refusal))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parser and server errors in the proxy's envelope; request bytes are never echoed,
        and aiohttp's own error page is never what a client gets."""
        if status >= 500 or not isinstance(exc, BadHttpMessage):
            return self._internal(request, status, exc)
        refusal = self._guard.classify(exc)
        self._guard.reject(refusal.reason)
        log.info(
            "refused a malformed request from %s: %s",
            request.remote,
            type(exc).__name__,
            extra={"fields": {"refused": refusal.reason, "status": refusal.status}},
        )
        response = answer(refusal, uuid.uuid4().hex)
        response.force_close()
        return response

    def _internal(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> web.StreamResponse:
        """An exception the handler didn't expect (or aiohttp's own handler timeout): the
        traceback logged once, the envelope if no byte of the answer left yet, else a cut
        connection (as aiohttp does: a half-sent answer can't be replaced)."""
        rid = uuid.uuid4().hex
        log.error(
            "internal error answering %s %s",
            request.method,
            request.rel_url.path,
            exc_info=exc,
            extra={"fields": {"request_id": rid, "status": status}},
        )
        if request.writer.output_size > 0:
            self.force_close()
            raise ConnectionError("the answer had started; the connection is cut")
        response = answer(internal_refusal(status), rid)
        response.force_close()
        return response


class GuardedServer(web.Server):
    """`web.Server` with a connection cap and `GuardedHandler` connections."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        max_connections: int,
        header_timeout: float,
        max_request_line: int,
        max_header_size: int,
        max_headers: int,
        reject: Reject,
        cap_setting: str = "limits.max_connections",
        per_address: int | None = None,
        admit_peer: accept.AdmitPeer | None = None,
        **kwargs: Any,
    ) -> None:
        async def guarded(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if isinstance(protocol, GuardedHandler):
                protocol.request_started()
            try:
                return await handler(request)
            finally:
                if isinstance(protocol, GuardedHandler):
                    protocol.request_finished()

        # When the two limits are equal, the request line's is raised by one byte so that
        # llhttp's LineTooLong (which only carries the limit) tells 414 from 431.
        self.line_limit = max_request_line + (1 if max_request_line == max_header_size else 0)
        self.field_limit = max_header_size
        super().__init__(
            guarded,
            max_line_size=self.line_limit,
            max_field_size=self.field_limit,
            max_headers=max_headers,
            **kwargs,
        )
        self.max_connections = max_connections
        self._cap_setting = cap_setting
        self.occupancy = accept.Occupancy(max_connections, per_address or max_connections)
        self.admit_peer = admit_peer  # None: every peer may connect (the admin listener)
        self.tls: ssl.SSLContext | None = None  # set for listen.tls: the handshake is ours
        self.header_timeout = header_timeout
        self.reject = reject
        self._refusals(cap_setting, max_connections, max_request_line, max_header_size, max_headers)
        self.draining = False  # set by shutdown()

    def configure(self, limits: Limits, max_connections: int, header_timeout: float) -> None:
        """A reload's limits: the caps and the header deadline at once (connections already
        open are counted as they were), the parser's sizes for new connections."""
        self.max_connections = max_connections
        self.occupancy.cap = max_connections
        self.occupancy.per_address = limits.per_address
        self.header_timeout = header_timeout
        line, field = limits.max_request_line, limits.max_header_size
        self.line_limit = line + (1 if line == field else 0)
        self.field_limit = field
        self._kwargs.update(
            max_line_size=self.line_limit,
            max_field_size=field,
            max_headers=limits.max_headers,
            keepalive_timeout=header_timeout + 1,
        )
        self._refusals(self._cap_setting, max_connections, line, field, limits.max_headers)

    def _refusals(self, cap_setting: str, cap: int, line: int, field: int, headers: int) -> None:
        """Each refusal names the setting that would raise its limit (built once, here)."""
        section = cap_setting.partition(".")[0]
        self._too_many = refuse(
            "too_many_connections", f"too many connections ({cap_setting}: {cap}); retry"
        )
        self.header_timeout_refusal = refuse(
            "header_timeout",
            f"request headers not received within {self.header_timeout:g}s "
            f"({section}.header_timeout)",
        )
        self._line_too_long = refuse(
            "request_line_too_long",
            f"the request line is longer than {line} bytes (limits.max_request_line raises it)",
        )
        self._field_too_large = refuse(
            "headers_too_large",
            f"a request header is longer than {field} bytes (limits.max_header_size raises it)",
        )
        self._too_many_headers = refuse(
            "headers_too_large",
            f"more than {headers} request headers (limits.max_headers raises it)",
        )
        self._malformed = refuse("bad_request", "malformed HTTP request")
        self._foreign = refuse(  # only the proxy listener judges peers at accept
            "forbidden_client", "this client address may not use this proxy (listen.allow_clients)"
        )
        self._per_address = refuse(
            "too_many_connections",
            f"too many connections from this address ({section}.max_connections_per_address); "
            "retry",
        )

    @classmethod
    def of(
        cls,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        limits: Limits,
        max_connections: int,
        header_timeout: float,
        section: str,
        reject: Reject,
        admit_peer: accept.AdmitPeer | None = None,
    ) -> GuardedServer:
        """A listener's server: `limits`' size limits, with the listener's own cap and header
        deadline (`section`: `limits` or `admin`, for the messages); `admit_peer` judges an
        address at accept (the proxy listener's `allow_clients`)."""
        return cls(
            handler,
            max_connections=max_connections,
            header_timeout=header_timeout,
            max_request_line=limits.max_request_line,
            max_header_size=limits.max_header_size,
            max_headers=limits.max_headers,
            cap_setting=f"{section}.max_connections",
            per_address=limits.per_address if section == "limits" else None,
            admit_peer=admit_peer,
            reject=reject,
            access_log=None,
            # SECURITY: a request body passes through as the client's bytes, its
            # Content-Encoding with it. aiohttp's server inflates it by default; the proxy
            # would then forward more (or other) bytes than the client framed.
            auto_decompress=False,
            # The header deadline bounds idle keep-alive connections; aiohttp's own
            # keep-alive timer would only add a second, longer one.
            keepalive_timeout=header_timeout + 1,
        )

    def __call__(self) -> asyncio.BaseProtocol:  # type: ignore[override]
        if self.tls is not None:
            return accept.TLSAccept(self, self.tls)
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        """Drain within `timeout` seconds in all. aiohttp's own shutdown waits the timeout for
        handlers, cancels them, then may wait the timeout again (33 s for a 15 s setting, past
        Kubernetes' 30 s grace): here in-flight requests get `timeout`, then the ones left are
        cancelled and their connections closed, with a short bounded wait for them to unwind."""
        budget = 0.0 if timeout is None else timeout
        self.draining = True
        # Phase 1 inside aiohttp waits `budget` for handlers; its phase 2 (cancel, then wait
        # again) is cut short here.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(super().shutdown(budget), budget + _UNWIND)
        for connection in list(self._connections):
            connection.force_close()
        self._connections.clear()

    def take(self, address: str | None) -> Refusal | None:
        """Admit a connection at accept: its peer, then the caps. None: counted, go on."""
        if self.admit_peer is not None and not self.admit_peer(address):
            self.reject("forbidden_client")
            return self._foreign  # never counted: a refused peer can't fill the cap
        if not self.occupancy.take(address):
            self.reject("too_many_connections")
            full = self.occupancy.held >= self.occupancy.cap
            return self._too_many if full else self._per_address
        return None

    def connection(self, address: str | None, accepted: float) -> GuardedHandler:
        """The HTTP connection for a TLS peer admitted at `accepted` (loop time)."""
        handler = GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler.counted(address, accepted)
        return handler

    def classify(self, exc: BadHttpMessage) -> Refusal:
        """The refusal for a parser error."""
        if isinstance(exc, LineTooLong):
            if str(exc.args[1]) == str(self.line_limit):
                return self._line_too_long
            return self._field_too_large
        if "Too many headers" in str(exc.message):
            return self._too_many_headers
        return self._malformed
