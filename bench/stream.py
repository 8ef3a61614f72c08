"""`make bench`: streaming throughput, peak memory and start-up time of the real proxy process.

Starts the fake Amperity upstream (TLS, in this process), runs `python -m proxy run` as a child
process in front of it, and measures:
- time from process start to /readyz 200;
- RSS at idle;
- 1 GiB down and 1 GiB up through the proxy: throughput and the proxy's peak RSS growth;
- small GET requests at concurrency 1 and 32 (this Python client is the bottleneck here:
  treat these as a floor, not the proxy's ceiling).

Everything stays on 127.0.0.1. Results go to stdout and bench/RESULTS.md. Sizes can be
reduced for a quick run: `BENCH_GIB=0.25 make bench`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml

from proxy import __version__
from proxy.fake_amperity import FakeAmperity, make_tls, make_token, pattern, start_fake

HERE = Path(__file__).resolve().parent
GIB = 1024**3
MIB = 1024**2


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


async def _upload_body(size: int) -> AsyncIterator[bytes]:
    block = next(pattern(MIB))
    sent = 0
    while sent < size:
        yield block
        sent += len(block)


async def wait_ready(session: aiohttp.ClientSession, url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.005)
    raise RuntimeError("the proxy never became ready")


async def small_requests(
    session: aiohttp.ClientSession, url: str, total: int, concurrency: int
) -> float:
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def bench() -> list[tuple[str, str]]:
    size = int(float(os.environ.get("BENCH_GIB", "1")) * GIB)
    tls = make_tls("localhost")
    fake = FakeAmperity()
    fake_runner, fake_port = await start_fake(fake, tls.server)
    results: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ca.pem").write_bytes(tls.ca_pem)
        proxy_port, admin_port = 18080, 19090
        config = {
            "listen": {"port": proxy_port},
            "admin": {"port": admin_port},
            "log": {"format": "json", "level": "INFO"},
            "routes": [
                {
                    "prefix": "/acme",
                    "tenant": "acme",
                    "base_url": f"https://localhost:{fake_port}/api",
                    "ca_file": str(Path(tmp) / "ca.pem"),
                    "token": {"env": "BENCH_TOKEN"},
                }
            ],
        }
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "BENCH_TOKEN": make_token("acme")}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--config",
            str(Path(tmp) / "config.yaml"),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{proxy_port}/acme"
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await wait_ready(session, f"http://127.0.0.1:{admin_port}/readyz", started + 30)
                results.append(
                    ("start to /readyz 200", f"{(time.monotonic() - started) * 1000:.0f} ms")
                )
                idle = rss_kib(proc.pid, "VmRSS")
                results.append(("RSS at idle", f"{idle / 1024:.1f} MiB"))

                for concurrency in (1, 32):
                    rate = await small_requests(
                        session, f"{base}/_fake/status/200", 3000, concurrency
                    )
                    results.append(
                        (
                            f"small GETs, concurrency {concurrency} (Python client)",
                            f"{rate:.0f} req/s",
                        )
                    )

                reset_peak(proc.pid)
                before = rss_kib(proc.pid, "VmRSS")
                t0 = time.perf_counter()
                received = 0
                async with session.get(f"{base}/_fake/bytes/{size}") as response:
                    async for chunk in response.content.iter_any():
                        received += len(chunk)
                elapsed = time.perf_counter() - t0
                assert received == size
                peak = rss_kib(proc.pid, "VmHWM")
                results.append(
                    (
                        f"download {size / GIB:g} GiB",
                        f"{size / elapsed / 1e9:.2f} GB/s, peak RSS growth {(peak - before) / 1024:.1f} MiB",
                    )
                )

                reset_peak(proc.pid)
                before = rss_kib(proc.pid, "VmRSS")
                t0 = time.perf_counter()
                async with session.put(f"{base}/upload", data=_upload_body(size)) as response:
                    assert response.status == 200
                elapsed = time.perf_counter() - t0
                assert fake.requests[-1].body_length == size
                peak = rss_kib(proc.pid, "VmHWM")
                results.append(
                    (
                        f"upload {size / GIB:g} GiB",
                        f"{size / elapsed / 1e9:.2f} GB/s, peak RSS growth {(peak - before) / 1024:.1f} MiB",
                    )
                )
        finally:
            proc.terminate()
            await proc.wait()
            await fake_runner.cleanup()
    return results


def main() -> None:
    results = asyncio.run(bench())
    import aiohttp as _aiohttp

    header = [
        "# Benchmark results (`make bench`)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- Python {platform.python_version()}, aiohttp {_aiohttp.__version__}, amperity-proxy {__version__}",
        "- upstream: the bundled fake over TLS on 127.0.0.1, in the benchmark's own process",
        "",
        "| measure | result |",
        "|---|---|",
    ]
    table = header + [f"| {name} | {value} |" for name, value in results]
    text = "\n".join(table) + "\n"
    print(text)
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
