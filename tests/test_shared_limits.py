"""Rate budgets beyond one route and one process (issue 17): routes for one tenant share a
budget; processes share it on a real Redis; a Redis outage degrades pacing, never requests.

The multi-process tests offer more than the budget through three `run` processes and read the
fake upstream's arrival times: the proof is what the upstream saw in every one-second window.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.testing import make_token
from tests.conftest import (
    ProcessUpstream,
    Proxy,
    ProxyFactory,
    Upstream,
    acme_route,
    metric,
    require,
)
from tests.support.clocks import FakeClock
from tests.support.envelope import message
from tests.support.net import closed_port
from tests.support.process import ProxyProcess, clean_env, proxy_command, spawn_proxy
from tests.support.redis import INSTALL as REDIS_INSTALL
from tests.support.redis import RedisServer, redis_binary
from tests.support.waiting import until_async

RATE, BURST = 4, 2  # per second; what the upstream may see in any one-second window: 6


def busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any window of one second."""
    times = sorted(arrivals)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def limited(**rate_limit: Any) -> dict[str, Any]:
    return {"requests_per_second": RATE, "burst": BURST, "max_wait": 1, **rate_limit}


# --- budgets shared by routes ----------------------------------------------------------


async def test_two_routes_for_one_tenant_share_one_bucket(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    clock = FakeClock()  # never advances: no token comes back during the test
    rate = {"requests_per_second": 1, "burst": 1, "max_wait": 0.1}
    proxy = await make_proxy(
        [
            acme_route(upstream, prefix="/full", rate_limit=rate),
            acme_route(upstream, prefix="/readonly", methods=["GET"], rate_limit=rate),
        ],
        clock=clock,
    )
    assert (await proxy.client.get("/full/segments")).status == 200
    second = await proxy.client.get("/readonly/segments")  # same endpoint, other route
    assert second.status == 429
    assert [r.raw_path for r in upstream.requests] == ["/api/segments"]


def test_routes_sharing_a_budget_at_two_speeds_are_refused() -> None:
    base = {"tenant": "acme", "base_url": "https://acme.amperity.com/api", "token": {"env": "T"}}
    routes = [
        {**base, "prefix": "/full", "rate_limit": {"requests_per_second": 10}},
        {**base, "prefix": "/readonly", "rate_limit": {"requests_per_second": 5}},
    ]
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": routes}, env={})
    [error] = info.value.errors
    assert error.startswith("routes[1].rate_limit: route readonly and route full (routes[0])")
    assert "give both the same requests_per_second" in error
    routes[1]["rate_limit"] = {"requests_per_second": 5, "key": "route"}  # its own budget: fine
    parse_config({"routes": routes}, env={})


def test_a_password_in_the_redis_url_is_refused_without_echoing_it() -> None:
    route = {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}}
    raw = {"routes": [route], "shared": {"redis": {"url": "redis://:hunter2@redis:6379/0"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    text = str(info.value)
    assert "hunter2" not in text
    assert "move the password to shared.redis.password" in text


def test_store_shared_needs_a_shared_section() -> None:
    route = {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}}
    route["rate_limit"] = {"store": "shared"}
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [route]}, env={})
    assert "routes[0].rate_limit.store: shared needs a shared.redis section" in str(info.value)


# --- processes sharing a budget ---------------------------------------------------------


async def _offer(ports: list[int], per_second: float, seconds: float) -> dict[int, int]:
    """`per_second` GETs of one endpoint spread over `ports`, each on a new connection."""
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

        async def one(port: int) -> None:
            async with s.get(f"http://127.0.0.1:{port}/acme/segments") as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        tasks = []
        start = loop.time()
        for i in range(int(per_second * seconds)):
            await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
            tasks.append(asyncio.create_task(one(ports[i % len(ports)])))
        await asyncio.gather(*tasks)
    return statuses


async def _three_proxies(
    tmp_path: Path, upstream: ProcessUpstream, extra: dict[str, Any], rate_limit: dict[str, Any]
) -> list[ProxyProcess]:
    processes = []
    for i in range(3):
        work = tmp_path / f"p{i}"
        work.mkdir()
        config = {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "routes": [upstream.route(rate_limit=rate_limit)],
            **extra,
        }
        process = await spawn_proxy(work, config, {"ACME_TOKEN": make_token("acme")})
        assert process.proc.stderr is not None
        _drains.add(asyncio.create_task(process.proc.stderr.read()))  # a full pipe would block
        processes.append(process)
    return processes


_drains: set[asyncio.Task[bytes]] = set()


def _port(process: ProxyProcess) -> int:
    return int(process.proxy.rsplit(":", 1)[1])


@pytest.mark.parametrize("store", ["shared", "local"])
async def test_three_processes_on_one_redis_keep_one_budget(
    tmp_path: Path, process_upstream: ProcessUpstream, redis_server: RedisServer, store: str
) -> None:
    """30 req/s offered through three processes for 3 s: with the shared store the upstream
    sees at most RATE + BURST in any second; with `store: local` each process paces alone and
    the upstream sees about three times that (so this test can fail)."""
    extra = {"shared": {"redis": {"url": redis_server.url}}}
    processes = await _three_proxies(tmp_path, process_upstream, extra, limited(store=store))
    try:
        statuses = await _offer([_port(p) for p in processes], 30, 3)
    finally:
        for process in processes:
            await process.stop()
    arrivals = [r.received_at for r in process_upstream.fake.requests]
    assert set(statuses) <= {200, 429} and statuses.get(200) == len(arrivals)
    if store == "shared":
        assert busiest_second(arrivals) <= RATE + BURST, sorted(arrivals)
        assert statuses[429] > 0  # the rest were refused locally, not sent
    else:
        assert busiest_second(arrivals) > RATE + BURST + RATE  # each process alone: ~3x


async def test_workers_without_redis_divide_the_rate(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    config = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "routes": [process_upstream.route(rate_limit=limited(burst=3))],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    listen = closed_port()
    argv = proxy_command(
        "run",
        "--config",
        str(tmp_path / "config.yaml"),
        "--workers",
        "3",
        "--listen",
        f"127.0.0.1:{listen}",
        "--log-format",
        "json",
    )
    env = clean_env({"ACME_TOKEN": make_token("acme")})
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        listening = 0
        while listening < 3:  # every worker has bound the shared port
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "the workers exited"
            listening += "listen" in json.loads(line)
        drain = asyncio.create_task(proc.stderr.read())
        await _offer([listen], 30, 3)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    drain.cancel()
    # Each of 3 workers paces at RATE/3 with burst 1: the process as a whole at RATE + 3.
    assert busiest_second([r.received_at for r in process_upstream.fake.requests]) <= RATE + 3


# --- Redis down ---------------------------------------------------------------------


async def shared_again(proxy: Proxy) -> bool:
    """What an operator sees: the status page says the route's limit is shared again."""
    status = await (await proxy.admin.get("/status.json")).json()
    return bool(status["routes"][0]["rate_limit"] == "shared")


async def test_redis_down_mid_run_degrades_pacing_not_requests(
    make_proxy: ProxyFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    extra = {"shared": {"redis": {"url": redis_server.url, "timeout": 0.2}}}
    proxy = await make_proxy(
        [acme_route(upstream, rate_limit={"requests_per_second": 100, "burst": 100})],
        extra=extra,
    )
    assert (await proxy.client.get("/acme/segments")).status == 200
    text = await proxy.metrics_text()
    assert metric(text, "amperity_proxy_shared_state_up") == 1
    assert metric(text, 'amperity_proxy_shared_decisions_total{outcome="immediate"}') == 1
    redis_server.stop()
    started = time.monotonic()
    for _ in range(5):  # no request fails because Redis is gone
        assert (await proxy.client.get("/acme/segments")).status == 200
    assert time.monotonic() - started < 10  # a hang would be minutes; the fallback is at once
    text = await proxy.metrics_text()
    assert metric(text, "amperity_proxy_shared_state_up") == 0
    assert metric(text, 'amperity_proxy_shared_decisions_total{outcome="fallback"}') == 5
    status = await (await proxy.admin.get("/status.json")).json()
    assert status["routes"][0]["rate_limit"] == "fallback"
    page = await (await proxy.admin.get("/")).text()
    assert '<dd class="limiter">fallback</dd>' in page
    await redis_server.start()  # same port
    await until_async(lambda: shared_again(proxy), "the probe to find Redis again")
    assert (await proxy.client.get("/acme/segments")).status == 200
    text = await proxy.metrics_text()
    assert metric(text, "amperity_proxy_shared_state_up") == 1
    assert metric(text, 'amperity_proxy_shared_decisions_total{outcome="immediate"}') == 2
    assert metric(text, "amperity_proxy_shared_fallback_seconds_total") > 0
    status = await (await proxy.admin.get("/status.json")).json()
    assert status["routes"][0]["rate_limit"] == "shared"
    assert len(upstream.requests) == 7


REDIS_SECRET = "canary-redis-5f0c2d9e41b7"


@pytest.mark.parametrize("given", ["right", "wrong"])
async def test_the_redis_password_never_shows(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    given: str,
) -> None:
    """With the right password decisions are shared; with a wrong one the process falls back.
    Either way neither password reaches logs, metrics, the status page or an answer."""
    binary = redis_binary()
    require(binary, "redis-server", REDIS_INSTALL)
    assert binary is not None
    server = RedisServer(binary, tmp_path, password=REDIS_SECRET)
    await server.start()
    wrong = "canary-wrong-7d3a90be12"
    try:
        password = REDIS_SECRET if given == "right" else wrong
        proxy = await make_proxy(
            [acme_route(upstream, rate_limit={"requests_per_second": 50, "burst": 50})],
            extra={"shared": {"redis": {"url": server.url, "password": {"env": "REDIS_PW"}}}},
            env={"REDIS_PW": password},
        )
        answer = await proxy.client.get("/acme/segments")
        body = await answer.text()
        text = await proxy.metrics_text()
        outcome = "immediate" if given == "right" else "fallback"
        assert metric(text, f'amperity_proxy_shared_decisions_total{{outcome="{outcome}"}}') == 1
        status = await (await proxy.admin.get("/status.json")).text()
        page = await (await proxy.admin.get("/")).text()
    finally:
        server.stop()
    assert answer.status == 200
    seen = "\n".join([body, text, status, page, caplog.text])
    assert REDIS_SECRET not in seen and wrong not in seen


async def test_a_redis_that_hangs_is_a_redis_that_is_down(
    make_proxy: ProxyFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    """SIGSTOP: the server holds the connection and never answers. The request still gets its
    answer (after `timeout`, not after redis-py's retries), and pacing falls back."""
    extra = {"shared": {"redis": {"url": redis_server.url, "timeout": 0.2}}}
    proxy = await make_proxy(
        [acme_route(upstream, rate_limit={"requests_per_second": 100, "burst": 100})],
        extra=extra,
    )
    assert (await proxy.client.get("/acme/segments")).status == 200  # connected, shared
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        # Within `timeout` (0.2 s); redis-py's defaults (5 s socket timeout) would take longer
        # than this generous bound.
        response = await asyncio.wait_for(proxy.client.get("/acme/segments"), 4)
        assert response.status == 200
        text = await proxy.metrics_text()
        assert metric(text, 'amperity_proxy_shared_decisions_total{outcome="fallback"}') == 1
        assert metric(text, "amperity_proxy_shared_state_up") == 0
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await until_async(lambda: shared_again(proxy), "the probe to find Redis again")
    assert len(upstream.requests) == 2


async def test_an_upstream_429_pauses_the_bucket_for_every_process(
    make_proxy: ProxyFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    """Proxy A meets Amperity's 429 (Retry-After: 5); proxy B, on the same Redis, then refuses
    the same endpoint locally instead of sending it into the same 429."""
    extra = {"shared": {"redis": {"url": redis_server.url}}}
    limit = {"requests_per_second": 100, "burst": 100, "max_wait": 1}
    a = await make_proxy([acme_route(upstream, rate_limit=limit)], extra=extra)
    b = await make_proxy([acme_route(upstream, rate_limit=limit)], extra=extra)
    first = await a.client.get("/acme/_fake/flaky/1?after=5")
    assert first.status == 429 and first.headers["Retry-After"] == "5"  # Amperity's own
    second = await b.client.get("/acme/_fake/flaky/1?after=5")
    assert second.status == 429
    assert "over its rate limit" in message(await second.read())  # the proxy's, not Amperity's
    assert int(second.headers["Retry-After"]) >= 4
    assert len(upstream.requests) == 1  # B sent nothing
    other = await b.client.get("/acme/segments")  # another endpoint is not held
    assert other.status == 200


def test_a_bad_redis_url_from_a_variable_is_not_echoed() -> None:
    """A value that came from ${VAR} may be a secret: the error says where it came from."""
    route = {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}}
    raw = {"routes": [route], "shared": {"redis": {"url": "${REDIS_URL}"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={"REDIS_URL": "ftp://s3cret-internal-host-7f3a/0"})
    text = str(info.value)
    assert "s3cret-internal-host-7f3a" not in text
    assert "shared.redis.url: expected redis://host:port/db" in text and "REDIS_URL" in text
