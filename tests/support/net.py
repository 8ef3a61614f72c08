"""Ports on loopback."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing accepts connections on host:port."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0
