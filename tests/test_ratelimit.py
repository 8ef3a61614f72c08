"""Pacing and back-off, on a fake clock: the upstream's arrival times prove the pacing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.conftest import Proxy, ProxyFactory, Upstream, acme_route, metric
from tests.support.clocks import FakeTime
from tests.support.waiting import until


def paced(upstream: Upstream, **limit: Any) -> dict[str, Any]:
    return acme_route(
        upstream, rate_limit={"requests_per_second": 10, "burst": 10, "max_wait": 30, **limit}
    )


async def make(
    make_proxy: ProxyFactory, upstream: Upstream, route: dict[str, Any], ft: FakeTime
) -> Proxy:
    upstream.fake.clock = ft.clock
    return await make_proxy([route], clock=ft.clock, extra={}, sleep=ft.sleep, rng=random.Random(7))


async def test_a_burst_of_50_is_paced_at_10_per_second(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    ft = FakeTime()
    proxy = await make(make_proxy, upstream, paced(upstream), ft)
    tasks = [asyncio.create_task(proxy.client.get(f"/acme/segments/{1000 + i}")) for i in range(50)]
    await asyncio.wait_for(upstream.fake.wait_for_requests(10), 30)  # the burst passes at once
    await until(lambda: proxy.app.queued() == 40, "40 queued")
    for n in range(11, 51):
        await ft.advance()
        try:
            await asyncio.wait_for(upstream.fake.wait_for_requests(n), 5)
        except TimeoutError:
            raise AssertionError(
                f"n={n} got={len(upstream.requests)} queued={proxy.app.queued()} sleepers={ft._sleepers} now={ft.now - ft.start}"
            ) from None
    assert [r.status for r in await asyncio.gather(*tasks)] == [200] * 50
    arrivals = sorted(round(r.received_at - ft.start, 6) for r in upstream.requests)
    assert arrivals[:10] == [0.0] * 10
    assert arrivals[10:] == [round(0.1 * k, 6) for k in range(1, 41)]
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_ratelimit_wait_seconds_count{route="acme"}') == 50


async def test_ids_share_an_endpoint_bucket_and_endpoints_do_not(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    ft = FakeTime()
    proxy = await make(make_proxy, upstream, paced(upstream, requests_per_second=1, burst=1), ft)
    assert (await proxy.client.get("/acme/segments/123")).status == 200
    same_endpoint = asyncio.create_task(proxy.client.get("/acme/segments/456"))
    await until(lambda: proxy.app.queued() == 1, "the second id queued")
    assert (await proxy.client.get("/acme/campaigns")).status == 200  # its own bucket
    assert (
        await proxy.client.post("/acme/segments/789", data=b"{}")
    ).status == 200  # POST: its own
    assert not same_endpoint.done()
    await ft.advance()
    assert (await same_endpoint).status == 200
    assert [r.raw_path for r in upstream.requests] == [
        "/api/segments/123",
        "/api/campaigns",
        "/api/segments/789",
        "/api/segments/456",
    ]


async def test_route_key_is_one_bucket_for_the_route(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    ft = FakeTime()
    proxy = await make(
        make_proxy, upstream, paced(upstream, requests_per_second=1, burst=1, key="route"), ft
    )
    assert (await proxy.client.get("/acme/segments")).status == 200
    other = asyncio.create_task(proxy.client.get("/acme/campaigns"))
    await until(lambda: proxy.app.queued() == 1, "queued behind the route's bucket")
    await ft.advance()
    assert (await other).status == 200


async def test_a_wait_beyond_max_wait_gets_429_with_retry_after(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    ft = FakeTime()
    proxy = await make(
        make_proxy, upstream, paced(upstream, requests_per_second=1, burst=1, max_wait=2), ft
    )
    assert (await proxy.client.get("/acme/x")).status == 200
    queued = [asyncio.create_task(proxy.client.get("/acme/x")) for _ in range(2)]
    await until(lambda: proxy.app.queued() == 2, "two queued (1 s and 2 s)")
    refused = await proxy.client.get("/acme/x")  # it would wait 3 s
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "3"
    assert "over its rate limit" in (await refused.json())["message"]
    assert len(upstream.requests) == 1
    for _ in range(2):
        await ft.advance()
    assert [r.status for r in await asyncio.gather(*queued)] == [200, 200]
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_ratelimit_rejected_total{route="acme"}') == 1


async def test_a_disconnected_client_gives_its_place_to_the_next(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    ft = FakeTime()
    route = paced(upstream, requests_per_second=1, burst=1, key="route")
    proxy = await make(make_proxy, upstream, route, ft)
    assert (await proxy.client.get("/acme/x")).status == 200
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /acme/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await until(lambda: proxy.app.queued() == 1, "the first client queued")
    next_in_line = asyncio.create_task(proxy.client.get("/acme/y"))
    await until(lambda: proxy.app.queued() == 2, "the second client queued")
    writer.close()  # the first client gives up
    await until(lambda: proxy.app.queued() == 1, "its place freed")
    await ft.advance()  # one slot later, the second client goes — not two
    assert (await next_in_line).status == 200
    assert [r.raw_path for r in upstream.requests] == ["/api/x", "/api/y"]


RETRY = {"on": [429, 503], "attempts": 3, "base": 0.5, "max": 8}


async def test_back_off_with_full_jitter(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    ft = FakeTime(auto=True)
    proxy = await make(make_proxy, upstream, acme_route(upstream, retry=RETRY), ft)
    response = await proxy.client.get("/acme/_fake/flaky/2?status=429")
    assert response.status == 200
    assert [r.status for r in upstream.requests] == [429, 429, 200]
    rng = random.Random(7)
    assert ft.slept == [rng.uniform(0, 0.5), rng.uniform(0, 1.0)]
    text = await proxy.metrics_text()
    assert (
        metric(text, 'amperity_proxy_upstream_retries_total{reason="status_429",route="acme"') == 2
    )


async def test_retry_after_is_honoured(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    ft = FakeTime(auto=True)
    proxy = await make(make_proxy, upstream, acme_route(upstream, retry=RETRY), ft)
    response = await proxy.client.get("/acme/_fake/flaky/1?status=503&after=2")
    assert response.status == 200
    assert ft.slept == [2.0]
    huge = await proxy.client.get("/acme/_fake/flaky/2?status=429&after=3600")
    assert huge.status == 200
    assert ft.slept[1:] == [8, 8]  # capped at retry.max


async def test_the_last_answer_goes_back_unchanged_when_attempts_run_out(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    ft = FakeTime(auto=True)
    proxy = await make(make_proxy, upstream, acme_route(upstream, retry=RETRY), ft)
    response = await proxy.client.get("/acme/_fake/flaky/5?status=503&after=1")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_post_and_patch_are_never_retried(
    make_proxy: ProxyFactory, upstream: Upstream, method: str
) -> None:
    ft = FakeTime(auto=True)
    proxy = await make(make_proxy, upstream, acme_route(upstream, retry=RETRY), ft)
    response = await proxy.client.request(method, "/acme/_fake/flaky/1?status=429", data=b"{}")
    assert response.status == 429
    assert len(upstream.requests) == 1 and ft.slept == []


def test_rate_limit_and_retry_config_errors() -> None:
    from proxy.config import ConfigError, parse_config

    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "routes": [
                    {**route, "rate_limit": {"requests_per_second": 0, "key": "user"}},
                    {**route, "prefix": "/b", "retry": {"on": [200], "attempts": 50}},
                ]
            },
            env={},
        )
    assert info.value.errors == [
        "routes[0].rate_limit.requests_per_second: must be greater than 0, got 0",
        "routes[0].rate_limit.key: expected endpoint, tenant or route, got 'user'",
        "routes[1].retry.on: expected a list of 4xx/5xx status codes, got [200]",
        "routes[1].retry.attempts: must be between 1 and 10, got 50",
    ]


async def test_bucket_count_is_bounded_and_each_new_key_costs_constant_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many distinct endpoints at a low rate: every bucket stays busy (not idle) for minutes.
    Each new key must cost a bounded number of bucket checks, not one per live bucket (the old
    pruning rebuilt the whole table per request), and the table must stay bounded."""
    from proxy.config import parse_config
    from proxy.request import pacing

    route = {
        "prefix": "/a",
        "tenant": "a",
        "token": {"env": "T"},
        "rate_limit": {"requests_per_second": 0.01, "burst": 2, "max_wait": 1},
    }
    config = parse_config({"routes": [route]}, env={})
    fake = FakeTime()
    pacer = pacing.Pacer(fake.clock, fake.sleep)
    checks = 0
    idle = pacing.Bucket.idle

    def counted(self: pacing.Bucket) -> bool:
        nonlocal checks
        checks += 1
        return idle.fget(self)  # type: ignore[no-any-return,attr-defined]

    monkeypatch.setattr(pacing.Bucket, "idle", property(counted))
    keys = 3 * pacing.MAX_BUCKETS
    for i in range(keys):
        await pacer.pace(config.routes[0], "GET", f"/segment-{i}x/profiles")
    assert pacer.buckets <= pacing.MAX_BUCKETS
    assert checks <= 20 * keys, f"{checks} bucket checks for {keys} new keys"
