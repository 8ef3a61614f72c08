"""Token lifecycle: several tokens, quarantine, exec and client-credentials sources, 401
recovery with one replay, the expired-token policy, expiry warnings and token metrics."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from proxy.testing import FAKE_CLIENT_ID, FAKE_CLIENT_SECRET, TEST_SECRET, make_token
from tests.conftest import ProxyFactory, Upstream, acme_route, exec_source, metric, subject
from tests.support.clocks import FakeClock

# --- several tokens per route -----------------------------------------------------------


async def test_the_token_with_the_latest_expiry_is_used(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    short = make_token("acme", ttl=3600, subject="short")
    long = make_token("acme", ttl=7200, subject="long")
    tokens = [{"env": "OPAQUE"}, {"env": "SHORT"}, {"env": "LONG"}]
    proxy = await make_proxy(
        [acme_route(upstream, tokens=tokens)],
        env={"OPAQUE": "opaque-token", "SHORT": short, "LONG": long},
    )
    await proxy.client.get("/acme/x")
    assert subject(upstream.requests[0].header("Authorization")) == "long"


async def test_an_added_token_file_takes_over_without_downtime(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(make_token("acme", ttl=86400, subject="old"))
    tokens = [{"file": str(old)}, {"file": str(new)}]  # `new` does not exist yet
    proxy = await make_proxy([acme_route(upstream, tokens=tokens)])
    await proxy.client.get("/acme/x")
    new.write_text(make_token("acme", ttl=2 * 86400, subject="new"))
    await proxy.store.reload_files()
    await proxy.client.get("/acme/y")
    old.unlink()  # the operator removes the old one later
    await proxy.store.reload_files()
    await proxy.client.get("/acme/z")
    assert [subject(r.header("Authorization")) for r in upstream.requests] == ["old", "new", "new"]


async def test_a_rejected_token_is_quarantined_and_the_request_replayed(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "amperity_proxy.access")
    first_file = tmp_path / "first"
    first = make_token("acme", ttl=7200, subject="first")
    first_file.write_text(first)
    second = make_token("acme", ttl=3600, subject="second")
    tokens = [{"file": str(first_file)}, {"env": "SECOND"}]
    proxy = await make_proxy([acme_route(upstream, tokens=tokens)], env={"SECOND": second})
    upstream.fake.revoked.add(first)  # rotated in the UI: valid-looking but refused

    response = await proxy.client.get("/acme/x")
    assert response.status == 200
    assert [(r.status, subject(r.header("Authorization"))) for r in upstream.requests] == [
        (401, "first"),
        (200, "second"),
    ]
    access = [getattr(r, "fields", {}) for r in caplog.records if r.name == "amperity_proxy.access"]
    assert [(f["status"], f["retried"]) for f in access] == [(200, True)]
    await proxy.client.get("/acme/y")  # straight to the second token: the first is set aside
    assert subject(upstream.requests[2].header("Authorization")) == "second"
    text = await proxy.metrics_text()
    assert (
        metric(text, 'amperity_proxy_upstream_unauthorized_total{cause="rejected",route="acme"')
        == 1
    )
    assert (
        metric(text, 'amperity_proxy_upstream_retries_total{reason="unauthorized",route="acme"')
        == 1
    )
    status = proxy.store.status("acme")
    assert [t.state(time.time(), 0) for t in status.tokens] == ["quarantined", "ok"]

    first_file.write_text(make_token("acme", ttl=9000, subject="first-renewed"))
    await proxy.store.reload_files()  # its source changed: back in the running, and latest
    await proxy.client.get("/acme/z")
    assert subject(upstream.requests[3].header("Authorization")) == "first-renewed"


@pytest.mark.parametrize(
    ("method", "size", "expected_requests"),
    [("PUT", 1024, 2), ("DELETE", 0, 2), ("POST", 10, 1), ("PATCH", 10, 1), ("PUT", 2048, 1)],
)
async def test_only_replayable_requests_are_retried(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    method: str,
    size: int,
    expected_requests: int,
) -> None:
    first, second = make_token("acme", ttl=7200), make_token("acme", ttl=3600)
    route = acme_route(upstream, tokens=[{"env": "A"}, {"env": "B"}], retry_body_limit=1500)
    proxy = await make_proxy([route], env={"A": first, "B": second})
    upstream.fake.revoked.add(first)
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    response = await proxy.client.request(method, "/acme/items/1", data=body)
    assert response.status == (200 if expected_requests == 2 else 401)
    seen = upstream.requests
    assert len(seen) == expected_requests
    assert all(r.method == method for r in seen)
    assert all(r.body_sha256 == hashlib.sha256(body).hexdigest() for r in seen)
    assert [r.header("Authorization") for r in seen] == [f"Bearer {t}" for t in (first, second)][
        :expected_requests
    ]


async def test_chunked_upload_is_not_replayed(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    first, second = make_token("acme", ttl=7200), make_token("acme", ttl=3600)
    route = acme_route(upstream, tokens=[{"env": "A"}, {"env": "B"}])
    proxy = await make_proxy([route], env={"A": first, "B": second})
    upstream.fake.revoked.add(first)

    async def chunks() -> Any:
        yield b"a" * 10

    assert (await proxy.client.put("/acme/items/1", data=chunks())).status == 401
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("token", "cause"),
    [
        (make_token("acme", issued_at=time.time() - 7200, ttl=3600), "expired"),
        ("REVOKED", "rejected"),
        ("opaque-not-a-jwt", "unknown"),
    ],
)
async def test_401_causes_are_classified(
    make_proxy: ProxyFactory, upstream: Upstream, token: str, cause: str
) -> None:
    if token == "REVOKED":
        token = make_token("acme")
        upstream.fake.revoked.add(token)
    proxy = await make_proxy(env={"ACME_TOKEN": token})
    assert (await proxy.client.get("/acme/x")).status == 401
    assert len(upstream.requests) == 1  # nothing to retry with: the 401 goes back unchanged
    text = await proxy.metrics_text()
    for c in ("expired", "rejected", "unknown"):
        prefix = f'amperity_proxy_upstream_unauthorized_total{{cause="{c}",route="acme"'
        assert metric(text, prefix) == (1 if c == cause else 0)


async def test_expired_token_reject_never_reaches_amperity(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    expired = make_token("acme", issued_at=time.time() - 86400, ttl=3600)
    proxy = await make_proxy(
        [acme_route(upstream, expired_token="reject")], env={"ACME_TOKEN": expired}
    )
    response = await proxy.client.get("/acme/x")
    assert response.status == 401
    message = (await response.json())["message"]
    assert "every token for route acme is expired" in message
    assert "environment variable ACME_TOKEN" in message
    assert "Settings > Security > API keys" in message
    assert upstream.requests == []
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_rejected_requests_total{reason="token_expired"}') == 1
    assert metric(text, 'amperity_proxy_token_valid{route="acme"') == 0


async def test_expired_token_forward_is_the_default(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    expired = make_token("acme", issued_at=time.time() - 86400, ttl=3600)
    proxy = await make_proxy(env={"ACME_TOKEN": expired})
    assert (await proxy.client.get("/acme/x")).status == 401  # Amperity's own answer
    assert len(upstream.requests) == 1


# --- exec -------------------------------------------------------------------------------


async def test_exec_token_is_refreshed_ahead_of_expiry(
    make_proxy: ProxyFactory, upstream: Upstream, exec_state: Path
) -> None:
    clock = FakeClock()
    proxy = await make_proxy([acme_route(upstream, token=exec_source(exec_state))], clock=clock)
    await proxy.client.get("/acme/x")
    await proxy.store.tick()  # not due yet: refresh_before = max(60 s, 10% of 1 h) = 360 s
    assert (exec_state / "count").read_text() == "1"
    clock.now += 3600 - 300
    await proxy.store.tick()
    assert (exec_state / "count").read_text() == "2"
    await proxy.client.get("/acme/y")
    assert [subject(r.header("Authorization")) for r in upstream.requests] == ["exec-1", "exec-2"]
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_token_refreshes_total{result="success",route="acme"') == 2


async def test_exec_is_rerun_after_a_401(
    make_proxy: ProxyFactory, upstream: Upstream, exec_state: Path
) -> None:
    proxy = await make_proxy([acme_route(upstream, token=exec_source(exec_state))])
    credential = proxy.store.credential("acme")
    assert credential is not None
    upstream.fake.revoked.add(credential.token)
    response = await proxy.client.get("/acme/x")
    assert response.status == 200
    assert [(r.status, subject(r.header("Authorization"))) for r in upstream.requests] == [
        (401, "exec-1"),
        (200, "exec-2"),
    ]


async def test_failing_exec_keeps_the_last_good_token_and_backs_off(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    exec_state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    proxy = await make_proxy([acme_route(upstream, token=exec_source(exec_state))], clock=clock)
    caplog.set_level(logging.INFO)
    (exec_state / "mode").write_text("fail")
    clock.now += 3600 - 300
    await proxy.store.tick()
    await proxy.store.tick()  # backing off: not run again at once
    assert (exec_state / "count").read_text() == "2"
    clock.now += 1
    await proxy.store.tick()
    assert (exec_state / "count").read_text() == "3"
    await proxy.client.get("/acme/x")
    assert subject(upstream.requests[0].header("Authorization")) == "exec-1"
    text = await proxy.metrics_text()
    assert (
        metric(text, 'amperity_proxy_token_load_errors_total{reason="exec_failed",route="acme"}')
        == 2
    )
    assert metric(text, 'amperity_proxy_token_refreshes_total{result="failure",route="acme"') == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "token helper run 2" in logged  # stderr is logged
    assert "STDOUT-OF-A-FAILED-RUN-NEVER-LOGGED" not in logged  # stdout never is
    assert "exited with status 3" in logged


async def test_exec_timeout_is_an_error(exec_state: Path) -> None:
    from tests.test_tokens import store_for

    (exec_state / "mode").write_text("sleep")
    source = exec_source(exec_state, timeout=0.3)
    store = store_for([{"prefix": "/a", "tenant": "acme", "token": source}], {})
    errors = await store.load_initial()
    assert errors == [f"route a: {sys.executable} did not finish within 0.3s"]


# --- client credentials ------------------------------------------------------------------


def cc_route(upstream: Upstream, **extra: Any) -> dict[str, Any]:
    source = {
        "client_credentials": {"client_id": FAKE_CLIENT_ID, "client_secret": {"env": "CC_SECRET"}}
    }
    return acme_route(upstream, token=source, **extra)


CC_ENV = {"CC_SECRET": FAKE_CLIENT_SECRET}


async def test_client_credentials_mint_at_startup(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy([cc_route(upstream)], env=CC_ENV)
    assert upstream.fake.mints == [{"client_id": FAKE_CLIENT_ID, "tenant": "acme", "status": "200"}]
    assert (await proxy.client.get("/acme/x")).status == 200
    assert subject(upstream.requests[0].header("Authorization")) == FAKE_CLIENT_ID


async def test_client_credentials_wrong_secret_fails_startup(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    from proxy.config import StartupError

    with pytest.raises(StartupError) as info:
        await make_proxy([cc_route(upstream)], env={"CC_SECRET": "wrong"})
    assert "answered 401; check client_id, client_secret and tenant" in info.value.lines[0]
    assert "wrong" not in info.value.lines[0]


async def test_client_credentials_refresh_ahead_of_expiry_with_back_off(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    upstream.fake.token_ttl = 1000
    clock = FakeClock()
    proxy = await make_proxy([cc_route(upstream)], env=CC_ENV, clock=clock)
    clock.now += 700  # before 80% (± 5%) of expires_in
    await proxy.store.tick()
    assert len(upstream.fake.mints) == 1
    clock.now += 160  # past 85%
    upstream.fake.token_failures = 2
    await proxy.store.tick()
    assert [m["status"] for m in upstream.fake.mints] == ["200", "503"]
    await proxy.store.tick()  # back-off: 1 s
    assert len(upstream.fake.mints) == 2
    clock.now += 1
    await proxy.store.tick()
    assert [m["status"] for m in upstream.fake.mints] == ["200", "503", "503"]
    clock.now += 1
    await proxy.store.tick()  # back-off: now 2 s
    assert len(upstream.fake.mints) == 3
    assert (await proxy.client.get("/acme/x")).status == 200  # the old token is kept meanwhile
    clock.now += 1
    await proxy.store.tick()
    assert [m["status"] for m in upstream.fake.mints] == ["200", "503", "503", "200"]


async def test_concurrent_401s_share_one_mint(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy([cc_route(upstream)], env=CC_ENV)
    credential = proxy.store.credential("acme")
    assert credential is not None
    upstream.fake.revoked.add(credential.token)
    upstream.fake.mint_gate = asyncio.Event()
    requests = [asyncio.create_task(proxy.client.get(f"/acme/{i}")) for i in range(5)]
    await asyncio.wait_for(upstream.fake.wait_for_requests(5), 30)
    assert [r.status for r in upstream.requests] == [401] * 5
    upstream.fake.mint_gate.set()
    statuses = [r.status for r in await asyncio.gather(*requests)]
    assert statuses == [200] * 5
    assert len(upstream.fake.mints) == 2  # start-up, and one for all five 401s


async def test_client_secret_never_appears(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    from proxy.cli.diagnose import token_info

    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy([cc_route(upstream)], env=CC_ENV)
    upstream.fake.token_failures = 1
    await proxy.store.recover(proxy.store.routes["acme"], proxy.store.credential("acme"))  # type: ignore[arg-type]
    out = io.StringIO()
    await token_info(proxy.config, 7 * 86400, True, out)
    haystack = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    haystack += await proxy.metrics_text() + await (await proxy.admin.get("/readyz")).text()
    haystack += out.getvalue() + repr(proxy.config)
    assert FAKE_CLIENT_SECRET not in haystack
    assert "mint_failed" in haystack or "503" in haystack


# --- warnings and metrics ----------------------------------------------------------------


async def test_expiry_warnings_once_each_at_7_days_1_day_1_hour(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from proxy.config import parse_config
    from proxy.tokens import TokenStore, make_sources

    token = make_token("acme", ttl=10 * 86400)
    clock = FakeClock()
    config = parse_config(
        {"routes": [{"prefix": "/a", "tenant": "acme", "token": {"env": "T"}}]}, env={}
    )
    store = TokenStore(
        config.routes,
        lambda r: make_sources(r, env={"T": token}, session=lambda: None, ssl=None),
        clock=clock,
    )
    caplog.set_level(logging.WARNING, "amperity_proxy.tokens")
    assert await store.load_initial() == []
    steps = [2 * 86400, 1 * 86400, 6 * 86400, 3600, 3600, 20 * 3600, 1800, 1800, 7200]
    for step in steps:
        clock.now += step
        await store.tick()
    messages = [r.getMessage().split(";")[0] for r in caplog.records]
    assert [m.split(" (in ")[0] for m in messages] == [
        "token expires within 7 days",
        "token expires within 1 day",
        "token expires within 1 hour",
        messages[3],
    ]
    assert messages[3].startswith("token expired ")


async def test_token_info_and_valid_metrics(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    token = make_token("acme", ttl=86400)
    proxy = await make_proxy(env={"ACME_TOKEN": token})
    text = await proxy.metrics_text()
    cred = proxy.store.credential("acme")
    assert cred is not None
    info = (
        f'amperity_proxy_token_info{{fingerprint="{cred.fingerprint}",has_expiry="true",'
        f'route="acme",source="env",tenant="acme"}} 1.0'
    )
    assert info in text
    assert metric(text, 'amperity_proxy_token_valid{route="acme"') == 1


async def test_deprecation_headers_are_counted_and_logged_once(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    caplog.set_level(logging.WARNING, "amperity_proxy.proxy")
    for _ in range(3):
        response = await proxy.client.get("/acme/_fake/deprecated")
        assert response.headers["Sunset"] == "Wed, 01 Jul 2026 00:00:00 GMT"
    text = await proxy.metrics_text()
    assert metric(text, 'amperity_proxy_upstream_deprecation_responses_total{route="acme"') == 3
    warnings = [r.getMessage() for r in caplog.records if "deprecation" in r.getMessage()]
    assert len(warnings) == 1
    assert "Sunset: Wed, 01 Jul 2026" in warnings[0]


def test_fake_tokens_decode_with_the_test_secret() -> None:
    claims = json.loads(
        json.dumps(jwt.decode(make_token("acme"), TEST_SECRET, algorithms=["HS256"]))
    )
    assert claims["tenant"] == "acme"


async def test_exec_stderr_never_carries_the_token(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    exec_state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (exec_state / "mode").write_text("chatty")  # the helper echoes its token to stderr
    caplog.set_level(logging.INFO, "amperity_proxy.tokens")
    proxy = await make_proxy([acme_route(upstream, token=exec_source(exec_state))])
    credential = proxy.store.credential("acme")
    assert credential is not None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "issued <redacted>" in logged
    assert credential.token not in logged
