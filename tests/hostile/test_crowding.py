"""Nobody crowds anybody out of the listener: connections are counted from accept, TLS
handshakes included and bounded by `header_timeout`; a peer outside `allow_clients` is closed
at accept and never counted; one remote address can't take every slot. Real sockets, real
TLS, the proxy as a process; each case failed on the code before the fix."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp

from proxy.config.limits import Limits
from proxy.listener.accept import Occupancy
from proxy.testing import FakeTLS, make_token
from tests.conftest import ProcessUpstream
from tests.hostile.conftest import LEDGER
from tests.support.process import spawn_proxy


def _leaf(tls: FakeTLS, directory: Path) -> dict[str, str]:
    leaf = tls.ca.issue_cert("localhost")
    (directory / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    (directory / "tls.crt").write_bytes(leaf.cert_chain_pems[0].bytes())
    return {"cert_file": str(directory / "tls.crt"), "key_file": str(directory / "tls.key")}


async def _silent(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`count` TCP connections that send nothing (not even a ClientHello)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        held.append(sock)
    return held


async def _closed_by_the_proxy(sock: socket.socket, within: float) -> bool:
    """The proxy ends the connection within `within` seconds (EOF or a reset)."""
    loop = asyncio.get_running_loop()
    try:
        while await asyncio.wait_for(loop.sock_recv(sock, 65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_silent_tls_connections_are_counted_and_closed_within_header_timeout(
    tmp_path: Path, tls: FakeTLS, process_upstream: ProcessUpstream
) -> None:
    config: dict[str, Any] = {
        "listen": {"port": 0, "tls": _leaf(tls, tmp_path)},
        "limits": {"max_connections": 20, "header_timeout": 1},
        "admin": {"port": 0},
        "routes": [process_upstream.route()],
    }
    process = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    port = int(process.proxy.rsplit(":", 1)[1])
    held = await _silent(port, 30)
    try:
        # Past the cap (20), a connection is closed at once: the handshakes count.
        assert await _closed_by_the_proxy(held[-1], 2)
        # The others never finish a handshake: all gone within header_timeout (asyncio
        # alone waits 60 s), so a real client gets in.
        closed = await asyncio.gather(*(_closed_by_the_proxy(s, 5) for s in held[:20]))
        assert all(closed)
        url = f"https://localhost:{port}/acme/segments"
        async with aiohttp.ClientSession() as session, session.get(url, ssl=tls.client) as answer:
            assert answer.status == 200
    finally:
        for sock in held:
            sock.close()
        await process.stop()
    LEDGER.tried("TLS handshakes", len(held))


async def test_refused_peers_are_closed_at_accept_and_never_fill_the_cap(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0, "allow_clients": ["127.0.0.2/32"]},
        "limits": {"max_connections": 20, "header_timeout": 30},
        "admin": {"port": 0},
        "routes": [process_upstream.route()],
    }
    process = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    port = int(process.proxy.rsplit(":", 1)[1])
    held = await _silent(port, 30, source="127.0.0.1")  # refused: not in allow_clients
    try:
        said = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(held[0], 65536), 5)
        assert b" 403 " in said.split(b"\r\n", 1)[0] and b"listen.allow_clients" in said
        assert all(await asyncio.gather(*(_closed_by_the_proxy(s, 2) for s in held)))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"GET /acme/segments HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        for sock in held:
            sock.close()
        await process.stop()
    LEDGER.tried("refused peers", len(held))


def test_one_remote_address_cannot_take_every_slot() -> None:
    """The per-address cap (default max_connections // 4) for non-loopback peers; loopback
    and Unix-socket peers (a sidecar's tools) are bounded by the cap only."""
    limits = Limits(max_connections=8)
    occupancy = Occupancy(limits.max_connections, limits.per_address)
    assert limits.per_address == 2
    assert [occupancy.take("192.0.2.7") for _ in range(3)] == [True, True, False]
    assert occupancy.take("192.0.2.8") and occupancy.take("2001:db8::1")
    assert all(occupancy.take("127.0.0.1") for _ in range(3))  # loopback: the cap only
    assert occupancy.take(None)  # a Unix socket: the cap only
    assert not occupancy.take("127.0.0.1")  # the cap (8) is reached
    occupancy.give_back("192.0.2.7")
    assert occupancy.take("192.0.2.7") and not occupancy.take("192.0.2.7")
    LEDGER.tried("refused peers")
