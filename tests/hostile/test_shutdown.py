"""Shutdown is bounded: SIGTERM -> exit within `shutdown_timeout` + 1 s whatever the clients do
(aiohttp alone waits the timeout, cancels, then can wait it again, past Kubernetes' grace
period); drain-time log lines reach stderr at once; the access-log line of a request cut by
the drain says what the client got."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from proxy.testing import FakeTLS, make_token
from tests.conftest import Upstream, tls_route
from tests.hostile.conftest import LEDGER
from tests.support.process import spawn_proxy

SHUTDOWN_TIMEOUT = 5


async def test_sigterm_exits_within_shutdown_timeout_while_a_client_stops_reading(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    config: dict[str, Any] = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "shutdown_timeout": SHUTDOWN_TIMEOUT,
        "routes": [tls_route(upstream.port, tmp_path / "ca.pem")],
    }
    process = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    proc = process.proc
    port = int(process.proxy.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # A 512 MiB download that the client stops reading after its first bytes: the proxy's
        # writes block on back-pressure, so its handler never finishes by itself.
        writer.write(b"GET /acme/_fake/bytes/536870912 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200 ")
        await asyncio.wait_for(reader.readexactly(65536), 30)

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Drain-time log lines are written at once, not at exit (a SIGKILL would lose them).
        draining = await asyncio.wait_for(
            process.log_until(lambda r: "shutting down" in str(r.get("message"))), 2
        )
        assert draining["level"] == "info"
        access = await asyncio.wait_for(
            process.log_until(lambda r: r.get("logger") == "amperity_proxy.access"),
            SHUTDOWN_TIMEOUT + 5,
        )
        code = await asyncio.wait_for(proc.wait(), 60)
        took = time.monotonic() - signalled
    finally:
        writer.close()
        await process.stop()
    LEDGER.tried("shutdown")
    assert code == 0
    # Generous against timing noise, far from the bug (about 2 x shutdown_timeout).
    assert took < SHUTDOWN_TIMEOUT + 2.5, f"exited {took:.1f} s after SIGTERM"
    # The client got a 200 and part of the body: the log says so, and why it was cut.
    assert access["status"] == 200, json.dumps(access)
    assert access["error"] == "shutdown"
    assert access["bytes_out"] >= 65536
