"""Request smuggling and malformed framing: every case is refused with 400 and a closed
connection, and the upstream receives exactly the requests the proxy accepted (none here)."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import Checked

SMUGGLED = b"GET /acme-sb/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

CASES = {
    "CL.TE": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "TE.CL": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "duplicate CL": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nContent-Length: 52\r\n\r\n"
    + SMUGGLED,
    "comma-joined CL": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0, 52\r\n\r\n"
    + SMUGGLED,
    "CL with sign": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: +0\r\n\r\n"
    + SMUGGLED,
    "xchunked": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "TE chunked, identity": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "space before colon": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "vertical tab": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "repeated TE": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "odd chunk size": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n"
    + SMUGGLED,
    "negative chunk size": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n"
    + SMUGGLED,
    "chunk size with junk": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n1 x\r\na\r\n0\r\n\r\n"
    + SMUGGLED,
    "LF in chunk extension": b"POST /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n"
    + SMUGGLED,
    "TE on HTTP/1.0": b"POST /acme/x HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "bare LF line ends": b"GET /acme/x HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 52\n\n"
    + SMUGGLED,
    "CR in header value": b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\rTransfer-Encoding: chunked\r\n\r\n"
    + SMUGGLED,
    "LF in header value": b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\nTransfer-Encoding: chunked\r\n\r\n"
    + SMUGGLED,
    "NUL in header value": b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\x00c\r\n\r\n",
    "NUL in header name": b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-\x00A: b\r\n\r\n",
    "space in header name": b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX A: b\r\n\r\n",
    "obsolete line folding": b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n",
    "CR in target": b"GET /acme/x\rGET HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "NUL in target": b"GET /acme/x\x00y HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "space in target": b"GET /acme/x y HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "bad version": b"GET /acme/x HTTP/1.2x\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.mark.parametrize("name", list(CASES))
def test_smuggling_attempt_is_refused_and_closed(hostile: Checked, name: str) -> None:
    exchange, forwarded = hostile(CASES[name])
    smuggled = [r for r in forwarded if "smuggled" in r.raw_path]
    hostile.ledger.desyncs += len(smuggled) + max(0, len(exchange.statuses) - 1)
    assert exchange.status == 400, exchange.raw[:200]
    assert exchange.statuses == [400]  # one answer: nothing behind it was read as a request
    assert exchange.closed
    assert forwarded == []


@pytest.mark.parametrize("method", ["get", "FOO", "PROPFIND", "Get"])
def test_unknown_methods_are_refused(hostile: Checked, method: str) -> None:
    data = f"{method} /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    exchange, forwarded = hostile(data)
    if method.upper() == "GET" and exchange.status == 200:
        # The pure-Python parser upper-cases the method: the request *is* a GET to it, and it
        # went upstream as exactly that (and in place, which `hostile` checked).
        assert [r.method for r in forwarded] == ["GET"]
        return
    assert exchange.status in (400, 405)  # llhttp refuses unknown methods itself
    assert forwarded == []
