"""`token-info` (exit codes, JSON) and `doctor` (good and broken configs)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli.diagnose import doctor, parse_duration
from proxy.config import parse_config
from proxy.testing import FakeAmperity, FakeTLS, make_token, start_fake
from tests.conftest import tls_route
from tests.support.net import refused_port
from tests.support.process import run_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake(tls: FakeTLS) -> AsyncIterator[tuple[FakeAmperity, int]]:
    upstream = FakeAmperity()
    runner, port = await start_fake(upstream, tls.server)
    yield upstream, port
    await runner.cleanup()


def write_config(tmp_path: Path, routes: list[dict[str, Any]]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"routes": routes}))
    return path


def token_info(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("token-info", "--config", str(config), *args, env=env)


def routes_for(tokens: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"prefix": f"/{name}", "tenant": "acme", "token": {"env": var}}
        for name, var in (("fine", "FINE"), ("soon", "SOON"), ("old", "OLD"))
        if var in tokens
    ]


def test_token_info_exits_0_when_all_tokens_are_fine(tmp_path: Path) -> None:
    env = {"FINE": make_token("acme", ttl=30 * 86400)}
    result = token_info(write_config(tmp_path, routes_for(env)), env=env)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "ROUTE",
        "TENANT",
        "API",
        "SOURCE",
        "FINGERPRINT",
        "SUBJECT",
        "ISSUED",
        "EXPIRES",
        "LEFT",
        "STATE",
    ]
    assert row.split()[:6] == ["fine", "acme", "amperity", "environment", "variable", "FINE"]
    assert "30.0 days" in row and row.endswith("ok (in use)")
    assert env["FINE"] not in result.stdout + result.stderr


def test_token_info_exits_1_for_expiring_or_expired_tokens(tmp_path: Path) -> None:
    env = {
        "FINE": make_token("acme", ttl=30 * 86400),
        "SOON": make_token("acme", ttl=2 * 86400),
        "OLD": make_token("acme", issued_at=time.time() - 10 * 86400, ttl=86400),
    }
    config = write_config(tmp_path, routes_for(env))
    result = token_info(config, "--json", env=env)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert [(r["route"], r["state"]) for r in data] == [
        ("fine", "ok"),
        ("soon", "expiring"),
        ("old", "expired"),
    ]
    assert data[0]["tokens"][0]["source"] == "environment variable FINE"
    assert data[0]["tokens"][0]["seconds_left"] > 29 * 86400
    for token in env.values():
        assert token not in result.stdout
    # A narrower warning window: only the expired one fails.
    only_fine_and_soon = write_config(tmp_path, routes_for({"FINE": "", "SOON": ""}))
    assert token_info(only_fine_and_soon, "--warn", "1d", env=env).returncode == 0
    assert token_info(only_fine_and_soon, "--warn", "3d", env=env).returncode == 1


def test_token_info_reports_a_missing_token(tmp_path: Path) -> None:
    config = write_config(tmp_path, routes_for({"FINE": ""}))
    result = token_info(config, env={})
    assert result.returncode == 1
    assert "missing: environment variable FINE is not set" in result.stdout


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("90", 90)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


async def test_doctor_on_a_good_config(
    tmp_path: Path, tls: FakeTLS, fake: tuple[FakeAmperity, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, port = fake
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    monkeypatch.setenv("DOCTOR_TOKEN", make_token("acme", ttl=30 * 86400))
    config = parse_config(
        {"routes": [tls_route(port, tmp_path / "ca.pem", token={"env": "DOCTOR_TOKEN"})]}
    )
    out = io.StringIO()
    assert await doctor(config, probe=True, out=out) == 0
    report = out.getvalue()
    assert report.startswith(f"route acme (/acme -> https://localhost:{port}/api, tenant acme): OK")
    assert "ok    DNS: localhost ->" in report
    assert f"ok    TLS handshake: https://localhost:{port}" in report
    assert f"ok    probe GET https://localhost:{port}/api/segments?limit=1: 200" in report
    assert [r.raw_path for r in upstream.requests] == ["/api/segments?limit=1"]
    assert os.environ["DOCTOR_TOKEN"] not in report


@pytest.fixture
def down_port() -> Iterator[int]:
    with refused_port() as port:
        yield port


async def test_doctor_on_a_broken_config(
    tmp_path: Path,
    tls: FakeTLS,
    fake: tuple[FakeAmperity, int],
    monkeypatch: pytest.MonkeyPatch,
    down_port: int,
) -> None:
    upstream, port = fake
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    monkeypatch.setenv("EXPIRED", make_token("acme", issued_at=time.time() - 7200, ttl=3600))
    monkeypatch.setenv("REVOKED", make_token("acme"))
    monkeypatch.delenv("MISSING", raising=False)
    upstream.revoked.add(os.environ["REVOKED"])
    config = parse_config(
        {
            "routes": [
                {  # no token, and nothing listens there
                    "prefix": "/down",
                    "tenant": "acme",
                    "base_url": f"https://localhost:{down_port}/api",
                    "token": {"env": "MISSING"},
                },
                {  # the test CA is not trusted without ca_file; the token has expired
                    "prefix": "/tls",
                    "tenant": "acme",
                    "base_url": f"https://localhost:{port}/api",
                    "token": {"env": "EXPIRED"},
                },
                {  # reachable, but the token was revoked
                    "prefix": "/revoked",
                    "tenant": "acme",
                    "base_url": f"https://localhost:{port}/api",
                    "ca_file": str(tmp_path / "ca.pem"),
                    "token": {"env": "REVOKED"},
                },
            ]
        }
    )
    out = io.StringIO()
    assert await doctor(config, probe=True, out=out) == 1
    report = out.getvalue()
    assert "route down (/down" in report and "2 problem(s)" in report
    assert (
        "FAIL  token from environment variable MISSING: environment variable MISSING is not set"
        in report
    )
    assert "FAIL  connect: https://localhost:" in report
    assert "FAIL  TLS: certificate of https://localhost:" in report
    assert "fix: if a corporate proxy re-signs TLS, set ca_file to its CA bundle" in report
    assert "expired 1 hour ago" in report
    assert "FAIL  probe GET" in report and ": 401 (rejected)" in report
    for name in ("EXPIRED", "REVOKED"):
        assert os.environ[name] not in report
