"""The hostile-input suite's fixtures: the fake upstream in a thread of its own, the real proxy
process (once with aiohttp's C parser, once with the pure-Python one), canary tokens, raw
sockets, and a ledger for `make security`'s scorecard."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from proxy.testing import FakeAmperity, FakeTLS, RecordedRequest, make_token, start_fake
from tests.support.loop import LoopThread
from tests.support.process import proxy_command

ROOT = Path(__file__).resolve().parents[2]

# The `paths` policies of the hostile proxy's policy routes (all aimed at /api, acme's token).
# `/slug` holds the nested-quantifier pattern that freezes a backtracking regex engine.
POLICY_PATHS = {
    "/ro": ["/segments", "/segments/[^/]+/profiles"],
    "/ro-any": ["/segments/.*"],
    "/slug": ["/segments/([a-z0-9]+-?)+"],
}


@dataclass
class Ledger:
    """What `make security` reports: nothing may reach a wrong place, leak, or desync."""

    hostile_requests: int = 0
    wrong_place: int = 0
    token_leaks: int = 0
    desyncs: int = 0
    fault_cases: int = 0
    notes: list[str] = field(default_factory=list)
    # Attempts per category of the attack that found holes (reload races, policy bypass,
    # exec helpers, secrets in errors, ...): the scorecard lists each with its count.
    categories: dict[str, int] = field(default_factory=dict)

    def tried(self, category: str, count: int = 1) -> None:
        self.categories[category] = self.categories.get(category, 0) + count


LEDGER = Ledger()


@pytest.fixture(scope="session")
def ledger() -> Iterator[Ledger]:
    yield LEDGER
    target = os.environ.get("AMPERITY_SCORECARD")
    if target:
        Path(target).write_text(json.dumps(LEDGER.__dict__))


class ThreadedFake:
    """The fake Amperity upstream on its own event loop thread, so tests can use blocking sockets."""

    def __init__(self, tls: FakeTLS) -> None:
        self.thread = LoopThread()
        self.fake: FakeAmperity = self.thread.call(self._make())
        self.runner, self.port = self.thread.call(
            start_fake(self.fake, tls.server, host="127.0.0.1")
        )

    async def _make(self) -> FakeAmperity:
        return FakeAmperity()

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.fake.requests)

    def close(self) -> None:
        self.thread.call(self.runner.cleanup())
        self.thread.stop()


@pytest.fixture(scope="session")
def upstream_thread(tls: FakeTLS) -> Iterator[ThreadedFake]:
    fake = ThreadedFake(tls)
    yield fake
    fake.close()


@dataclass
class Canaries:
    """Random tokens used only by this suite; they must never show up anywhere."""

    acme: str
    sandbox: str

    @property
    def all(self) -> tuple[str, ...]:
        return (self.acme, self.sandbox)


@pytest.fixture(scope="session")
def canaries() -> Canaries:
    return Canaries(
        make_token("acme", subject=f"canary-{secrets.token_hex(8)}"),
        make_token("acme-sb", subject=f"canary-{secrets.token_hex(8)}"),
    )


@dataclass
class ProxyProcess:
    parser: str
    port: int
    admin_port: int
    upstream_port: int
    log: Path
    proc: subprocess.Popen[bytes]
    bodies: list[bytes] = field(default_factory=list)

    @property
    def upstream_authority(self) -> str:
        return f"localhost:{self.upstream_port}"


def _wait_listening(log: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            record: dict[str, Any] = json.loads(line)
            if "listen" in record and "admin" in record:
                return record
        time.sleep(0.05)
    raise AssertionError("the proxy never started listening")


@pytest.fixture(scope="session", params=["c", "python"], ids=["c-parser", "python-parser"])
def proxy_process(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tls: FakeTLS,
    upstream_thread: ThreadedFake,
    canaries: Canaries,
) -> Iterator[ProxyProcess]:
    parser = request.param
    workdir = tmp_path_factory.mktemp(f"hostile-{parser}")
    (workdir / "ca.pem").write_bytes(tls.ca_pem)
    base = f"https://localhost:{upstream_thread.port}"
    config = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "limits": {"allow_pure_python_parser": parser == "python"},
        "defaults": {"ca_file": str(workdir / "ca.pem")},
        "routes": [
            {
                "prefix": "/acme",
                "tenant": "acme",
                "base_url": f"{base}/api",
                "token": {"env": "CANARY_ACME"},
            },
            # Routes with a policy (policy-bypass attacks): read-only, a few paths.
            {
                "prefix": "/ro",
                "tenant": "acme",
                "base_url": f"{base}/api",
                "token": {"env": "CANARY_ACME"},
                "methods": ["GET"],
                "paths": POLICY_PATHS["/ro"],
            },
            {
                "prefix": "/ro-any",
                "tenant": "acme",
                "base_url": f"{base}/api",
                "token": {"env": "CANARY_ACME"},
                "paths": POLICY_PATHS["/ro-any"],
            },
            {
                "prefix": "/slug",
                "tenant": "acme",
                "base_url": f"{base}/api",
                "token": {"env": "CANARY_ACME"},
                "paths": POLICY_PATHS["/slug"],
            },
            {
                "prefix": "/acme-sb",
                "tenant": "acme-sb",
                "base_url": f"{base}/sbapi",
                "token": {"env": "CANARY_SB"},
            },
        ],
    }
    env = {"CANARY_ACME": canaries.acme, "CANARY_SB": canaries.sandbox}
    if parser == "python":
        env["AIOHTTP_NO_EXTENSIONS"] = "1"
    with served(workdir, config, env, "--log-level", "DEBUG") as (proc, log, record):
        port = int(record["listen"][0].rsplit(":", 1)[1])
        admin = int(record["admin"][0].rsplit(":", 1)[1])
        yield ProxyProcess(parser, port, admin, upstream_thread.port, log, proc)


@contextlib.contextmanager
def served(
    workdir: Path, config: dict[str, Any], env: dict[str, str], *flags: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[str, Any]]]:
    """`proxy run` on `config` (written to `workdir`) with a JSON log to a file, until the
    block ends: the process, its log, and its start line (which says where it listens)."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AMPERITY_")} | env
    log = workdir / "proxy.log"
    command = [*proxy_command(), "run", "--config", str(workdir / "config.yaml")]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*command, "--log-format", "json", *flags],
            env=environment,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
    try:
        yield proc, log, _wait_listening(log, proc)
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class Exchange:
    raw: bytes
    closed: bool

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1]) if self.raw.startswith(b"HTTP/") else 0

    @property
    def statuses(self) -> list[int]:
        return [
            int(part.split(b" ", 2)[1])
            for part in self.raw.split(b"HTTP/1.")[1:]
            if part[:1] in b"01"
        ]

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]


def send(port: int, data: bytes, wait: float = 5.0) -> Exchange:
    """Send raw bytes; read until the server closes or stays quiet for `wait` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        closed = False
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
    return Exchange(b"".join(chunks), closed)


class Checked:
    """Runs a hostile request and checks what the upstream got against the routes."""

    def __init__(
        self, proxy: ProxyProcess, upstream: ThreadedFake, canaries: Canaries, ledger: Ledger
    ) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.canaries = canaries
        self.ledger = ledger

    def __call__(self, data: bytes, wait: float = 5.0) -> tuple[Exchange, list[RecordedRequest]]:
        before = len(self.upstream.requests)
        exchange = send(self.proxy.port, data, wait)
        self.proxy.bodies.append(exchange.raw)
        new = self.upstream.requests[before:]
        self.ledger.hostile_requests += 1
        wrong = [r for r in new if not self.in_place(r)]
        self.ledger.wrong_place += len(wrong)
        leaked = [c for c in self.canaries.all if c.encode() in exchange.raw]
        self.ledger.token_leaks += len(leaked)
        assert not wrong, f"forwarded to a wrong place: {wrong}"
        assert not leaked, "a canary token appeared in a response"
        return exchange, new

    def in_place(self, r: RecordedRequest) -> bool:
        """Every forwarded request stays under its route's base path with its route's token."""
        routes = {
            "/api": (self.canaries.acme, "acme"),
            "/sbapi": (self.canaries.sandbox, "acme-sb"),
        }
        for base, (token, tenant) in routes.items():
            if (
                r.raw_path == base
                or r.raw_path.startswith(base + "/")
                or r.raw_path.startswith(base + "?")
            ):
                path = r.raw_path.split("?", 1)[0]
                segments = path.split("/")
                return (
                    r.header_all("Authorization") == [f"Bearer {token}"]
                    and r.header_all("Amperity-Tenant") == [tenant]
                    and ".." not in segments
                    and "." not in segments
                    and jwt.decode(token, options={"verify_signature": False})["tenant"] == tenant
                )
        return False


@pytest.fixture
def hostile(
    proxy_process: ProxyProcess, upstream_thread: ThreadedFake, canaries: Canaries, ledger: Ledger
) -> Checked:
    return Checked(proxy_process, upstream_thread, canaries, ledger)


def request(
    target: str, *headers: str, method: str = "GET", body: bytes = b"", version: str = "1.1"
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
