"""`make demo` runs end to end and shows an accepted, credentialed request."""

from __future__ import annotations

import pytest

from proxy.demo import demo


async def test_demo_shows_what_the_upstream_received(capsys: pytest.CaptureFixture[str]) -> None:
    await demo()
    out = capsys.readouterr().out
    assert "GET /api/segments?limit=2" in out
    assert "Amperity-Tenant: acme" in out
    assert "Authorization: Bearer <token, fingerprint " in out
    assert "upstream verdict: 200 (accepted)" in out
    assert "eyJ" not in out  # the demo never prints the token itself
