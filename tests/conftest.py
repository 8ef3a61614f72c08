"""Shared fixtures: a trustme CA, the fake Amperity upstream over TLS, and a proxy factory.

Everything listens on 127.0.0.1; realistic host names (acme.amperity.com) reach the fake
through a fake resolver, with TLS verification on against the test CA.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from prometheus_client import CollectorRegistry

from proxy.app import ProxyApp, create_admin_app, create_app
from proxy.config import Config, parse_config
from proxy.observe.tracing import Tracing
from proxy.testing import (
    TEST_SECRET,
    FakeAmperity,
    FakeResolver,
    FakeTLS,
    make_tls,
    make_token,
    start_fake,
)
from proxy.tokens import TokenStore
from tests.support.redis import INSTALL as REDIS_INSTALL
from tests.support.redis import RedisServer, redis_binary

HOSTS = ("acme.amperity.com", "acme-sb.amperity.com", "app.amperity.com", "other.amperity.com")
ACME_TOKEN = make_token("acme")

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture(scope="session")
def tls() -> FakeTLS:
    return make_tls(*HOSTS, "localhost")


@dataclass
class Upstream:
    fake: FakeAmperity
    port: int

    def url(self, host: str = "acme.amperity.com", path: str = "/api") -> str:
        return f"https://{host}:{self.port}{path}"

    @property
    def requests(self) -> list[Any]:
        return self.fake.requests


@pytest.fixture
async def upstream(tls: FakeTLS) -> AsyncIterator[Upstream]:
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    yield Upstream(fake, port)
    fake.release.set()
    await runner.cleanup()


@dataclass
class Proxy:
    client: TestClient[Any, Any]
    admin: TestClient[Any, Any]
    app: ProxyApp
    config: Config
    registry: CollectorRegistry
    resolver: FakeResolver
    env: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        port = self.client.server.port
        assert port is not None
        return port

    @property
    def store(self) -> TokenStore:
        return self.app.store

    def draining(self, value: bool) -> None:
        self.app.lifecycle.draining = value

    async def metrics_text(self) -> str:
        response = await self.admin.get("/metrics")
        assert response.status == 200
        return await response.text()


ProxyFactory = Callable[..., Awaitable[Proxy]]


def acme_route(upstream: Upstream, **overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "prefix": "/acme",
        "tenant": "acme",
        "base_url": upstream.url(),
        "token": {"env": "ACME_TOKEN"},
    }
    if "tokens" in overrides:
        route.pop("token")
    route.update(overrides)
    return route


def tls_route(port: int, ca_file: Path, **overrides: Any) -> dict[str, Any]:
    """The acme route aimed at a TLS fake on `port`, trusting only `ca_file`."""
    route: dict[str, Any] = {
        "prefix": "/acme",
        "tenant": "acme",
        "base_url": f"https://localhost:{port}/api",
        "ca_file": str(ca_file),
        "token": {"env": "ACME_TOKEN"},
    }
    route.update(overrides)
    return route


@dataclass
class ProcessUpstream:
    """The fake Amperity on a port of its own, for proxies run as processes: they reach it at
    `localhost:port` and trust only `ca_file` (written to the test's directory)."""

    fake: FakeAmperity
    port: int
    ca_file: Path

    def route(self, **overrides: Any) -> dict[str, Any]:
        return tls_route(self.port, self.ca_file, **overrides)


@pytest.fixture
async def process_upstream(tls: FakeTLS, tmp_path: Path) -> AsyncIterator[ProcessUpstream]:
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(tls.ca_pem)
    yield ProcessUpstream(fake, port, ca_file)
    fake.release.set()  # a request the fake still holds ends, so the runner can stop
    await runner.cleanup()


class ProxyTestServer(RawTestServer):
    """A test server running one of the proxy's own `GuardedServer`s (limits included): the
    proxy listener's (`app.server()`) or the admin listener's (`create_admin_app(app)`)."""

    def __init__(self, app: ProxyApp, server: web.Server | None = None) -> None:
        self.server_ = server if server is not None else app.server()
        super().__init__(self.server_.request_handler)
        self.app = app

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> web.ServerRunner:
        return web.ServerRunner(self.server_, **kwargs)


@pytest.fixture
async def make_proxy(
    aiohttp_client: AiohttpClient,
    upstream: Upstream,
    tls: FakeTLS,
) -> AsyncIterator[ProxyFactory]:
    started: list[ProxyApp] = []

    async def factory(
        routes: list[dict[str, Any]] | None = None,
        *,
        env: dict[str, str] | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
        config_tls: bool = False,
        extra: dict[str, Any] | None = None,
        token_poll_interval: float = 3600,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        pool_idle: float = 15.0,
        tracing: Tracing | None = None,
    ) -> Proxy:
        raw: dict[str, Any] = {"routes": routes or [acme_route(upstream)]}
        raw.update(extra or {})
        config = parse_config(raw, source="test")
        environment = {"ACME_TOKEN": ACME_TOKEN, **(env or {})}
        registry = CollectorRegistry()
        resolver = FakeResolver(dict.fromkeys(HOSTS, "127.0.0.1"))
        app = create_app(
            config,
            # config_tls: use the contexts built from the config (system CAs + ca_file).
            upstream_ssl=None if config_tls else (upstream_ssl or tls.client),
            resolver=resolver,
            registry=registry,
            env=environment,
            token_poll_interval=token_poll_interval,
            clock=clock or time.time,
            sleep=sleep or asyncio.sleep,
            rng=rng,
            pool_idle=pool_idle,
            tracing=tracing,
        )
        await app.startup()
        started.append(app)
        client = await aiohttp_client(ProxyTestServer(app))
        admin = await aiohttp_client(ProxyTestServer(app, create_admin_app(app)))
        return Proxy(client, admin, app, config, registry, resolver, environment)

    yield factory
    for app in started:
        await app.cleanup()


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def raw_request(port: int, data: bytes, wait: float = 10) -> RawResponse:
    """Send raw bytes, read until the server closes; parse one response (no chunked decoding)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    return RawResponse(status, [(h[0], h[1]) for h in headers], body)


def get(path: str, *headers: str) -> bytes:
    """A raw GET request that asks the server to close the connection afterwards."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


EXEC_SCRIPT = """
import pathlib, sys, time, jwt
state = pathlib.Path(sys.argv[1])
count = state / "count"
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
mode = (state / "mode").read_text().strip() if (state / "mode").exists() else "ok"
print(f"token helper run {n}", file=sys.stderr)
if mode == "fail":
    print("STDOUT-OF-A-FAILED-RUN-NEVER-LOGGED")
    sys.exit(3)
if mode == "sleep":
    time.sleep(30)
ttl = int((state / "ttl").read_text()) if (state / "ttl").exists() else 3600
now = int(time.time())
claims = {"tenant": "acme", "iat": now, "exp": now + ttl, "sub": f"exec-{n}"}
token = jwt.encode(claims, sys.argv[2], algorithm="HS256")
if mode == "chatty":
    print(f"issued {token}", file=sys.stderr)
print(token)
"""


def subject(authorization: str | None) -> str:
    assert authorization is not None
    claims = jwt.decode(authorization.removeprefix("Bearer "), options={"verify_signature": False})
    return str(claims["sub"])


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start}")


@pytest.fixture
def exec_state(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text(EXEC_SCRIPT)
    state = tmp_path / "state"
    state.mkdir()
    return state


def exec_source(state: Path, **extra: Any) -> dict[str, Any]:
    command = [sys.executable, str(state.parent / "helper.py"), str(state), TEST_SECRET]
    return {"exec": {"command": command, **extra}}


@dataclass
class ScriptedUpstream:
    """A TLS upstream that answers each request head with exact bytes (`answers`, in turn; the
    last one repeats) and records what it received, one list of request heads per connection.
    For what the fake can't send: malformed status and header lines, odd status codes."""

    answers: list[bytes]
    closing: set[int] = field(default_factory=set)  # answers after which it hangs up
    ended: int = 0  # connections that are over (either side closed them)
    connections: list[list[bytes]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, tls: FakeTLS) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls.server)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads: list[bytes] = []
        self.connections.append(heads)
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                index = min(sum(len(c) for c in self.connections) - 1, len(self.answers) - 1)
                writer.write(self.answers[index])
                await writer.drain()
                if index in self.closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended += 1
            writer.close()

    @property
    def heads(self) -> list[bytes]:
        return [h for c in self.connections for h in c]

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(found: object, what: str, install: str) -> None:
    """A test that needs an outside tool: skipped locally with one line saying how to install
    it; in CI (`CI=true`, set by .ci/run) a missing tool fails the test instead."""
    if found:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {install}")
    pytest.skip(f"{what} missing: {install}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `after_all` (the canary leak scan, which reads what every other test
    caused) run after every test that shares their parameters (the same session-scoped proxy
    process), whatever their file is called."""

    def params(item: pytest.Item) -> dict[str, object]:
        spec = getattr(item, "callspec", None)
        return dict(spec.params) if spec is not None else {}

    last = [item for item in items if item.get_closest_marker("after_all")]
    order = [item for item in items if not item.get_closest_marker("after_all")]
    for item in last:
        mine = params(item)
        shared = [
            n
            for n, other in enumerate(order)
            if all(params(other).get(k, object()) == v for k, v in mine.items())
        ]
        order.insert(shared[-1] + 1 if shared and mine else len(order), item)
    items[:] = order


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server on loopback (skipped locally when missing; in CI it must exist)."""
    binary = redis_binary()
    require(binary, "redis-server", REDIS_INSTALL)
    assert binary is not None
    server = RedisServer(binary, tmp_path)
    await server.start()
    yield server
    server.stop()
