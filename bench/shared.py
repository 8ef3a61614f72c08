"""The added latency of a shared rate-limit decision: `Pacer.pace` for a route on
`shared.redis` against a redis-server on loopback, beside the same call for a local bucket.

Both buckets are sized so that no request waits: what is measured is the decision itself (for
the shared one, one Lua call on Redis). Used by `bench/run.py`; runs alone too:

    python bench/shared.py
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from prometheus_client import CollectorRegistry

from proxy.config import parse_config
from proxy.observe.shared import SharedMetrics
from proxy.request.pacing import Pacer
from proxy.request.shared import SharedBuckets

DECISIONS = 3000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _timings(pacer: Pacer, route: object) -> list[float]:
    out = []
    for i in range(DECISIONS):
        started = time.perf_counter()
        await pacer.pace(route, "GET", f"/segments/x{i % 20}")  # type: ignore[arg-type]
        out.append(time.perf_counter() - started)
    return out[DECISIONS // 10 :]  # the first tenth warms caches and the connection


async def _measure(port: int) -> tuple[list[float], list[float]]:
    limit = {"requests_per_second": 1_000_000, "burst": 1_000_000}
    raw = {
        "shared": {"redis": {"url": f"redis://127.0.0.1:{port}/0", "timeout": 1}},
        "routes": [
            {"prefix": "/s", "tenant": "s", "token": {"env": "T"}, "rate_limit": limit},
            {
                "prefix": "/l",
                "tenant": "l",
                "token": {"env": "T"},
                "rate_limit": {**limit, "store": "local"},
            },
        ],
    }
    config = parse_config(raw, env={})
    assert config.shared is not None
    shared = SharedBuckets(config.shared, None, SharedMetrics(CollectorRegistry()))
    pacer = Pacer(shared=shared)
    try:
        return await _timings(pacer, config.routes[0]), await _timings(pacer, config.routes[1])
    finally:
        await shared.close()


def measure() -> tuple[str, str, str] | None:
    """The row for bench/RESULTS.md, or None without a redis-server."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        return None
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            shared, local = asyncio.run(_measure(port))
        finally:
            server.kill()
            server.wait()

    def q(values: list[float], p: int) -> float:
        return float(statistics.quantiles(values, n=100)[p - 1]) * 1000

    added50, added99 = q(shared, 50) - q(local, 50), q(shared, 99) - q(local, 99)
    return (
        "a rate-limit decision, shared on loopback Redis vs local: p50 / p99",
        f"{q(shared, 50):.3f} / {q(shared, 99):.3f} ms vs {q(local, 50):.3f} / "
        f"{q(local, 99):.3f} ms (added {added50:.3f} / {added99:.3f} ms)",
        "target: under 0.3 ms added at p50",
    )


if __name__ == "__main__":
    print(measure())
