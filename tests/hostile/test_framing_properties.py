"""Property-based framing tests, judged by h11 (an HTTP/1.1 implementation independent of the
llhttp parser that aiohttp and httptools share).

Requests: hypothesis generates client requests (methods, header sets with and without
`Content-Encoding`, fixed and chunked bodies of many sizes, gzip bodies, pipelined requests,
bytes >= 0x80 in header values) and sends them through the proxy (a real process) to an h11
upstream. For every client request the upstream parses exactly one request, with the client's
body bytes and a declared length equal to them, and nothing left over.

Answers: a scripted upstream sends generated responses (fixed, chunked, with trailers, 1xx,
HEAD, 204/304, bytes >= 0x80 in headers, close-delimited, truncated); an h11 client reads them
through the proxy. What it reads is a well-framed message with the upstream's bytes, or the
proxy's error envelope, or a cut connection; never two messages' bytes merged: a sentinel
request on the same client connection afterwards gets its own answer.

Reliable on a 2-core machine: `deadline=None`, a fixed number of examples, derandomized (the
same examples every run; `HYPOTHESIS_SEED` or `--hypothesis-seed` explores others).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.testing import FakeTLS, make_token
from tests.hostile.conftest import LEDGER, served
from tests.support.h11_upstream import Assembler, ClientView, H11Upstream, Received, expect
from tests.support.loop import LoopThread

EXAMPLES = int(os.environ.get("AMPERITY_FRAMING_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SENTINEL = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Sentinel: 1\r\n\r\nsentinel"


class Judge:
    """The h11 upstream on a loop of its own (the tests use blocking sockets)."""

    def __init__(self, tls: FakeTLS) -> None:
        self.script: bytes = SENTINEL
        self.hang_up = False
        self.upstream = H11Upstream(self._respond, self._hang_up)
        self.thread = LoopThread()
        self.port = self.thread.call(self.upstream.start(tls.server))

    def _respond(self, got: Received) -> bytes:
        if got.target.endswith(b"/sentinel"):
            return SENTINEL
        return self.script

    def _hang_up(self, got: Received) -> bool:
        return self.hang_up and not got.target.endswith(b"/sentinel")

    def mark(self) -> int:
        return len(self.upstream.received)

    def close(self) -> None:
        self.thread.call(self.upstream.close())
        self.thread.stop()


@dataclass
class Proxied:
    port: int
    judge: Judge


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, tls: FakeTLS) -> Iterator[Proxied]:
    judge = Judge(tls)
    workdir = tmp_path_factory.mktemp("framing")
    (workdir / "ca.pem").write_bytes(tls.ca_pem)
    base = f"https://localhost:{judge.port}/api"
    route = {"tenant": "acme", "base_url": base, "token": {"env": "FRAMING_TOKEN"}}
    config = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "defaults": {"ca_file": str(workdir / "ca.pem")},
        "routes": [{"prefix": "/a", **route}, {"prefix": "/b", "name": "b", **route}],
    }
    env = {"FRAMING_TOKEN": make_token("acme", ttl=30 * 86400)}
    try:
        with served(workdir, config, env) as (_, _, record):
            yield Proxied(int(record["listen"][0].rsplit(":", 1)[1]), judge)
    finally:
        judge.close()


# --- the client side: a blocking socket read by an h11 client -------------------------------


class Client:
    """One client connection to the proxy; responses read with h11."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect(self, method: bytes) -> None:
        expect(self.conn, method)

    def response(self) -> ClientView:
        """The next response, read by h11 (see `Assembler`)."""
        assembler = Assembler(self.conn)
        while (view := assembler.step()) is None:
            self.conn.receive_data(self.sock.recv(65536))
        return view

    def sentinel(self) -> None:
        """The next ordinary request on this connection gets its own answer, whole."""
        self.expect(b"GET")
        self.send(b"GET /b/sentinel HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        view = self.response()
        assert (view.status, view.body) == (200, b"sentinel")

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def close(self) -> None:
        self.sock.close()


# --- requests ------------------------------------------------------------------------------

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
names = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(lambda n: "X-" + n)
# Header values: visible ASCII, spaces and tabs inside, and obs-text (bytes >= 0x80).
value_bytes = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip(b" \t")
)
ascii_values = value_bytes.map(lambda b: bytes(c for c in b if c < 128).strip(b" \t"))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes
    chunks: tuple[int, ...] | None  # chunk sizes (chunked), or None (Content-Length)
    gzip: bool

    def wire(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        lines += [name.encode() + b": " + value for name, value in self.headers]
        if self.gzip:
            lines.append(b"Content-Encoding: gzip")
        if self.chunks is None:
            if self.body or self.method in ("POST", "PUT", "PATCH"):
                lines.append(b"Content-Length: %d" % len(self.body))
            return b"\r\n".join(lines) + b"\r\n\r\n" + self.body
        lines.append(b"Transfer-Encoding: chunked")
        out = [b"\r\n".join(lines) + b"\r\n\r\n"]
        at = 0
        for size in self.chunks:
            piece = self.body[at : at + size]
            at += size
            if piece:
                out.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        out.append(b"0\r\n\r\n")
        return b"".join(out)


def _bodies(draw: st.DrawFn, gzipped: bool) -> bytes:
    if gzipped:  # often a small body that inflates to far more: the smuggling shape
        inner = draw(
            st.one_of(
                st.binary(max_size=300),
                st.integers(1, 200_000).map(lambda n: b"a" * n + b"GET /api/smuggled HTTP/1.1\r\n"),
            )
        )
        return gzip.compress(inner, mtime=0)
    return draw(
        st.one_of(st.just(b""), st.binary(max_size=2000), st.integers(1, 300_000).map(os.urandom))
    )


@st.composite
def requests(draw: st.DrawFn, obs_text: bool) -> Request:
    """A client request; `obs_text`: header values may hold bytes >= 0x80 (else ASCII)."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
    segment = draw(st.text("abcdefghij0123456789", min_size=1, max_size=8))
    gzipped = method != "GET" and draw(st.booleans())
    body = b"" if method == "GET" else _bodies(draw, gzipped)
    chunked = bool(body) and draw(st.booleans())
    chunks = None
    if chunked:
        chunks = tuple(draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=6)))
        chunks += (len(body),)  # whatever is left, in one last chunk
    values = value_bytes if obs_text else ascii_values
    headers = tuple(draw(st.lists(st.tuples(names, values), max_size=5)))
    prefix = draw(st.sampled_from(["/a", "/b"]))
    return Request(method, f"{prefix}/x/{segment}", headers, body, chunks, gzipped)


def _check_forwarded(sent: list[Request], got: list[Received]) -> None:
    assert len(got) == len(sent), [(r.method, r.target[:60]) for r in got]
    for request, received in zip(sent, got, strict=True):
        assert received.method == request.method.encode()
        assert received.target == b"/api" + request.path[2:].encode()
        assert received.body == request.body
        lengths = received.all(b"content-length")
        if request.chunks is None and (request.body or request.method in ("POST", "PUT", "PATCH")):
            assert lengths == [b"%d" % len(request.body)]
        for name, value in request.headers:
            assert (name.lower().encode(), value) in [(k.lower(), v) for k, v in received.headers]
        if request.gzip:
            assert received.all(b"content-encoding") == [b"gzip"]


def _through(proxied: Proxied, batch: list[Request]) -> None:
    """Send `batch` pipelined on one client connection, then a sentinel; check what the
    upstream parsed."""
    judge = proxied.judge
    judge.script, judge.hang_up = SENTINEL, False
    before = judge.mark()
    client = Client(proxied.port)
    try:
        client.send(b"".join(r.wire() for r in batch))
        for request in batch:
            client.expect(request.method.encode())
            view = client.response()
            assert view.status == 200, view
        client.sentinel()  # the next ordinary request on the same connection arrives as itself
    finally:
        client.close()
    LEDGER.tried("framing (request)", len(batch) + 1)
    got = judge.upstream.received[before:]
    assert got[-1].target == b"/api/sentinel", [(r.method, r.target[:60]) for r in got]
    _check_forwarded(batch, got[:-1])
    assert not judge.upstream.errors and not judge.upstream.leftover


@SETTINGS
@given(st.lists(requests(obs_text=False), min_size=1, max_size=3))
def test_each_client_request_is_one_upstream_request_with_the_clients_bytes(
    proxied: Proxied, batch: list[Request]
) -> None:
    _through(proxied, batch)


@SETTINGS
@given(st.lists(requests(obs_text=True), min_size=1, max_size=2))
def test_header_bytes_above_0x7f_reach_the_upstream_as_sent(
    proxied: Proxied, batch: list[Request]
) -> None:
    LEDGER.tried("header bytes", len(batch))
    _through(proxied, batch)


# --- answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    framing: str  # length | chunked | close | truncated
    interim: bool
    head_request: bool
    trailers: bool

    @property
    def bodiless(self) -> bool:
        return self.head_request or self.status in (204, 304)

    def wire(self) -> bytes:
        out = [b"HTTP/1.1 100 Continue\r\n\r\n"] if self.interim else []
        lines = [b"HTTP/1.1 %d Scripted" % self.status]
        lines += [name + b": " + value for name, value in self.headers]
        body = b"" if self.status in (204, 304) else self.body
        if self.framing == "chunked" and self.status not in (204, 304):
            lines.append(b"Transfer-Encoding: chunked")
            if self.trailers:
                lines.append(b"Trailer: X-Late")
        elif self.framing == "close":
            lines.append(b"Connection: close")
        elif self.status not in (204, 304) or self.head_request:
            declared = len(self.body) + (5 if self.framing == "truncated" else 0)
            lines.append(b"Content-Length: %d" % declared)
        out.append(b"\r\n".join(lines) + b"\r\n\r\n")
        if self.head_request:
            return b"".join(out)
        if self.framing == "chunked" and self.status not in (204, 304):
            for at in range(0, len(body), 1000):
                part = body[at : at + 1000]
                out.append(b"%x\r\n%b\r\n" % (len(part), part))
            late = b"X-Late: 1\r\nSet-Cookie: from-trailer=1\r\n" if self.trailers else b""
            out.append(b"0\r\n" + late + b"\r\n")
        else:
            out.append(body)
        return b"".join(out)


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 401, 403, 404, 429, 500, 503]))
    headers = tuple(
        (n.encode(), v) for n, v in draw(st.lists(st.tuples(names, value_bytes), max_size=4))
    )
    body = draw(st.one_of(st.binary(max_size=3000), st.integers(1, 200_000).map(os.urandom)))
    framing = draw(st.sampled_from(["length", "chunked", "close", "truncated"]))
    return Script(
        status,
        headers,
        body,
        framing,
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.booleans()),
    )


def _is_envelope(view: ClientView) -> bool:
    if view.status not in (502, 504):
        return False
    return bool(json.loads(view.body)["status"] == view.status)


@SETTINGS
@given(scripts())
def test_each_answer_reaches_the_client_as_one_well_framed_message(
    proxied: Proxied, script: Script
) -> None:
    judge = proxied.judge
    judge.script = script.wire()
    judge.hang_up = script.framing in ("close", "truncated")
    method = b"HEAD" if script.head_request else b"GET"
    client = Client(proxied.port)
    try:
        client.expect(method)
        client.send(method + b" /a/answer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            view = client.response()
        except (h11.RemoteProtocolError, ConnectionError):
            # A cut connection: only for an answer the upstream cut short itself.
            assert script.framing == "truncated" and not script.bodiless
            return
        LEDGER.tried("framing (response)")
        if script.framing == "truncated" and not script.bodiless and _is_envelope(view):
            return  # cut before any byte went to the client: the proxy's 502
        assert view.status == script.status
        assert view.body == (b"" if script.bodiless else script.body)
        assert view.trailers == []
        names_sent = {k.lower() for k, _ in view.headers}
        assert b"x-late" not in names_sent and b"set-cookie" not in names_sent
        for name, value in script.headers:
            assert (name.lower(), value) in [(k.lower(), v) for k, v in view.headers]
        if client.reusable:  # never two messages merged: the next answer is its own
            client.sentinel()
    finally:
        client.close()
