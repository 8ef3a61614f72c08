"""The fake's TLS and name resolution: a throwaway CA (trustme) with certificates for the
hosts a test names, and a resolver that sends realistic Amperity host names to loopback."""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult


class FakeResolver(AbstractResolver):
    """Resolves the given host names to loopback and refuses every other name."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = {h.lower(): ip for h, ip in hosts.items()}
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        ip = self.hosts.get(host.lower().rstrip("."))
        if ip is None:
            raise OSError(socket.EAI_NONAME, f"fake resolver: unknown host {host}")
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [
            ResolveResult(
                hostname=host, host=ip, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST
            )
        ]

    async def close(self) -> None:
        return None


@dataclass
class FakeTLS:
    """A throwaway CA (trustme) and the contexts that go with it."""

    ca_pem: bytes
    server: ssl.SSLContext
    client: ssl.SSLContext
    ca: Any = None  # the trustme.CA, to issue more certificates

    def issue_pem(
        self,
        *hostnames: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> bytes:
        """Private key and certificate chain (PEM) from this CA, e.g. an expired one."""
        cert = self.ca.issue_cert(*hostnames, not_before=not_before, not_after=not_after)
        pem: bytes = cert.private_key_and_cert_chain_pem.bytes()
        return pem


def make_tls(*hostnames: str) -> FakeTLS:
    """Build a CA and a server certificate for `hostnames` (requires the dev extra trustme)."""
    import trustme  # dev dependency: only the fake needs it

    ca = trustme.CA()
    cert = ca.issue_cert(*hostnames)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return FakeTLS(ca.cert_pem.bytes(), server, client, ca)
