"""`make soak`: the proxy under load and churn for a few minutes; figures, not assertions.

Four phases against the bundled fake Amperity (TLS, in this process) and the proxy as a real
process with the shipped defaults, everything on loopback:

1. slow readers: 200 clients on 127.0.0.1 download 10 MB at about 10 KB/s for 20 s while a
   normal client on 127.0.0.2 makes small requests; its latency, the 503 `upstream_busy`
   answers, and the proxy's RSS during and after;
2. reload churn: 100 SIGHUP reloads 0.8 s apart (each changes a route's api_version) under
   ~250 requests/s; failed requests, RSS and file descriptors before and after;
3. token rotation: a Kubernetes-style `..data` swap every 2 s, the old token revoked 1 s after
   each swap, under ~250 requests/s (GETs, replayable, and POSTs, not); the 401 share of each;
4. the TLS listener: RSS per half-open and per idle completed connection (1,000 each), then
   2,000 silent connections against `max_connections: 200` while a normal client makes
   requests: what the proxy holds, its RSS, and the client's latency.

Results go to stdout and to the "Soak" section of bench/RESULTS.md (via bench/SOAK.md).

    python bench/soak.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.testing import (
    FakeAmperity,
    make_tls,
    make_token,
    start_fake,
    swap_secret_volume,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_PYTHON = str(Path(os.environ.get("BENCH_PYTHON", sys.executable)).absolute())
RATE = 250  # requests per second of background load


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Proxy:
    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        self.work = work
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drainer: asyncio.Future[None] | None = None

    def write(self, config: dict[str, Any]) -> None:
        (self.work / "proxy.yaml").write_text(yaml.safe_dump(config))

    async def start(self) -> None:
        self.write(self.config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMPERITY_")}
        self.proc = await asyncio.create_subprocess_exec(
            SERVER_PYTHON,
            "-m",
            "proxy",
            "run",
            "--config",
            str(self.work / "proxy.yaml"),
            "--log-format",
            "json",
            env=env,
            cwd=self.work,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), 30)
            assert line, "the proxy exited"
            record = json.loads(line)
            if "listen" in record:
                self.port = int(record["listen"][0].rsplit(":", 1)[1])
                break
        self._drainer = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 30)


async def load(
    port: int, seconds: float, statuses: Counter[str], post_share: float = 0.0
) -> list[float]:
    """~RATE requests/s for `seconds`; counts `GET 200`, `POST 401`, ...; returns latencies."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        pending: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            method = "POST" if post_share and i % int(1 / post_share) == 0 else "GET"
            t0 = loop.time()
            try:
                async with session.request(
                    method, f"http://127.0.0.1:{port}/acme/segments/{i % 50}", data=b"{}"
                ) as response:
                    await response.read()
                    statuses[f"{method} {response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[f"{method} {type(exc).__name__}"] += 1
            latencies.append(loop.time() - t0)

        while loop.time() - start < seconds:
            due = int((loop.time() - start) * RATE)
            while sent < due:
                task = asyncio.create_task(one(sent))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
    return latencies


async def slow_reader(port: int, seconds: float, outcome: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /acme/_fake/bytes/10485760 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = head.split(b" ", 2)[1].decode()
        outcome[status] += 1
        if status != "200":
            return
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            if not await reader.read(1024):
                break
            await asyncio.sleep(0.1)  # about 10 KB/s
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        outcome["error"] += 1
    finally:
        writer.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def phase_slow_readers(work: Path, base: dict[str, Any]) -> list[str]:
    proxy = Proxy(work, base)
    await proxy.start()
    idle = rss_mib(proxy.pid)
    outcome: Counter[str] = Counter()
    readers = [asyncio.create_task(slow_reader(proxy.port, 20, outcome)) for _ in range(200)]
    await asyncio.sleep(2)
    latencies: list[float] = []
    failures = 0
    peak = 0.0
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        end = loop.time() + 15
        while loop.time() < end:
            t0 = loop.time()
            async with session.get(f"http://127.0.0.1:{proxy.port}/acme/segments") as response:
                await response.read()
                failures += response.status != 200
            latencies.append(loop.time() - t0)
            peak = max(peak, rss_mib(proxy.pid))
            await asyncio.sleep(0.1)
    await asyncio.gather(*readers)
    await asyncio.sleep(5)
    after = rss_mib(proxy.pid)
    await proxy.stop()
    return [
        f"| slow readers: 200 x 10 MB at ~10 KB/s from 127.0.0.1 | {outcome.get('200', 0)} "
        f"streamed, {outcome.get('503', 0)} answered 503 upstream_busy, "
        f"{outcome.get('error', 0)} errors |",
        f"| normal client (127.0.0.2) meanwhile: {len(latencies)} requests | p50 "
        f"{pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, {failures} failed |",
        f"| proxy RSS: idle / peak with the slow readers / 5 s after they end | {idle:.1f} / "
        f"{peak:.1f} / {after:.1f} MiB (manifest limit 160 MiB) |",
        f"| RSS per slow stream, (peak - idle) / streams (an upper bound: the refused requests "
        f"count too) | {(peak - idle) * 1024 / max(1, outcome.get('200', 0)):.0f} KiB |",
    ]


async def phase_reloads(work: Path, base: dict[str, Any]) -> list[str]:
    proxy = Proxy(work, base)
    await proxy.start()
    warm: Counter[str] = Counter()
    await load(proxy.port, 3, warm)
    rss_before, fds_before = rss_mib(proxy.pid), fds(proxy.pid)
    statuses: Counter[str] = Counter()
    traffic = asyncio.create_task(load(proxy.port, 83, statuses))
    for i in range(100):
        config = json.loads(json.dumps(base))
        config["routes"][0]["api_version"] = f"2024-04-{i % 28 + 1:02d}"
        proxy.write(config)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.8)
    await traffic
    await asyncio.sleep(5)
    rss_after, fds_after = rss_mib(proxy.pid), fds(proxy.pid)
    await proxy.stop()
    failed = sum(n for k, n in statuses.items() if not k.endswith(" 200"))
    return [
        f"| reload churn: 100 SIGHUP reloads 0.8 s apart under ~{RATE} req/s | "
        f"{sum(statuses.values())} requests, {failed} not 200 |",
        f"| RSS / fds before the churn and 5 s after it | {rss_before:.1f} -> {rss_after:.1f} MiB; "
        f"{fds_before} -> {fds_after} fds |",
    ]


async def phase_rotation(work: Path, base: dict[str, Any], fake: FakeAmperity) -> list[str]:
    volume = work / "secret"
    volume.mkdir()
    tokens = [make_token("acme", subject=f"gen-{n}") for n in range(40)]
    swap_secret_volume(volume, tokens[0], 0)
    config = json.loads(json.dumps(base))
    config["routes"][0]["token"] = {"file": str(volume / "token")}
    proxy = Proxy(work, config)
    await proxy.start()
    statuses: Counter[str] = Counter()
    traffic = asyncio.create_task(load(proxy.port, 62, statuses, post_share=0.1))
    for n in range(1, 31):
        await asyncio.sleep(1)
        swap_secret_volume(volume, tokens[n], n)
        await asyncio.sleep(1)
        fake.revoked.add(tokens[n - 1])  # the old key is deleted a second after the swap
    await traffic
    await proxy.stop()
    lines = [
        f"| token rotation: 30 `..data` swaps 2 s apart, old token revoked 1 s after each, ~{RATE} req/s | |"
    ]
    for method, kind in (("GET", "replayable"), ("POST", "not replayable")):
        total = sum(n for k, n in statuses.items() if k.startswith(method))
        unauthorized = statuses.get(f"{method} 401", 0)
        share = 100 * unauthorized / total if total else 0.0
        lines.append(
            f"| {method} ({kind}) | {total} requests, {unauthorized} got 401 ({share:.2f}%) |"
        )
    return lines


async def _silent_tls(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections to a TLS port that never send a ClientHello."""
    loop = asyncio.get_running_loop()
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


async def _idle_tls(port: int, count: int, context: ssl.SSLContext) -> list[asyncio.StreamWriter]:
    """`count` completed TLS connections that then send nothing."""
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        writers.append(writer)
    return writers


async def _settled_rss(pid: int) -> float:
    await asyncio.sleep(1.0)  # let the proxy take what it accepted
    return rss_mib(pid)


async def phase_tls(work: Path, base: dict[str, Any], tls: Any) -> list[str]:
    """Per-connection memory of the TLS listener (half-open and idle), then 2,000 silent
    connections against a small cap while a normal client makes requests."""
    leaf = tls.ca.issue_cert("localhost")
    (work / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    (work / "tls.crt").write_bytes(leaf.cert_chain_pems[0].bytes())
    listen = {
        "port": 0,
        "tls": {"cert_file": str(work / "tls.crt"), "key_file": str(work / "tls.key")},
    }
    client = ssl.create_default_context(cafile=str(work / "ca.pem"))
    rows = []
    config = {**base, "listen": listen, "limits": {"max_connections": 4096, "header_timeout": 20}}
    proxy = Proxy(work, config)
    await proxy.start()
    before = await _settled_rss(proxy.pid)
    silent = await _silent_tls(proxy.port, 1000)
    half_open = await _settled_rss(proxy.pid)
    for sock in silent:
        sock.close()
    await asyncio.sleep(1)
    start = rss_mib(proxy.pid)
    idle = await _idle_tls(proxy.port, 1000, client)
    completed = await _settled_rss(proxy.pid)
    for writer in idle:
        writer.close()
    await proxy.stop()
    rows.append(
        f"| TLS listener: 1,000 half-open connections (no ClientHello) / 1,000 idle completed "
        f"ones, RSS per connection | {(half_open - before) * 1024 / max(1, len(silent)):.0f} KiB / "
        f"{(completed - start) * 1024 / max(1, len(idle)):.0f} KiB (targets 32 / 64 KiB) |"
    )
    config = {**base, "listen": listen, "limits": {"max_connections": 200, "header_timeout": 2}}
    proxy = Proxy(work, config)
    await proxy.start()
    before = await _settled_rss(proxy.pid)
    silent = await _silent_tls(proxy.port, 2000)
    latencies: list[float] = []
    failures = peak = held = 0.0
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while loop.time() < end:
            t0 = loop.time()
            try:
                async with session.get(f"https://localhost:{proxy.port}/acme/x", ssl=client) as r:
                    await r.read()
                    failures += r.status != 200
            except aiohttp.ClientError:
                failures += 1
            latencies.append(loop.time() - t0)
            peak, held = max(peak, rss_mib(proxy.pid)), max(held, fds(proxy.pid))
            await asyncio.sleep(0.1)
    for sock in silent:
        sock.close()
    after = await _settled_rss(proxy.pid)
    await proxy.stop()
    rows += [
        f"| TLS listener, max_connections 200, header_timeout 2: 2,000 silent connections | "
        f"at most {held:.0f} file descriptors held; RSS {before:.1f} / {peak:.1f} / {after:.1f} "
        "MiB before / at peak / after |",
        f"| a normal TLS client meanwhile: {len(latencies)} requests | p50 "
        f"{pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, {failures:.0f} failed |",
    ]
    return rows


async def main() -> None:
    tls = make_tls("localhost")
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ca.pem").write_bytes(tls.ca_pem)
        os.environ["SOAK_TOKEN"] = make_token("acme", ttl=7200)
        base: dict[str, Any] = {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "log": {"format": "json", "level": "INFO"},  # as shipped: access lines included
            "routes": [
                {
                    "prefix": "/acme",
                    "tenant": "acme",
                    "base_url": f"https://localhost:{port}/api",
                    "ca_file": str(work / "ca.pem"),
                    "token": {"env": "SOAK_TOKEN"},
                }
            ],
        }
        started = time.monotonic()
        rows = ["| measure | result |", "|---|---|"]
        rows += await phase_slow_readers(work, base)
        rows += await phase_reloads(work, base)
        rows += await phase_rotation(work, base, fake)
        rows += await phase_tls(work, base, tls)
        took = time.monotonic() - started
    await runner.cleanup()
    text = (
        "\n## Soak (`make soak`)\n\n"
        f"Shipped defaults, the proxy as a process, the fake Amperity over TLS; {took:.0f} s in all "
        "on the machine above.\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    (HERE / "SOAK.md").write_text(text)
    results = HERE / "RESULTS.md"
    current = results.read_text()
    marker = "\n## Soak (`make soak`)"
    results.write_text(current.split(marker)[0].rstrip("\n") + "\n" + text)


if __name__ == "__main__":
    asyncio.run(main())
