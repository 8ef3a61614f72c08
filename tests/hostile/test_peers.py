"""Peers the proxy must not believe: a Redis whose replies its script can't give, and
clients whose requests Amperity refuses for what they asked (not for the token). Each case
failed on the code before the fix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import ProxyFactory, Upstream, acme_route, metric
from tests.hostile.conftest import LEDGER
from tests.support.resp import ScriptedRedis


async def status(proxy: Any) -> dict[str, Any]:
    response = await proxy.admin.get("/status.json")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


LIES = {
    "a simple string": b"+later\r\n",
    "a bulk string": b"$4\r\n1000\r\n",
    "an array": b"*1\r\n:0\r\n",
    "wait an hour": b":3600000000\r\n",
    "refused within max_wait": b":-5\r\n",
}


@pytest.mark.parametrize("lie", list(LIES))
async def test_a_reply_the_script_cannot_give_is_a_redis_that_is_down(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture, lie: str
) -> None:
    """Redis is a peer, not a part of the proxy: a reply of the wrong type, or a wait beyond
    `max_wait`, paces locally (never a 500, never a sleep past max_wait), counted and logged
    once."""
    liar = ScriptedRedis(LIES[lie])
    await liar.start()
    try:
        limit = {"requests_per_second": 100, "burst": 100, "max_wait": 2}
        proxy = await make_proxy(
            [acme_route(upstream, rate_limit=limit)],
            extra={"shared": {"redis": {"url": liar.url, "timeout": 1}}},
        )
        for _ in range(2):
            response = await asyncio.wait_for(proxy.client.get("/acme/segments"), 4)
            assert response.status == 200
        text = await proxy.metrics_text()
    finally:
        await liar.close()
    assert liar.calls >= 1
    assert metric(text, 'amperity_proxy_shared_decisions_total{outcome="bad_reply"}') >= 1
    said = [r for r in caplog.records if "a reply its script can't give" in r.getMessage()]
    assert len(said) == 1
    LEDGER.tried("hostile Redis", 2)


async def test_403s_any_client_can_cause_never_make_a_healthy_route_look_refused(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Twelve requests for what the key's role may not read (Amperity: 403) among a few that
    work: the token is fine, so the route stays ok on the page and in /readyz; the 403s are
    counted and the last one shown."""
    proxy = await make_proxy()
    assert (await proxy.client.get("/acme/segments")).status == 200
    for _ in range(12):
        assert (await proxy.client.get("/acme/_fake/status/403?message=no")).status == 403
    doc = await status(proxy)
    [acme] = doc["routes"]
    assert acme["state"] == "expiring"  # the test token's one hour, not "refused"
    assert acme["refusals"]["forbidden"] == 12 and acme["refusals"]["recent"] == 0
    assert acme["refusals"]["last"]["status"] == 403
    ready = await (await proxy.admin.get("/readyz")).json()
    assert [r["state"] for r in ready["routes"]] == ["ok"]
    LEDGER.tried("route health", 12)
