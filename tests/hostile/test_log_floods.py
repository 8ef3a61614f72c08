"""Log floods: a broken token answers 401 to every request, an upstream keeps failing. The
first warning of a kind per route is logged in full, the rest are counted and summarised per
interval, so the log stays readable; the metrics still count every one."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.observe.logs import flush_logs
from tests.conftest import ProxyFactory, Upstream, acme_route, metric
from tests.hostile.conftest import LEDGER
from tests.support.clocks import FakeClock
from tests.support.net import refused_port


async def test_repeated_401_warnings_are_summarised_and_counters_stay_exact(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    proxy = await make_proxy(clock=clock)
    credential = proxy.store.credential("acme")
    assert credential is not None
    upstream.fake.revoked.add(credential.token)  # every answer is a 401 from now on
    caplog.set_level(logging.WARNING)
    responses = await asyncio.gather(*(proxy.client.get(f"/acme/x{i}") for i in range(60)))
    assert [r.status for r in responses] == [401] * 60
    warnings = [r for r in caplog.records if "Amperity answered 401" in r.getMessage()]
    assert len(warnings) == 1  # the first in full; 59 counted
    # A minute later: the next report carries the count.
    clock.now += 61
    flush_logs()
    summaries = [r for r in caplog.records if "summarised" in r.getMessage()]
    LEDGER.tried("log floods")
    assert len(summaries) == 1 and summaries[0].getMessage().startswith("59 more 401s")
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_upstream_unauthorized_total{cause="rejected"') == 60
    assert len(upstream.requests) == 60


async def test_repeated_upstream_errors_are_summarised(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    with refused_port() as port:  # nothing listens here: every exchange is `connect`
        clock = FakeClock()
        proxy = await make_proxy(
            [acme_route(upstream, base_url=f"https://acme.amperity.com:{port}/api")], clock=clock
        )
        caplog.set_level(logging.WARNING)
        for i in range(20):
            assert (await proxy.client.get(f"/acme/x{i}")).status == 502
        lines = [r for r in caplog.records if "upstream connect error" in r.getMessage()]
        LEDGER.tried("log floods")
        assert len(lines) == 1
        clock.now += 61
        assert (await proxy.client.get("/acme/again")).status == 502
        lines = [r for r in caplog.records if "upstream connect error" in r.getMessage()]
        assert len(lines) == 2 and lines[1].fields["repeated"] == 19  # type: ignore[attr-defined]
        text = await proxy.metrics_text()
        assert metric(text, 'amperity_proxy_upstream_errors_total{reason="connect"') == 21
