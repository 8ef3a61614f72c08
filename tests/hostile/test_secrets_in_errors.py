"""Config errors never echo secrets: a value from a `${VAR}` expansion, one in a secret-bearing
field, one that looks like a JWT, or one longer than 64 characters is described, not shown,
wherever the error goes: check-config, run, a reload's log line, the POST /-/reload answer and
/status.json."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.testing import FakeTLS, make_token
from tests.conftest import Upstream
from tests.hostile.conftest import LEDGER
from tests.support.process import run_cli, spawn_proxy

ROOT = Path(__file__).resolve().parents[2]
JWT = make_token("acme", subject="never-echoed-" + "x" * 600)
JWT2 = make_token("acme", subject="never-echoed-either")
PARTS = (*JWT.split("."), *JWT2.split("."))
LONG = "L" * 65


def _errors(raw: dict[str, Any], env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env)
    LEDGER.tried("secrets in errors")
    return info.value.errors


def _route(**fields: Any) -> dict[str, Any]:
    return {"prefix": "/a", "tenant": "a", "token": {"env": "T"}, **fields}


def _no_secret(text: str, *secrets: str) -> None:
    for secret in (*PARTS, *secrets):
        assert secret not in text, text


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        (  # a token where a variable *name* belongs
            {"routes": [_route(token={"env": "${AMPERITY_TOKEN}"})]},
            {"AMPERITY_TOKEN": JWT},
            "routes[0].token.env: not a valid environment variable name: value from "
            f"${{AMPERITY_TOKEN}}, {len(JWT)} chars, looks like a JWT: hidden",
        ),
        (
            {"routes": [_route(tenant="${TOK}")]},
            {"TOK": JWT},
            "routes[0].tenant: expected a DNS-label-like tenant id (a-z, 0-9, -), got value "
            f"from ${{TOK}}, {len(JWT)} chars, looks like a JWT: hidden",
        ),
        (  # a short value from a variable is hidden too: it came from the environment
            {"routes": [_route(tenant="${TOK}")]},
            {"TOK": "Not_A_Tenant"},
            "routes[0].tenant: expected a DNS-label-like tenant id (a-z, 0-9, -), got value "
            "from ${TOK}, 12 chars: hidden",
        ),
        (
            {"listen": {"port": "${PORT}"}, "routes": [_route()]},
            {"PORT": "99999"},
            "listen.port: must be between 0 and 65535, got value from ${PORT}, 5 chars: hidden",
        ),
        (  # a JWT pasted literally where a variable name belongs
            {"routes": [_route(token={"env": JWT})]},
            {},
            "routes[0].token.env: not a valid environment variable name: a value, "
            f"{len(JWT)} chars, looks like a JWT: hidden",
        ),
        (
            {"routes": [_route(name=LONG)]},
            {},
            "routes[0].name: expected letters, digits and _.- (max 63), got a value, 65 chars: "
            "hidden",
        ),
        (
            {"log": {"level": "${LEVEL}"}, "routes": [_route()]},
            {"LEVEL": JWT},
            "log.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got value from "
            f"${{LEVEL}}, {len(JWT)} chars, looks like a JWT: hidden",
        ),
        (  # a variable inside a longer value hides the whole value
            {"routes": [_route(base_url="https://${HOST}/api?x=1")]},
            {"HOST": "acme.amperity.com"},
            "routes[0].base_url: query and fragment are not allowed: value from ${HOST}, "
            f"{len('https://acme.amperity.com/api?x=1')} chars: hidden",
        ),
        (  # a token pasted as a key: the net hides it even in a path
            {"routes": [{**_route(), JWT: 1}]},
            {},
            "routes[0].<a value that looks like a JWT: hidden>: unknown key; allowed: name, "
            "prefix, tenant, token, tokens, methods, paths, clients, api, tenant_header, base_url, "
            "api_version, ca_file, "
            "timeouts, retry_body_limit, expired_token, max_body_bytes, rate_limit, retry",
        ),
        (  # short literal identifiers are still shown: they are what a hint needs
            {"routes": [_route(tenant="Bad_Tenant")]},
            {},
            "routes[0].tenant: expected a DNS-label-like tenant id (a-z, 0-9, -), got 'Bad_Tenant'",
        ),
    ],
    ids=[
        "jwt-as-env-name",
        "tenant-from-var",
        "short-from-var",
        "port-from-var",
        "literal-jwt",
        "long-literal",
        "level-from-var",
        "var-inside-url",
        "jwt-as-key",
        "short-literal-shown",
    ],
)
def test_config_errors_describe_secrets_instead_of_echoing_them(
    raw: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    errors = _errors(raw, env)
    assert errors == [expected]
    _no_secret("\n".join(errors), "99999" if "PORT" in env else JWT)


def test_secret_bearing_fields_are_never_echoed() -> None:
    """`value:` under a token source is a secret even when short and literal."""
    errors = _errors(
        {
            "routes": [
                _route(token={"value": "s3cret", "env": "X"}),
                _route(
                    prefix="/b",
                    token={
                        "client_credentials": {"client_id": "c", "client_secret": "hunter2-secret"}
                    },
                ),
            ]
        },
        {},
    )
    _no_secret("\n".join(errors), "s3cret", "hunter2-secret")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


BAD_ROUTE = {"prefix": "/a", "tenant": "${TOK}", "token": {"env": "${AMPERITY_TOKEN}"}}
BAD = {"listen": {"port": 0}, "admin": {"port": 0}, "routes": [BAD_ROUTE]}
BAD_ENV = {"TOK": JWT, "AMPERITY_TOKEN": JWT2}


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_describe_the_secret(tmp_path: Path, command: str) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(BAD))
    result = _cli(command, "--config", str(tmp_path / "bad.yaml"), env=BAD_ENV)
    LEDGER.tried("secrets in errors")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "value from ${TOK}" in output and "value from ${AMPERITY_TOKEN}" in output
    assert "looks like a JWT: hidden" in output
    _no_secret(output)


def _http(url: str, method: str = "GET") -> tuple[int, str]:
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_rejected_reload_describes_the_secret_everywhere_it_reports(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    route: dict[str, Any] = {
        "prefix": "/acme",
        "tenant": "acme",
        "base_url": upstream.url("localhost"),
        "ca_file": str(tmp_path / "ca.pem"),
        "token": {"env": "ACME_TOKEN"},
    }
    good = {"listen": {"port": 0}, "admin": {"port": 0, "enable_reload": True}, "routes": [route]}
    env = {"ACME_TOKEN": make_token("acme"), **BAD_ENV}
    process = await spawn_proxy(tmp_path, good, env)
    try:
        admin = process.admin
        bad = {**good, "routes": [{**route, **BAD_ROUTE}]}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
        status, answer = await asyncio.to_thread(_http, f"http://{admin}/-/reload", "POST")
        record = await process.log_until(lambda r: "rejected" in str(r.get("message", "")))
        _, page = await asyncio.to_thread(_http, f"http://{admin}/status.json")
    finally:
        await process.stop()
    LEDGER.tried("secrets in errors", 3)
    assert status >= 400
    reload_errors = json.loads(page)["reload"]["errors"]
    for text in (answer, json.dumps(record), page):
        assert "value from ${TOK}" in text and "looks like a JWT: hidden" in text, text
        _no_secret(text)
    assert any("value from ${AMPERITY_TOKEN}" in e for e in reload_errors)
