"""Ports on loopback."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket stays bound but never listens, so Linux answers a connect with
    RST, and no other process (or test) can take the port in the meantime:
    a released port can be reused by anything between the release and the
    connect, and was (a TLS handshake with a stranger instead of a refusal).
    The same port on ::1 is held too where IPv6 exists, for ``localhost``.
    """
    with contextlib.ExitStack() as held:
        v4 = held.enter_context(socket.socket())
        v4.bind(("127.0.0.1", 0))
        port = int(v4.getsockname()[1])
        with contextlib.suppress(OSError):
            v6 = held.enter_context(socket.socket(socket.AF_INET6))
            v6.bind(("::1", port))
        yield port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing accepts connections on host:port."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0
