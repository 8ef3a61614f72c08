"""Every setting from flags, environment or file (issue 19): `run`'s flags have
AMPERITY_PROXY_* variables (flags > environment > file), and a one-route proxy runs from
variables alone, without a config file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.testing import make_token
from tests.conftest import ProcessUpstream
from tests.support.net import closed_port
from tests.support.process import run_cli, spawn_proxy


async def test_flags_beat_variables_beat_the_file(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    config: dict[str, Any] = {
        "listen": {"port": closed_port()},  # the file's: loses to the variable
        "admin": {"port": 0},
        "log": {"format": "text", "level": "WARNING"},  # loses to the variables
        "routes": [process_upstream.route()],
    }
    from_env, from_flag = closed_port(), closed_port()
    env = {
        "ACME_TOKEN": make_token("acme"),
        "AMPERITY_PROXY_LISTEN": f"127.0.0.1:{from_env}",
        "AMPERITY_PROXY_ADMIN_LISTEN": f"127.0.0.1:{from_flag}",  # the flag below wins
        "AMPERITY_PROXY_LOG_FORMAT": "json",
        "AMPERITY_PROXY_LOG_LEVEL": "info",
    }
    # spawn_proxy passes --log-format json itself; the listen address comes from the variable
    process = await spawn_proxy(tmp_path, config, env)
    try:
        assert process.proxy == f"127.0.0.1:{from_env}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{process.proxy}/acme/segments") as response,
        ):
            assert response.status == 200
        # INFO from the variable (the file says WARNING): the access line is logged
        access = await process.log_until(lambda r: r.get("logger") == "amperity_proxy.access")
        assert access["status"] == 200
    finally:
        await process.stop()
    flag = run_cli(
        "run", "--config", str(tmp_path / "config.yaml"), "--workers", "0", env=env
    )  # a bad flag is reported as the flag
    assert flag.returncode == 2 and "--workers" in flag.stderr
    bad = run_cli(
        "run",
        "--config",
        str(tmp_path / "config.yaml"),
        env={**env, "AMPERITY_PROXY_WORKERS": "many"},
    )
    assert bad.returncode == 2
    assert "AMPERITY_PROXY_WORKERS: expected a whole number of at least 1, got 'many'" in bad.stderr


def test_help_names_every_variable() -> None:
    out = run_cli("run", "--help").stdout
    for variable in (
        "AMPERITY_PROXY_LISTEN",
        "AMPERITY_PROXY_ADMIN_LISTEN",
        "AMPERITY_PROXY_WORKERS",
        "AMPERITY_PROXY_LOG_FORMAT",
        "AMPERITY_PROXY_LOG_LEVEL",
        "AMPERITY_PROXY_CONFIG",
    ):
        assert variable in out, variable


async def test_a_proxy_from_variables_alone(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    """No config file: tenant, token file, base URL and CA from the environment; `run`,
    `check-config` and `token-info` all work on that."""
    token = make_token("acme")
    (tmp_path / "token").write_text(token)
    env = {
        "AMPERITY_PROXY_TENANT": "acme",
        "AMPERITY_PROXY_TOKEN_FILE": str(tmp_path / "token"),
        "AMPERITY_PROXY_BASE_URL": f"https://localhost:{process_upstream.port}/api",
        "AMPERITY_PROXY_CA_FILE": str(process_upstream.ca_file),
        "AMPERITY_PROXY_LISTEN": "127.0.0.1:0",
        "AMPERITY_PROXY_ADMIN_LISTEN": "127.0.0.1:0",
    }
    check = run_cli("check-config", env=env)
    assert check.returncode == 0, check.stderr
    assert "AMPERITY_PROXY_* variables: ok (1 route(s))" in check.stdout
    assert "/amperity -> https://localhost" in check.stdout
    info = run_cli("token-info", "--json", "--warn", "1m", env=env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)[0]["route"] == "amperity"
    process = await spawn_proxy(tmp_path, None, env)  # no --config, no file
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{process.proxy}/amperity/segments") as response,
        ):
            assert response.status == 200
    finally:
        await process.stop()
    [seen] = process_upstream.fake.requests
    assert seen.header("Authorization") == f"Bearer {token}"
    assert seen.header("Amperity-Tenant") == "acme"
    assert token not in check.stdout + check.stderr + info.stdout


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"AMPERITY_PROXY_TOKEN_FILE": "/t"},
            "AMPERITY_PROXY_TENANT: missing",
        ),
        (
            {"AMPERITY_PROXY_TENANT": "acme"},
            "AMPERITY_PROXY_TOKEN_FILE / AMPERITY_PROXY_TOKEN_ENV: set exactly one",
        ),
        (
            {"AMPERITY_PROXY_TENANT": "Bad_Tenant", "AMPERITY_PROXY_TOKEN_ENV": "T"},
            "AMPERITY_PROXY_TENANT: expected a DNS-label-like tenant id",
        ),
        (
            {
                "AMPERITY_PROXY_TENANT": "acme",
                "AMPERITY_PROXY_TOKEN_ENV": "T",
                "AMPERITY_PROXY_BASE_URL": "ftp://x",
            },
            "AMPERITY_PROXY_BASE_URL: ",
        ),
    ],
    ids=["no-tenant", "no-token", "bad-tenant", "bad-base-url"],
)
def test_variable_problems_name_the_variable(env: dict[str, str], error: str) -> None:
    result = run_cli("check-config", env=env)
    assert result.returncode == 2
    assert error in result.stderr


def test_a_file_and_the_variables_together_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"routes": [{"prefix": "/a", "tenant": "a", "token": {"env": "T"}}]})
    )
    result = run_cli("check-config", "--config", str(path), env={"AMPERITY_PROXY_TENANT": "acme"})
    assert result.returncode == 2
    assert "and AMPERITY_PROXY_TENANT are both set: unset the variables" in result.stderr
