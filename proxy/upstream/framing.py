"""The framing of a request to the upstream, declared by the writer and held to.

RFC 9112 §6.3: a body whose length doesn't match its framing leaves the recipient reading the
rest as the next request on the connection (request smuggling: with a pooled connection, a
request carrying another route's credential). So nobody above the writer is trusted to count:

- `RequestHead.of` drops any framing field it is handed (whatever its case, or spelt with `_`)
  and declares the framing itself, from what will be sent: `Content-Length: n`,
  `Transfer-Encoding: chunked`, or nothing.
- `Framer` holds the body to that declaration: a `Content-Length` body is exactly n bytes (one
  more, or one fewer at the end, raises `FramingBroken`, and the connection is closed); a
  chunked body is framed chunk by chunk and terminated once; `done` only after all of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.upstream.answer import FramingBroken

NO_BODY = -1  # a request without a body: no framing field at all
CHUNKED = -2  # a body of unknown length, sent with `Transfer-Encoding: chunked`
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_LAST_CHUNK = (b"0\r\n\r\n",)
_CRLF = b"\r\n"
_NOTHING: tuple[bytes, ...] = ()


class RequestHead:
    """A request line and header section with the framing the writer declared: `length`
    bytes of body (>= 0), NO_BODY or CHUNKED. Made only by `of`."""

    __slots__ = ("data", "length")

    def __init__(self, data: bytes, length: int) -> None:
        self.data = data
        self.length = length

    @classmethod
    def of(cls, request_line: str, fields: Iterable[tuple[str, str]], length: int) -> RequestHead:
        """SECURITY: any Content-Length or Transfer-Encoding among `fields` (whatever its case,
        or spelt with `_`) is dropped: the framing field is the writer's own. Values travel as
        the bytes they were parsed from (aiohttp decodes header bytes as UTF-8 with
        surrogateescape; RFC 9110 §5.5 allows obs-text), and a CR, LF or NUL in any of them
        refuses the request."""
        lines = [request_line]
        lines += [
            f"{name}: {value}"
            for name, value in fields
            if name[:1] not in "cCtT" or name.lower().replace("_", "-") not in _FRAMING
        ]
        if length >= 0:
            lines.append(f"Content-Length: {length}")
        elif length == CHUNKED:
            lines.append("Transfer-Encoding: chunked")
        lines.append("\r\n")
        text = "\r\n".join(lines)
        # One line per entry: a CR or LF anywhere else would start a line the writer never made.
        if text.count("\n") != len(lines) or text.count("\r") != len(lines) or "\0" in text:
            raise ValueError("a request header value holds CR, LF or NUL")
        return cls(text.encode("utf-8", "surrogateescape"), length)


class Framer:
    """One connection's request framing: what the head declared and what was sent of it."""

    __slots__ = ("declared", "done", "sent")

    def __init__(self) -> None:
        self.declared = NO_BODY
        self.sent = 0
        self.done = True  # the whole request went out (nothing is being written)

    def whole(self, head: RequestHead, body: bytes) -> None:
        """A request sent in one write: its body must be exactly what the head declared."""
        if head.length == CHUNKED or len(body) != max(head.length, 0):
            raise FramingBroken("a whole body must be sent under its own Content-Length")
        self.declared, self.sent, self.done = head.length, len(body), True

    def start(self, head: RequestHead) -> None:
        self.declared, self.sent, self.done = head.length, 0, False

    def frame(self, chunk: bytes) -> tuple[bytes, ...]:
        """What goes on the wire for `chunk` (not empty)."""
        size = len(chunk)
        if self.done:
            raise FramingBroken("body bytes after the request ended")
        self.sent += size
        if self.declared == CHUNKED:
            return (b"%x\r\n" % size, chunk, _CRLF)
        if self.sent > self.declared:
            raise FramingBroken(f"more body bytes than the declared {max(self.declared, 0)}")
        return (chunk,)

    def end(self) -> tuple[bytes, ...]:
        """What ends the body: the last chunk, once; nothing, when every declared byte went."""
        if self.done:
            return _NOTHING
        self.done = True
        if self.declared == CHUNKED:
            return _LAST_CHUNK
        if self.sent != max(self.declared, 0):
            raise FramingBroken(f"{self.sent} body bytes of the declared {self.declared}")
        return _NOTHING
