"""Live config reload: atomic swaps, in-flight requests, kept tokens, rejected configs."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import Config, ConfigError, parse_config
from proxy.testing import FakeAmperity, FakeTLS, make_token, start_fake
from tests.conftest import (
    Proxy,
    ProxyFactory,
    Upstream,
    acme_route,
    exec_source,
    metric,
    subject,
    tls_route,
)
from tests.hostile.test_starvation import _trickle
from tests.support.process import spawn_proxy

T1 = make_token("acme", subject="one")
T2 = make_token("acme", subject="two")


def config_of(routes: list[dict[str, Any]], **extra: Any) -> Config:
    return parse_config({"routes": routes, **extra}, env={})


async def test_reload_changes_a_routes_token_source(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(env={"T1": T1, "T2": T2})  # starts with ACME_TOKEN
    await proxy.client.get("/acme/a")
    errors = await proxy.app.reload(config_of([acme_route(upstream, token={"env": "T2"})]))
    assert errors == []
    await proxy.client.get("/acme/b")
    assert [subject(r.header("Authorization")) for r in upstream.requests] == [
        "fake-api-key",
        "two",
    ]


async def test_unchanged_routes_keep_their_tokens(
    make_proxy: ProxyFactory, upstream: Upstream, exec_state: Path
) -> None:
    kept = acme_route(upstream, prefix="/kept", token=exec_source(exec_state))
    proxy = await make_proxy([acme_route(upstream), kept], env={"T1": T1})
    assert (exec_state / "count").read_text() == "1"
    new_route = acme_route(upstream, prefix="/new", token={"env": "T1"})
    assert await proxy.app.reload(config_of([acme_route(upstream), kept, new_route])) == []
    assert (exec_state / "count").read_text() == "1"  # not re-run: its token was kept
    assert (await proxy.client.get("/kept/x")).status == 200
    assert (await proxy.client.get("/new/x")).status == 200
    assert subject(upstream.requests[0].header("Authorization")) == "exec-1"


async def test_in_flight_requests_finish_on_the_old_routes(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(env={"T1": T1, "T2": T2})
    held = asyncio.create_task(proxy.client.get("/acme/_fake/hold"))
    await asyncio.wait_for(upstream.fake.held.wait(), 30)
    renamed = acme_route(upstream, prefix="/acme2", token={"env": "T2"})
    assert await proxy.app.reload(config_of([renamed])) == []  # /acme is gone now
    assert (await proxy.client.get("/acme/x")).status == 404
    assert (await proxy.client.get("/acme2/x")).status == 200
    upstream.fake.release.set()
    response = await held
    assert response.status == 200 and await response.json() == {"held": True}
    assert subject(upstream.requests[-1].header("Authorization")) == "fake-api-key"


async def test_invalid_reload_keeps_the_running_config(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    caplog.set_level(logging.INFO, "amperity_proxy")
    broken = acme_route(upstream, token={"env": "NOT_SET_ANYWHERE"})
    errors = await proxy.app.reload(config_of([broken]))
    assert errors == ["route acme: environment variable NOT_SET_ANYWHERE is not set"]
    assert (await proxy.client.get("/acme/x")).status == 200
    assert subject(upstream.requests[0].header("Authorization")) == "fake-api-key"
    text = await proxy.metrics_text()
    assert metric(text, "amperity_proxy_config_last_reload_successful") == 0
    before = metric(text, "amperity_proxy_config_last_reload_success_timestamp_seconds")
    assert any("config reload rejected" in r.getMessage() for r in caplog.records)
    assert await proxy.app.reload(config_of([acme_route(upstream)])) == []
    text = await proxy.metrics_text()
    assert metric(text, "amperity_proxy_config_last_reload_successful") == 1
    assert metric(text, "amperity_proxy_config_last_reload_success_timestamp_seconds") >= before


async def test_listener_changes_need_a_restart(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    caplog.set_level(logging.WARNING, "amperity_proxy")
    new = config_of(
        [acme_route(upstream)],
        listen={"host": "127.0.0.1", "port": 9999, "allowed_hosts": ["x.internal"]},
    )
    assert await proxy.app.reload(new) == []
    assert proxy.app.config.listen.port == proxy.config.listen.port  # kept as it runs
    assert proxy.app.config.listen.allowed_hosts == ("x.internal",)  # access settings apply
    assert any(
        "listen address" in r.getMessage() and "needs a restart" in r.getMessage()
        for r in caplog.records
    )
    request = {"Host": "x.internal:1234"}
    assert (await proxy.client.get("/acme/x", headers=request)).status == 200


async def _admin_reload(proxy: Proxy) -> tuple[int, dict[str, Any]]:
    response = await proxy.admin.post("/-/reload", json={})
    return response.status, await response.json()


async def test_reload_endpoint_is_off_by_default(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    status, body = await _admin_reload(proxy)
    assert status == 403 and "admin.enable_reload" in body["message"]


async def test_reload_endpoint_reads_the_config_again(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"admin": {"enable_reload": True}}, env={"T2": T2})
    configs: list[Config | ConfigError] = [
        ConfigError(["routes[0].tenant: expected a DNS-label-like tenant id"], "c.yaml"),
        config_of([acme_route(upstream, token={"env": "T2"})], admin={"enable_reload": True}),
    ]

    def loader() -> Config:
        item = configs.pop(0)
        if isinstance(item, ConfigError):
            raise item
        return item

    proxy.app.config_loader = loader
    status, body = await _admin_reload(proxy)
    assert (status, body["errors"]) == (
        400,
        ["routes[0].tenant: expected a DNS-label-like tenant id"],
    )
    status, body = await _admin_reload(proxy)
    assert status == 200
    await proxy.client.get("/acme/x")
    assert subject(upstream.requests[0].header("Authorization")) == "two"


async def test_sighup_reloads_while_requests_are_in_flight(tmp_path: Path, tls: FakeTLS) -> None:
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)

    def route(prefix: str, var: str) -> dict[str, Any]:
        return tls_route(port, tmp_path / "ca.pem", prefix=prefix, token={"env": var})

    config_path = tmp_path / "config.yaml"

    def write(routes: list[dict[str, Any]]) -> dict[str, Any]:
        config = {"listen": {"port": 0}, "admin": {"port": 0}, "routes": routes}
        config_path.write_text(yaml.safe_dump(config))
        return config

    process = await spawn_proxy(tmp_path, write([route("/acme", "T1")]), {"T1": T1, "T2": T2})
    proc = process.proc
    until = process.log_until
    try:
        base = f"http://{process.proxy}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            held = asyncio.create_task(session.get(f"{base}/acme/_fake/hold"))
            await asyncio.wait_for(fake.held.wait(), 30)

            write([route("/acme", "T2"), route("/beta", "T1")])
            proc.send_signal(signal.SIGHUP)
            await until(lambda r: str(r.get("message", "")).startswith("config reloaded"))
            assert (await session.get(f"{base}/beta/b")).status == 200
            assert (await session.get(f"{base}/acme/a")).status == 200

            config_path.write_text("routes: [{prefix: nope}]\n")  # invalid
            proc.send_signal(signal.SIGHUP)
            rejected = await until(lambda r: "config reload rejected" in str(r.get("message", "")))
            assert "routes[0].prefix: must start with '/'" in rejected["message"]
            assert (await session.get(f"{base}/acme/y")).status == 200  # still the last good one

            fake.release.set()
            response = await held
            assert response.status == 200  # the in-flight request never failed
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await process.stop()
        await runner.cleanup()
    by_path = {r.raw_path: subject(r.header("Authorization")) for r in fake.requests}
    assert by_path == {"/api/_fake/hold": "one", "/api/b": "one", "/api/a": "two", "/api/y": "two"}
    assert all(r.status == 200 for r in fake.requests)


def routes_in(text: str) -> set[tuple[str, str]]:
    """(route, tenant) of every per-route request series in a /metrics text."""
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "route" in sample.labels and "tenant" in sample.labels:
                found.add((sample.labels["route"], sample.labels["tenant"]))
    return found


async def test_a_route_a_reload_removes_leaves_metrics(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Its series (route_info = 1 included) used to stay until a restart, as if it still ran;
    a route whose tenant changed kept its old tenant's series beside the new."""
    gone = acme_route(upstream, prefix="/gone")
    moved = acme_route(upstream, prefix="/moved")
    proxy = await make_proxy([acme_route(upstream), gone, moved])
    for prefix in ("/acme", "/gone", "/moved"):
        assert (await proxy.client.get(f"{prefix}/x")).status == 200
    assert routes_in(await proxy.metrics_text()) == {
        ("acme", "acme"),
        ("gone", "acme"),
        ("moved", "acme"),
    }
    moved_to = acme_route(upstream, prefix="/moved", tenant="other")
    assert await proxy.app.reload(config_of([acme_route(upstream), moved_to])) == []
    text = await proxy.metrics_text()
    assert routes_in(text) == {("acme", "acme"), ("moved", "other")}
    assert 'route="gone"' not in text
    # The kept route's counts carry on.
    assert (
        metric(
            text, 'amperity_proxy_upstream_responses_total{code="200",route="acme",tenant="acme"}'
        )
        == 1
    )
    assert (await proxy.client.get("/acme/y")).status == 200
    text = await proxy.metrics_text()
    assert (
        metric(
            text, 'amperity_proxy_upstream_responses_total{code="200",route="acme",tenant="acme"}'
        )
        == 2
    )


async def test_a_rejected_reload_leaves_no_series_for_the_routes_it_prepared(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    broken = acme_route(upstream, prefix="/new", token={"env": "NOT_SET_ANYWHERE"})
    errors = await proxy.app.reload(config_of([acme_route(upstream), broken]))
    assert errors != []
    text = await proxy.metrics_text()
    assert routes_in(text) == {("acme", "acme")}
    assert 'route="new"' not in text


async def test_a_reload_applies_the_upstream_connections_and_their_shares(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """upstream_connections 100 -> 2 on reload: the running proxy behaves by 2 (route a's
    share is then 1), without a restart; the counts of what is held survive the swap."""
    routes = [
        acme_route(upstream, prefix=p, timeouts={"connect": 3, "read": 30}) for p in ("/a", "/b")
    ]
    proxy = await make_proxy(routes, extra={"limits": {"upstream_queue_wait": 0.5}})
    limits = {"upstream_connections": 2, "upstream_queue_wait": 0.5}
    assert await proxy.app.reload(config_of(routes, limits=limits)) == []
    stop = asyncio.Event()
    uploads = [asyncio.create_task(_trickle(proxy.port, "/a/upload", stop)) for _ in range(2)]
    try:
        done, _ = await asyncio.wait(uploads, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert [u.result()[:13] for u in done] == [b"HTTP/1.1 503 "]
        assert (await proxy.client.get("/b/segments")).status == 200  # the reserve: route b
    finally:
        stop.set()
        await asyncio.gather(*uploads, return_exceptions=True)


async def test_a_reload_applies_the_connection_cap_and_header_timeout(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    limits = {"max_connections": 2, "header_timeout": 1}
    assert await proxy.app.reload(config_of([acme_route(upstream)], limits=limits)) == []
    held = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
    try:
        third = await asyncio.wait_for(held[2][0].read(), 5)  # over the new cap: refused
        assert b" 503 " in third.split(b"\r\n", 1)[0] and b"max_connections: 2" in third
        # The new header deadline (1 s, not 30): the silent ones are closed.
        assert await asyncio.wait_for(held[0][0].read(), 5) == b""
    finally:
        for _, writer in held:
            writer.close()


async def test_a_reload_of_a_restart_only_setting_says_so_until_a_restart(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"admin": {"enable_reload": True}})
    changed = config_of([acme_route(upstream)], shutdown_timeout=3, admin={"enable_reload": True})
    proxy.app.config_loader = lambda: changed
    response = await proxy.admin.post("/-/reload", headers={"Content-Type": "application/json"})
    body = await response.json()
    assert response.status == 200 and body["restart_needed"] == ["shutdown_timeout"]
    assert "apply only after a restart: shutdown_timeout" in body["message"]
    assert metric(await proxy.metrics_text(), "amperity_proxy_config_restart_pending") == 1
    status = await (await proxy.admin.get("/status.json")).json()
    assert status["reload"]["restart_needed"] == ["shutdown_timeout"]
    assert (await proxy.client.get("/acme/segments")).status == 200  # still serving
