"""Reload churn under load: a reload that leaves a route's TLS settings alone keeps its upstream
connections (and their SSL context): no new pool, no lingering connections, no memory that
grows with every reload."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.config import parse_config
from proxy.testing import FakeTLS
from tests.conftest import ProxyFactory, Upstream, acme_route
from tests.hostile.conftest import LEDGER


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_reloads_reuse_unchanged_upstream_connections(
    make_proxy: ProxyFactory, upstream: Upstream, tls: FakeTLS, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls.ca_pem)

    def route(version: int) -> dict[str, object]:
        return acme_route(upstream, ca_file=str(ca), api_version=f"2024-04-{version:02d}")

    # config_tls: the contexts come from the config (system CAs + ca_file), as in production.
    proxy = await make_proxy([route(1)], config_tls=True)
    assert (await proxy.client.get("/acme/warm")).status == 200
    fds = _fds()
    for i in range(30):
        new = parse_config({"routes": [route(i % 28 + 1)]}, env={})
        assert await proxy.app.reload(new) == []
        assert (await proxy.client.get(f"/acme/x{i}")).status == 200
    LEDGER.tried("reload churn")
    peers = {r.peer for r in upstream.requests}
    # One keep-alive connection carried them all (the bug: a new pool per reload, 31 peers).
    assert len(peers) <= 2, len(peers)
    assert _fds() <= fds + 2
    # Every request went out with its own generation's settings.
    assert upstream.requests[-1].header("api-version") == f"2024-04-{29 % 28 + 1:02d}"
