"""Runs after every other test (marked `after_all`; see conftest): the canary tokens appear nowhere — not in the proxy's log
(which includes exception text), its metrics, its readiness output, or any response."""

from __future__ import annotations

import urllib.request

import pytest

from tests.hostile.conftest import Canaries, Checked, Ledger, ProxyProcess, request


@pytest.mark.after_all
def test_canary_tokens_never_leaked(
    hostile: Checked, proxy_process: ProxyProcess, canaries: Canaries, ledger: Ledger
) -> None:
    # Make sure errors with tokens in flight were logged: an upstream 401 and a refused request.
    hostile(request("/acme/_fake/status/401", "Host: 127.0.0.1", "Connection: close"))
    admin = f"http://127.0.0.1:{proxy_process.admin_port}"
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as response:  # noqa: S310
        metrics = response.read().decode()
    with urllib.request.urlopen(f"{admin}/readyz", timeout=10) as response:  # noqa: S310
        readyz = response.read().decode()
    log = proxy_process.log.read_text()
    assert '"logger": "amperity_proxy.access"' in log  # the log really was captured
    haystacks = {
        "log": log,
        "metrics": metrics,
        "readyz": readyz,
        "responses": b"".join(proxy_process.bodies).decode("latin-1"),
    }
    for where, text in haystacks.items():
        for token in canaries.all:
            leaked = token in text or token.split(".")[-1] in text
            ledger.token_leaks += int(leaked)
            assert not leaked, f"a canary token leaked into the {where}"
