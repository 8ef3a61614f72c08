"""The sidecar lifecycle (issue 19): `shutdown_delay` keeps serving after SIGTERM while the app
beside a classic sidecar finishes, and `POST /quitquitquit` lets a Job's main container stop
its sidecar. Both end in the bounded drain: requests in flight finish, then exit 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from proxy.testing import make_token
from tests.conftest import ProcessUpstream
from tests.support.process import ProxyProcess, spawn_proxy

DELAY, TIMEOUT = 2.0, 3.0
JSON = {"Content-Type": "application/json"}


async def _proxy(tmp_path: Path, upstream: ProcessUpstream, **settings: Any) -> ProxyProcess:
    config: dict[str, Any] = {
        "listen": {"port": 0},
        "admin": {"port": 0, **settings.pop("admin", {})},
        "routes": [upstream.route()],
        **settings,
    }
    return await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})


async def test_shutdown_delay_serves_new_requests_then_drains_within_its_bound(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    fake = process_upstream.fake
    process = await _proxy(
        tmp_path, process_upstream, shutdown_delay=DELAY, shutdown_timeout=TIMEOUT
    )
    try:
        async with aiohttp.ClientSession() as session:
            process.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await process.log_until(lambda r: "shutdown_delay" in str(r.get("message")))
            # during the delay: new requests are still served, readiness already says no
            async with session.get(f"http://{process.proxy}/acme/segments") as response:
                assert response.status == 200
            async with session.get(f"http://{process.admin}/readyz") as ready:
                assert ready.status == 503
        await process.log_until(lambda r: "shutting down" in str(r.get("message")))
        assert time.monotonic() - signalled >= DELAY - 0.1  # the drain waited for the delay
        code = await asyncio.wait_for(process.proc.wait(), 60)
        took = time.monotonic() - signalled
    finally:
        await process.stop()
    assert code == 0
    assert took <= DELAY + TIMEOUT + 1  # the promise the manifests' grace period relies on
    assert [r.raw_path for r in fake.requests] == ["/api/segments"]


async def test_a_second_sigterm_ends_the_delay(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    process = await _proxy(tmp_path, process_upstream, shutdown_delay=600, shutdown_timeout=2)
    try:
        process.proc.send_signal(signal.SIGTERM)
        await process.log_until(lambda r: "shutdown_delay" in str(r.get("message")))
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.proc.wait(), 30) == 0  # not 600 s
    finally:
        await process.stop()


async def test_quitquitquit_lets_a_request_in_flight_finish_then_exits_0(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    fake = process_upstream.fake
    process = await _proxy(
        tmp_path, process_upstream, admin={"enable_quit": True}, shutdown_delay=600
    )
    quit_url = f"http://{process.admin}/quitquitquit"
    try:
        async with aiohttp.ClientSession() as session:
            held = asyncio.ensure_future(session.get(f"http://{process.proxy}/acme/_fake/hold"))
            await asyncio.wait_for(fake.held.wait(), 30)  # the request is in flight upstream
            async with session.post(quit_url, data=b"{}") as wrong:  # no JSON content type
                assert wrong.status == 415
            cross = {"Sec-Fetch-Site": "cross-site", **JSON}
            async with session.post(quit_url, data=b"{}", headers=cross) as refused:
                assert refused.status == 403
            async with session.post(quit_url, data=b"{}", headers=JSON) as answer:
                assert answer.status == 200
            await process.log_until(lambda r: "shutting down" in str(r.get("message")))
            fake.release.set()  # the upstream answers now: the held request still completes
            response = await asyncio.wait_for(held, 30)
            assert response.status == 200
            response.release()
        # no shutdown_delay for /quitquitquit: the app said it is done
        assert await asyncio.wait_for(process.proc.wait(), 30) == 0
    finally:
        await process.stop()


async def test_quitquitquit_is_off_by_default(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    process = await _proxy(tmp_path, process_upstream)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{process.admin}/quitquitquit",
                data=b"{}",
                headers=JSON,
            ) as answer,
        ):
            assert answer.status == 403
            assert "admin.enable_quit: true" in (await answer.json())["message"]
        assert process.proc.returncode is None  # still running
    finally:
        await process.stop()
