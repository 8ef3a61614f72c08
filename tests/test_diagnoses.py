"""Diagnoses that are true: the proxy reports what Amperity said, names a cause only when the
evidence shows it, and never shows a route green while Amperity refuses its requests."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from proxy.cli.diagnose import doctor
from proxy.config import parse_config
from proxy.refusals import MESSAGE_MAX, upstream_message
from proxy.testing import FakeAmperity, FakeTLS, make_token, start_fake
from proxy.tokens import parse_token
from proxy.tokens.health import unauthorized_cause
from tests.conftest import ProxyFactory, Upstream


async def readyz(proxy: Any) -> dict[str, Any]:
    response = await proxy.admin.get("/readyz")
    body: dict[str, Any] = await response.json()
    body["_status"] = response.status
    return body


async def test_a_token_for_another_tenant_is_called_a_tenant_mismatch_everywhere(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: "probably rotated or revoked; generate a new token", and a green OK."""
    other = make_token("someone-else", ttl=30 * 86400)
    proxy = await make_proxy(env={"ACME_TOKEN": other})
    caplog.set_level(logging.INFO, "amperity_proxy")
    for _ in range(3):
        response = await proxy.client.get("/acme/segments")
        assert response.status == 401
        # the client gets the upstream's own body, unchanged (it was peeked, not eaten)
        assert await response.json() == {
            "status": 401,
            "message": "Amperity-Tenant does not match the token's tenant",
            "request_id": "fake",
        }
    [warning] = [r.getMessage() for r in caplog.records if "answered 401" in r.getMessage()]
    assert 'Amperity said: "Amperity-Tenant does not match the token\'s tenant"' in warning
    assert "check the route's tenant" in warning and "rotated or revoked" not in warning
    metrics = await (await proxy.admin.get("/metrics")).text()
    assert 'cause="tenant_mismatch",route="acme",tenant="acme"} 3.0' in metrics
    status = await (await proxy.admin.get("/status.json")).json()
    [route] = status["routes"]
    assert route["state"] == "refused"
    assert route["refusals"]["last"]["message"] == (
        "Amperity-Tenant does not match the token's tenant"
    )
    page = await (await proxy.admin.get("/")).text()
    assert "REFUSED by Amperity" in page and "does not match the token&#x27;s tenant" in page
    ready = await readyz(proxy)
    assert ready["_status"] == 200  # a refused token must not take the pod out of service
    assert ready["routes"][0]["state"] == "refused"


async def test_a_route_is_failing_only_while_most_recent_answers_are_refusals(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(env={"ACME_TOKEN": make_token("acme", ttl=30 * 86400)})
    for _ in range(11):
        assert (await proxy.client.get("/acme/_fake/status/401")).status == 401
    for _ in range(9):
        assert (await proxy.client.get("/acme/segments")).status == 200
    [route] = (await (await proxy.admin.get("/status.json")).json())["routes"]
    assert (route["state"], route["refusals"]["recent"], route["refusals"]["of"]) == (
        "refused",
        11,
        20,
    )
    for _ in range(2):  # two more good answers: 9 of the last 20 are refusals
        assert (await proxy.client.get("/acme/segments")).status == 200
    [route] = (await (await proxy.admin.get("/status.json")).json())["routes"]
    assert (route["state"], route["refusals"]["recent"]) == ("ok", 9)
    assert (await readyz(proxy))["routes"][0]["state"] == "ok"


async def test_a_403_is_logged_with_amperitys_own_words(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    caplog.set_level(logging.INFO, "amperity_proxy")
    said = "API key role Viewer may not POST segments"
    response = await proxy.client.post(f"/acme/_fake/status/403?message={quote(said)}", data=b"{}")
    assert response.status == 403
    assert (await response.json())["message"] == said
    [warning] = [r.getMessage() for r in caplog.records if "answered 403" in r.getMessage()]
    assert f'"{said}"' in warning and "check its policy" in warning


async def test_a_refusal_body_larger_than_the_peek_reaches_the_client_whole(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    long = "x" * 6_000  # the envelope is cut at 4 KiB: no message, but the body is intact
    proxy = await make_proxy()
    response = await proxy.client.get(f"/acme/_fake/status/401?message={long}")
    body = await response.read()
    assert response.status == 401
    expected = json.dumps({"status": 401, "message": long}).encode()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"status": 401, "message": "Invalid token"}', "Invalid token"),
        (b'{"error": "invalid_client", "error_description": "bad secret"}', "bad secret"),
        (b"<html>401</html>", None),
        (b'["not", "an", "envelope"]', None),
        (b'{"message": "line\\nbreak\\u0007bell"}', "line break bell"),
        (
            json.dumps({"message": f"token {make_token('acme')} refused"}).encode(),
            "token <redacted JWT> refused",
        ),
        (json.dumps({"message": "y" * 500}).encode(), "y" * (MESSAGE_MAX - 1) + "…"),
    ],
)
def test_the_upstream_message_is_scrubbed_and_cut(body: bytes, expected: str | None) -> None:
    assert upstream_message(body) == expected


def test_a_cause_is_named_only_on_evidence() -> None:
    now = time.time()
    theirs = parse_token(make_token("other", ttl=3600), now)
    ours = parse_token(make_token("acme", ttl=3600), now)
    expired = parse_token(make_token("other", ttl=-3600), now)
    # the token's own claim names another tenant: a mismatch, whatever the message
    assert unauthorized_cause(theirs, now, "acme", "Unauthorized") == "tenant_mismatch"
    # the upstream says so in words
    assert (
        unauthorized_cause(ours, now, "acme", "Tenant mismatch for this key") == "tenant_mismatch"
    )
    # no evidence: refused, cause unknown to the proxy (not "rotated or revoked")
    assert unauthorized_cause(ours, now, "acme", "Unauthorized") == "rejected"
    assert unauthorized_cause(ours, now, "acme", None) == "rejected"
    # expiry is the stronger evidence
    assert unauthorized_cause(expired, now, "acme", "Tenant mismatch") == "expired"


async def test_doctor_probe_says_to_check_the_tenant(
    tls: FakeTLS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    try:
        route = {
            "prefix": "/acme",
            "tenant": "acme",
            "base_url": f"https://localhost:{port}/api",
            "ca_file": str(tmp_path / "ca.pem"),
            "token": {"env": "T"},
        }
        config = parse_config({"routes": [route]}, env={})
        out = io.StringIO()
        monkeypatch.setenv("T", make_token("someone-else", ttl=86400))
        assert await doctor(config, probe=True, out=out) == 1
    finally:
        await runner.cleanup()
    report = out.getvalue()
    assert (
        ": 401 (tenant_mismatch); Amperity said: \"Amperity-Tenant does not match the token's "
        "tenant\": the token is for another tenant than the route's" in report
    )
    assert "fix: check the route's tenant" in report
    assert "rotated or revoked" not in report
