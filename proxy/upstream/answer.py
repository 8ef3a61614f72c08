"""What one upstream connection hands back: an answer's status line and headers, the two ways
an answer can break (the upstream hung up; it broke HTTP's framing or syntax), and the one way
a request can (its body broke the framing the writer declared)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy


class UpstreamClosed(ConnectionResetError):
    """The upstream closed the connection before a complete answer."""


class MalformedAnswer(Exception):
    """The upstream's answer broke HTTP's framing or syntax (httptools refused it)."""


class FramingBroken(Exception):
    """A request body did not match the framing the writer declared for it (more or fewer
    bytes than its Content-Length, or a body where none was declared). The connection is
    closed already: nothing after the declared end can ever be read as a request."""


class Answer:
    """A response in progress: status and headers, then the body as it arrives."""

    def __init__(
        self, status: int, reason: str, headers: CIMultiDict[str], obs_text: bool = False
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
        self.obs_text = obs_text  # a header byte >= 0x80: relayed as bytes, not re-encoded
