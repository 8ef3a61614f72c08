"""`make bench`: the proxy against a plain aiohttp pass-through and against nginx directly.

Everything on 127.0.0.1: nginx (Debian's nginx-light) is the upstream stub (plain HTTP, and HTTPS
for the TLS variant), wrk drives small requests, curl streams 1 GiB each way. Rounds alternate
reference/proxy so a noisy machine hits both alike; medians are reported, with ratios.
Results go to stdout and bench/RESULTS.md.

    python bench/run.py [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from proxy import __version__
from proxy.testing import make_tls, make_token

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared import measure as measure_shared  # bench/shared.py, beside this file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GIB = 1024**3
QUICK = "--quick" in sys.argv
# The proxy and the reference run from a runtime-only install, like the image (no dev extras:
# e.g. pyjwt then doesn't load `cryptography`, which trustme brings into the dev venv).
SERVER_PYTHON = str(Path(os.environ.get("BENCH_PYTHON", sys.executable)).absolute())
ROUND_SECONDS = 3 if QUICK else 5
ROUNDS = 2 if QUICK else 3
STREAM_BYTES = GIB // 4 if QUICK else GIB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def tree_pids(pid: int) -> list[int]:
    """The process and its children (workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *[q for k in kids for q in tree_pids(k)]]


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"{url} never answered 200")


@dataclass
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, seconds: int = ROUND_SECONDS) -> Wrk:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    return Wrk(rps, p50, p99, total)


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    ready_seconds: float


class Stack:
    """nginx upstream + proxy + reference, all on loopback."""

    def __init__(self, work: Path, workers: int = 1, *, proxy: bool = True) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        tls = make_tls("localhost", "127.0.0.1")
        (work / "ca.pem").write_bytes(tls.ca_pem)
        (work / "server.pem").write_bytes(tls.issue_pem("localhost", "127.0.0.1"))
        self.http, self.https = free_port(), free_port()
        big = work / "big"
        with big.open("wb") as f:
            f.truncate(STREAM_BYTES)  # sparse: no disk needed
        work.chmod(0o755)
        (work / "nginx.conf").write_text(
            f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path {work}/body;
  server {{
    listen 127.0.0.1:{self.http};
    listen 127.0.0.1:{self.https} ssl;
    ssl_certificate {work}/server.pem;
    ssl_certificate_key {work}/server.pem;
    client_max_body_size 0;
    location = /api/small {{ default_type application/json; return 200 '{{"ok":true}}'; }}
    location = /api/big {{ alias {big}; }}
    location = /api/upload {{ return 200 'ok'; }}
  }}
}}
"""
        )
        self.nginx = self._spawn(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)])
        wait_http(f"http://127.0.0.1:{self.http}/api/small", time.monotonic() + 10)
        self.token = make_token("acme", ttl=30 * 86400)  # a token as used: not about to expire
        if proxy:
            started = self.start_proxy(workers=workers)
            self.proxy, self.proxy_port = started.process, started.port
            self.admin_port, self.ready_seconds = started.admin_port, started.ready_seconds
        self.reference_port = free_port()
        self.reference = self._spawn(
            [
                SERVER_PYTHON,
                str(HERE / "reference.py"),
                str(self.reference_port),
                f"http://127.0.0.1:{self.http}",
            ]
        )
        wait_http(f"http://127.0.0.1:{self.reference_port}/api/small", time.monotonic() + 10)

    def _spawn(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def start_proxy(
        self, *, workers: int = 1, source: Path | None = None, extra_routes: int = 0
    ) -> Proxy:
        """A proxy process in front of nginx: the installed one, or the `proxy/` package under
        `source` (another revision's code, for `bench/compare.py`), with `extra_routes` more
        routes (each its own prefix and tenant) beside the two it always has."""
        port, admin_port = free_port(), free_port()

        def plain(prefix: str, tenant: str) -> dict[str, object]:
            base = f"http://127.0.0.1:{self.http}/api"
            return {
                "prefix": prefix,
                "tenant": tenant,
                "base_url": base,
                "token": {"env": "BENCH_TOKEN"},
            }

        tls = {
            "prefix": "/acme-tls",
            "tenant": "acme",
            "base_url": f"https://127.0.0.1:{self.https}/api",
            "ca_file": str(self.work / "ca.pem"),
            "token": {"env": "BENCH_TOKEN"},
        }
        extra = [plain(f"/tenant-{i}", f"tenant-{i}") for i in range(extra_routes)]
        config = {
            "listen": {"port": port},
            "admin": {"port": admin_port},
            "log": {"format": "json", "level": "INFO"},  # the access log stays on
            "routes": [plain("/acme", "acme"), tls, *extra],
        }
        name = f"proxy-{port}"
        (self.work / f"{name}.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "BENCH_TOKEN": self.token}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        argv = [SERVER_PYTHON, "-m", "proxy", "run", "--config", str(self.work / f"{name}.yaml")]
        if workers > 1:
            argv += ["--workers", str(workers)]
        started = time.monotonic()
        with (self.work / f"{name}.log").open("ab") as log:
            process = self._spawn(argv, env=env, stderr=log, cwd=self.work)
        wait_http(f"http://127.0.0.1:{admin_port}/readyz", started + 30)
        return Proxy(process, port, admin_port, time.monotonic() - started)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(30)


def cpu_per_10k(pids: list[int], run: Wrk, before: float) -> float:
    return (sum(cpu_seconds(p) for p in pids) - before) / run.requests * 10_000


def small_requests(stack: Stack) -> dict[str, dict[int, Wrk | float]]:
    urls = {
        "direct": f"http://127.0.0.1:{stack.http}/api/small",
        "reference": f"http://127.0.0.1:{stack.reference_port}/api/small",
        "proxy": f"http://127.0.0.1:{stack.proxy_port}/acme/small",
    }
    pids = {
        "reference": [stack.reference.pid],
        "proxy": tree_pids(stack.proxy.pid),
        "direct": [stack.nginx.pid],
    }
    results: dict[str, dict[int, list[Wrk]]] = {name: {1: [], 32: []} for name in urls}
    cpu: dict[str, list[float]] = {"reference": [], "proxy": []}
    for connections in (1, 32):
        wrk(urls["proxy"], connections, 1)  # warm up
        for round_ in range(ROUNDS):
            order = (
                ["reference", "proxy", "direct"]
                if round_ % 2 == 0
                else ["proxy", "reference", "direct"]
            )
            for name in order:
                before = sum(cpu_seconds(p) for p in pids[name])
                run = wrk(urls[name], connections)
                results[name][connections].append(run)
                if connections == 32 and name in cpu:
                    cpu[name].append(cpu_per_10k(pids[name], run, before))
    out: dict[str, dict[int, Wrk | float]] = {}
    for name, by_c in results.items():
        out[name] = {}
        for c, runs in by_c.items():
            out[name][c] = Wrk(
                statistics.median(r.rps for r in runs),
                statistics.median(r.p50_ms for r in runs),
                statistics.median(r.p99_ms for r in runs),
                sum(r.requests for r in runs),
            )
        if name in cpu:
            out[name][0] = statistics.median(cpu[name])  # CPU s per 10k requests at c=32
    return out


def stream(stack: Stack, port: int, path: str, pid: int, upload: bool) -> tuple[float, float]:
    """(GB/s, peak RSS growth MiB) for STREAM_BYTES through the given port."""
    reset_peak(pid)
    before = rss_mib(pid)
    url = f"http://127.0.0.1:{port}{path}"
    argv = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{speed_download} %{speed_upload}",
        url,
    ]
    if upload:
        argv[1:1] = ["-T", str(stack.work / "big"), "-H", "Expect:"]
    started = time.perf_counter()
    code, _, _ = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    elapsed = time.perf_counter() - started
    if code != "200":
        raise RuntimeError(f"{url}: HTTP {code}")
    return STREAM_BYTES / elapsed / 1e9, rss_mib(pid, "VmHWM") - before


def idle_connections(port: int, count: int = 2000) -> list[socket.socket]:
    held = []
    request = b"GET /acme/small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.recv(65536)
        held.append(s)
    return held


def main() -> None:
    for tool in ("wrk", "nginx", "curl"):
        if shutil.which(tool) is None:
            sys.exit(
                f"bench needs {tool}: run `make bench` (it installs wrk, nginx-light and curl)"
            )
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        try:
            proxy_pid = stack.proxy.pid
            rows.append(
                ("start to /readyz 200", f"{stack.ready_seconds * 1000:.0f} ms", "target < 1000 ms")
            )
            idle = rss_mib(proxy_pid)
            rows.append(
                (
                    "RSS at idle (proxy / reference)",
                    f"{idle:.1f} / {rss_mib(stack.reference.pid):.1f} MiB",
                    "target < 45 MiB",
                )
            )
            small = small_requests(stack)
            for c in (1, 32):
                p, r, d = small["proxy"][c], small["reference"][c], small["direct"][c]
                assert isinstance(p, Wrk) and isinstance(r, Wrk) and isinstance(d, Wrk)
                rows.append(
                    (
                        f"small GETs, {c} connection(s): req/s proxy / reference / direct",
                        f"{p.rps:.0f} / {r.rps:.0f} / {d.rps:.0f}",
                        f"proxy/reference {p.rps / r.rps:.2f}x, proxy/direct {p.rps / d.rps:.2f}x"
                        + (" (target >= 1.2x reference)" if c == 32 else ""),
                    )
                )
                if c == 1:
                    rows.append(
                        (
                            "added latency at 1 connection, p50 / p99 (proxy; reference)",
                            f"{p.p50_ms - d.p50_ms:.3f} / {p.p99_ms - d.p99_ms:.3f} ms; "
                            f"{r.p50_ms - d.p50_ms:.3f} / {r.p99_ms - d.p99_ms:.3f} ms",
                            "target: proxy p50 <= reference p50",
                        )
                    )
            rows.append(
                (
                    "CPU seconds per 10,000 requests at 32 connections (proxy / reference)",
                    f"{small['proxy'][0]:.2f} / {small['reference'][0]:.2f}",
                    "",
                )
            )
            size = f"{STREAM_BYTES / GIB:g} GiB"
            # Warm the page cache (and nginx) so neither contender pays for the first read.
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{stack.http}/api/big"],
                check=True,
            )
            contenders = {
                "proxy": (stack.proxy_port, "/acme", proxy_pid),
                "reference": (stack.reference_port, "/api", stack.reference.pid),
            }
            best: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
            for round_ in range(2):  # alternate who goes first; keep each one's best round
                order = ["proxy", "reference"] if round_ == 0 else ["reference", "proxy"]
                for name in order:
                    port, prefix, pid = contenders[name]
                    down = stream(stack, port, f"{prefix}/big", pid, upload=False)
                    up = stream(stack, port, f"{prefix}/upload", pid, upload=True)
                    best[name].append((down[0], down[1]))
                    best[name].append((-up[0], up[1]))  # uploads marked negative
            for name in contenders:
                downs = [r for r in best[name] if r[0] > 0]
                ups = [(-r[0], r[1]) for r in best[name] if r[0] < 0]
                down = (max(d[0] for d in downs), max(d[1] for d in downs))
                up = (max(u[0] for u in ups), max(u[1] for u in ups))
                rows.append(
                    (
                        f"stream {size} down / up ({name}), best of 2 alternating rounds: GB/s, peak RSS growth (worst)",
                        f"{down[0]:.2f} / {up[0]:.2f} GB/s; {down[1]:.1f} / {up[1]:.1f} MiB",
                        "target >= 1 GB/s, < 30 MiB" if name == "proxy" else "",
                    )
                )
            tls = wrk(f"http://127.0.0.1:{stack.proxy_port}/acme-tls/small", 32)
            rows.append(
                ("small GETs, 32 connections, HTTPS upstream (proxy)", f"{tls.rps:.0f} req/s", "")
            )
            before = rss_mib(proxy_pid)
            held = idle_connections(stack.proxy_port)
            after = rss_mib(proxy_pid)
            for s in held:
                s.close()
            rows.append(
                (
                    "RSS with 2,000 idle keep-alive connections (proxy)",
                    f"+{after - before:.1f} MiB ({after:.1f} MiB)",
                    "target < +60 MiB",
                )
            )
        finally:
            stack.close()
        workers_row = bench_workers(Path(tmp))
        if workers_row:
            rows.append(workers_row)
        rows += bench_routes(Path(tmp))
    shared_row = measure_shared()  # None without a redis-server
    if shared_row is not None:
        rows.append(shared_row)
    header = [
        "# Benchmark results (`make bench`)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}, amperity-proxy {__version__}",
        "- upstream: nginx on 127.0.0.1 (plain HTTP unless noted); load: wrk -t1; streaming: curl",
        f"- {ROUNDS} alternating rounds of {ROUND_SECONDS} s per measure; medians",
        "- reference: `bench/reference.py`, a plain aiohttp pass-through (no routing, policy, logging or metrics)",
        "",
        "| measure | result | ratio / target |",
        "|---|---|---|",
    ]
    text = "\n".join(header + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n"
    print(text)
    if not QUICK:
        soak = HERE / "SOAK.md"  # `make soak`'s last figures stay with the benchmark's
        (HERE / "RESULTS.md").write_text(
            text + (HERE / "ANALYSIS.md").read_text() + (soak.read_text() if soak.exists() else "")
        )
    print(json.dumps({"written": not QUICK}))


ROUTES = 1000


def bench_routes(work: Path) -> list[tuple[str, str, str]]:
    """A config of 1,000 routes: start to ready (median of ROUNDS starts), RSS, and small GETs
    on one route against a config of one, alternating."""
    sub = work / "routes"
    sub.mkdir()
    stack = Stack(sub, proxy=False)
    try:
        starts: list[Proxy] = []
        for _ in range(ROUNDS):  # each start alone: the previous one is stopped first
            if starts:
                starts[-1].process.terminate()
                starts[-1].process.wait(30)
            starts.append(stack.start_proxy(extra_routes=ROUTES))
        many, one = starts[-1], stack.start_proxy()
        rps: dict[int, list[float]] = {many.port: [], one.port: []}
        for proxy in (many, one):
            wrk(f"http://127.0.0.1:{proxy.port}/acme/small", 32, 1)
        for round_ in range(ROUNDS):
            for proxy in (many, one) if round_ % 2 == 0 else (one, many):
                rps[proxy.port].append(wrk(f"http://127.0.0.1:{proxy.port}/acme/small", 32).rps)
        ready = statistics.median(p.ready_seconds for p in starts)
        many_rss, one_rss = rss_mib(many.process.pid), rss_mib(one.process.pid)
        many_rps, one_rps = statistics.median(rps[many.port]), statistics.median(rps[one.port])
    finally:
        stack.close()
    return [
        (
            f"{ROUTES:,} routes: start to /readyz 200 (one route: {one.ready_seconds * 1000:.0f} ms)",
            f"{ready * 1000:.0f} ms",
            "target < 1000 ms",
        ),
        (
            f"{ROUTES:,} routes: small GETs on one route, 32 connections (vs a one-route config)",
            f"{many_rps:.0f} / {one_rps:.0f} req/s",
            f"{many_rps / one_rps:.2f}x (target >= 0.9x)",
        ),
        (
            f"{ROUTES:,} routes: RSS (one route: {one_rss:.1f} MiB)",
            f"{many_rss:.1f} MiB",
            f"{(many_rss - one_rss) * 1024 / ROUTES:.0f} KiB per route",
        ),
    ]


def bench_workers(work: Path) -> tuple[str, str, str] | None:
    """Small requests at 32 connections with 1 and 2 worker processes."""
    results = []
    for workers in (1, 2):
        sub = work / f"workers-{workers}"
        sub.mkdir()
        stack = Stack(sub, workers=workers)
        try:
            url = f"http://127.0.0.1:{stack.proxy_port}/acme/small"
            wrk(url, 32, 1)
            results.append(statistics.median(wrk(url, 32).rps for _ in range(ROUNDS)))
        finally:
            stack.close()
    return (
        "small GETs, 32 connections, --workers 1 / 2",
        f"{results[0]:.0f} / {results[1]:.0f} req/s",
        f"{results[1] / results[0]:.2f}x (2 cores, shared with wrk and nginx)",
    )


if __name__ == "__main__":
    main()
