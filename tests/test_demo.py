"""`make demo` runs end to end and shows an accepted, credentialed request."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.cli.demo import demo


async def test_demo_shows_what_the_upstream_received(capsys: pytest.CaptureFixture[str]) -> None:
    await demo()
    out = capsys.readouterr().out
    assert "GET /api/segments?limit=2" in out
    assert "Amperity-Tenant: acme" in out
    assert "Authorization: Bearer <token, fingerprint " in out
    assert "upstream verdict: 200 (accepted)" in out
    assert "eyJ" not in out  # the demo never prints the token itself
    # all three of Amperity's APIs, each with its own headers, accepted by the fake
    assert "GET /api/indexes/demo/profiles/42" in out and "amperity-tenant: acme" in out
    assert "api-version: 2025-07-31" in out
    assert "POST /stream/v0/data/demo-stream" in out and "X-Amperity-Tenant: acme" in out
    assert out.count("upstream verdict: 200 (accepted)") == 3


async def test_the_demo_sends_what_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """It printed `$ curl ...` but sent with aiohttp; now the User-Agent upstream says which."""
    await demo()
    out = capsys.readouterr().out
    if shutil.which("curl"):
        assert "$ curl -s 'http://127.0.0.1:" in out
        assert "User-Agent: curl/" in out
    else:
        assert "(sent with aiohttp: curl is not installed)" in out
        assert "User-Agent: Python/" in out
    assert "make demo-serve" in out  # how to keep it running


def test_the_demo_token_draws_no_expiry_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # before: "token expires within 1 hour" came first


async def test_the_fake_runs_on_its_own_and_prints_what_to_use(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.fake_amperity", "--port", "0", "--ca-file", str(ca),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        lines = [(await asyncio.wait_for(process.stdout.readline(), 30)).decode() for _ in range(8)]
        printed = "".join(lines)
        url = re.search(r"(https://localhost:\d+/api)", printed)
        token = re.search(r"AMPERITY_TOKEN=(\S+)", printed)
        assert url and token and f"AMPERITY_CA_FILE={ca}" in printed, printed
        # what it printed works together: its URL, trusting its CA bundle, with its token
        trust = ssl.create_default_context(cafile=str(ca))
        headers = {
            "Authorization": f"Bearer {token.group(1)}",
            "Amperity-Tenant": "acme",
            "api-version": "2024-04-01",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url.group(1)}/segments", headers=headers, ssl=trust) as answer,
        ):
            assert answer.status == 200
    finally:
        process.terminate()
        await process.wait()
