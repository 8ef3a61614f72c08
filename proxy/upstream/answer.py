"""What one upstream connection hands back: an answer's status line and headers, and the two
ways an answer can break (the upstream hung up; it broke HTTP's framing or syntax)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy


class UpstreamClosed(ConnectionResetError):
    """The upstream closed the connection before a complete answer."""


class MalformedAnswer(Exception):
    """The upstream's answer broke HTTP's framing or syntax (httptools refused it)."""


class Answer:
    """A response in progress: status and headers, then the body as it arrives."""

    def __init__(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
