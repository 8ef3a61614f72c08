"""Text that came from outside reaches nobody with a secret or a control in it: an upstream
that echoes the route's opaque token (whole, in part, percent-encoded, in a header), C1 controls
and bidirectional overrides in its message, a base URL with a password, two clients sharing a
token. Found by the outside attack; each case failed on the code before the fix."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from proxy.observe.logs import JsonFormatter, TextFormatter
from proxy.testing import FakeTLS
from tests.conftest import ProxyFactory, ScriptedUpstream, Upstream, acme_route
from tests.hostile.conftest import LEDGER
from tests.support.process import run_cli

OPAQUE = "opq-7f3a9c2e41d85b60aa19e4c7d2f0b38e"  # an opaque (non-JWT) API token


def _formatted(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as both log formats would write it."""
    formats = (JsonFormatter(), TextFormatter())
    return "\n".join(f.format(r) for r in caplog.records for f in formats)


def _refusal(message: str, *headers: str) -> bytes:
    body = json.dumps({"status": 401, "message": message}).encode()
    head = [b"HTTP/1.1 401 Unauthorized", b"Content-Type: application/json"]
    head += [h.encode() for h in headers]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


ECHOES = {
    "whole": f"invalid token {OPAQUE}",
    "a run of it": f"token ...{OPAQUE[4:22]}... is not valid",
    "percent-encoded": f"bad credential {quote('Bearer ' + OPAQUE, safe='')}",
    "base64": f"rejected {base64.b64encode(OPAQUE.encode()).decode()}",
}


@pytest.mark.parametrize("echo", list(ECHOES))
async def test_an_echoed_opaque_token_reaches_no_log_page_or_client(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    tls: FakeTLS,
    caplog: pytest.LogCaptureFixture,
    echo: str,
) -> None:
    caplog.set_level(logging.DEBUG, "amperity_proxy")
    scripted = ScriptedUpstream(
        [_refusal(ECHOES[echo], f"X-Echo: {OPAQUE}", f'WWW-Authenticate: Bearer token="{OPAQUE}"')]
    )
    port = await scripted.start(tls)
    route = acme_route(upstream, base_url=f"https://acme.amperity.com:{port}/api")
    proxy = await make_proxy([route], env={"ACME_TOKEN": OPAQUE})
    try:
        response = await proxy.client.get("/acme/segments")
        body = await response.read()
        status = await (await proxy.admin.get("/status.json")).text()
        page = await (await proxy.admin.get("/")).text()
    finally:
        await scripted.close()
    LEDGER.tried("upstream text")
    assert response.status == 401
    assert int(response.headers["Content-Length"]) == len(body)
    json.loads(body)  # still the upstream's JSON, with the token replaced
    shown = [body.decode(), str(dict(response.headers)), status, page, _formatted(caplog)]
    forms = (
        OPAQUE,
        OPAQUE[4:22],
        quote(OPAQUE, safe=""),
        base64.b64encode(OPAQUE.encode()).decode(),
    )
    for text in shown:
        for form in forms:
            assert form not in text
    assert "X-Echo" not in response.headers  # a header holding a secret is dropped


async def test_controls_in_an_upstream_message_never_reach_people(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "amperity_proxy")
    said = "bad \u009b31m key \u0085 next\u2028line \u202eevil\u202c"
    proxy = await make_proxy()
    response = await proxy.client.get(f"/acme/_fake/status/401?message={quote(said)}")
    assert response.status == 401
    status = await (await proxy.admin.get("/status.json")).text()
    text = "\n".join(TextFormatter().format(r) for r in caplog.records)
    LEDGER.tried("upstream text")
    assert "bad" in text and "key" in text  # the message is there, its controls are not
    for bad in ("\u009b", "\u0085", "\u2028", "\u202e"):
        assert bad not in text
        assert bad not in json.loads(status).__repr__() and bad not in status


def _write(tmp_path: Path, raw: Mapping[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_base_url_with_a_password_is_shown_without_it(tmp_path: Path, where: str) -> None:
    url = "https://ops:hunter2-pass@acme.amperity.com/api?sig=s3cr3t"
    env = {"T": "opaque-route-token-abcdef"}
    if where == "file":
        route = {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}, "base_url": url}
        result = run_cli(
            "check-config", "--config", str(_write(tmp_path, {"routes": [route]})), env=env
        )
    else:
        env |= {
            "AMPERITY_PROXY_TENANT": "acme",
            "AMPERITY_PROXY_TOKEN_ENV": "T",
            "AMPERITY_PROXY_BASE_URL": url,
        }
        result = run_cli("check-config", env=env)
    LEDGER.tried("upstream text")
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert "user info is not allowed" in out
    assert "hunter2" not in out and "s3cr3t" not in out and "ops:" not in out


CLIENTS = {
    "listen": {
        "clients": [
            {"name": "ingest", "token": {"env": "INGEST_T"}},
            {"name": "reports", "token": {"env": "REPORTS_T"}},
        ]
    },
    "routes": [
        {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}, "clients": ["ingest", "reports"]}
    ],
}
SAME = "one-token-for-two-clients-0123456789"


def test_two_clients_with_one_token_fail_check_config_naming_both(tmp_path: Path) -> None:
    env = {"INGEST_T": SAME, "REPORTS_T": SAME, "T": "opaque-route-token-abcdef"}
    result = run_cli(
        "check-config", "--tokens", "--config", str(_write(tmp_path, CLIENTS)), env=env
    )
    LEDGER.tried("upstream text")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ingest and reports have the same token" in result.stderr
    assert SAME not in result.stdout + result.stderr


def test_two_clients_with_one_token_stop_the_start(tmp_path: Path) -> None:
    env = {"INGEST_T": SAME, "REPORTS_T": SAME, "T": "opaque-route-token-abcdef"}
    result = run_cli("run", "--config", str(_write(tmp_path, CLIENTS)), env=env)
    LEDGER.tried("upstream text")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ingest and reports have the same token" in result.stderr
    assert SAME not in result.stdout + result.stderr
