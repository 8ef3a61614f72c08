"""Exec helpers get a minimal environment: PATH, HOME, LANG/LC_*, TZ and only what their config
names (`exec.env`, `exec.pass_env`); never the proxy's own, which holds other routes' tokens
and the client token."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config
from proxy.testing import TEST_SECRET, FakeTLS, make_token
from tests.conftest import Upstream
from tests.hostile.conftest import LEDGER
from tests.support.process import spawn_proxy

HELPER = """
import json, os, sys, time, jwt
with open(sys.argv[1], "w") as f:
    json.dump(dict(os.environ), f)
now = int(time.time())
print(jwt.encode({"tenant": "acme", "iat": now, "exp": now + 3600}, sys.argv[2], algorithm="HS256"))
"""

OTHER_ROUTE_TOKEN = make_token("acme-sb", subject="other-route")
CLIENT_TOKEN = "client-token-" + "z" * 24


async def test_an_exec_helper_sees_only_the_base_and_what_its_config_names(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    seen = tmp_path / "environment.json"
    config = {
        "listen": {"port": 0, "client_token": {"env": "PROXY_CLIENT_TOKEN"}},
        "admin": {"port": 0},
        "defaults": {"ca_file": str(tmp_path / "ca.pem")},
        "routes": [
            {
                "prefix": "/acme",
                "tenant": "acme",
                "base_url": upstream.url("localhost"),
                "token": {
                    "exec": {
                        "command": [
                            sys.executable,
                            str(tmp_path / "helper.py"),
                            str(seen),
                            TEST_SECRET,
                        ],
                        "env": {
                            "VAULT_ADDR": "https://vault.internal",
                            "FROM_VAR": "${HELPER_ROLE}",
                        },
                        "pass_env": ["VAULT_NAMESPACE", "NOT_SET_ANYWHERE"],
                    }
                },
            },
            {
                "prefix": "/other",
                "tenant": "acme-sb",
                "base_url": upstream.url("localhost", "/sbapi"),
                "token": {"env": "OTHER_ROUTE_TOKEN"},
            },
        ],
    }
    env = {
        "OTHER_ROUTE_TOKEN": OTHER_ROUTE_TOKEN,
        "PROXY_CLIENT_TOKEN": CLIENT_TOKEN,
        "REDIS_PASSWORD": "redis-secret",
        "VAULT_NAMESPACE": "team-a",
        "HELPER_ROLE": "reader",
        "HOME": "/home/proxy",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }
    process = await spawn_proxy(tmp_path, config, env)
    try:
        environment: dict[str, str] = json.loads(seen.read_text())
    finally:
        await process.stop()
    LEDGER.tried("exec helpers")
    for secret in (OTHER_ROUTE_TOKEN, CLIENT_TOKEN, "redis-secret"):
        assert secret not in environment.values()
    assert "OTHER_ROUTE_TOKEN" not in environment and "PROXY_CLIENT_TOKEN" not in environment
    assert environment["VAULT_ADDR"] == "https://vault.internal"  # exec.env
    assert environment["FROM_VAR"] == "reader"  # exec.env from ${VAR}
    assert environment["VAULT_NAMESPACE"] == "team-a"  # exec.pass_env
    assert "NOT_SET_ANYWHERE" not in environment
    assert {"PATH", "HOME", "LANG", "LC_ALL", "TZ"} <= environment.keys()
    allowed = {"PATH", "HOME", "LANG", "TZ", "VAULT_ADDR", "FROM_VAR", "VAULT_NAMESPACE"}
    # Python itself may add LC_CTYPE (PEP 538 locale coercion): LC_* is part of the base.
    assert {k for k in environment if not k.startswith("LC_")} <= allowed, environment.keys()


@pytest.mark.parametrize(
    ("exec_config", "error"),
    [
        (
            {"env": {"1BAD": "x"}},
            "routes[0].token.exec.env.1BAD: not a valid environment variable name",
        ),
        (
            {"env": ["A=1"]},
            "routes[0].token.exec.env: expected a mapping of NAME: value, got a list",
        ),
        (
            {"env": {"A": {"b": 1}}},
            "routes[0].token.exec.env.A: expected a string value, got a mapping",
        ),
        (
            {"pass_env": ["A-B"]},
            "routes[0].token.exec.pass_env[0]: not a valid environment variable name: 'A-B'",
        ),
        ({"pass_env": "A"}, "routes[0].token.exec.pass_env: expected a list, got a string"),
    ],
)
def test_exec_env_config_errors(exec_config: dict[str, object], error: str) -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"exec": {"command": ["x"], **exec_config}}}
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [route]}, env={})
    assert info.value.errors == [error]


def test_exec_env_values_never_show_in_repr() -> None:
    route = {
        "prefix": "/a",
        "tenant": "a",
        "token": {"exec": {"command": ["x"], "env": {"VAULT_TOKEN": "${VT}"}}},
    }
    config = parse_config({"routes": [route]}, env={"VT": "hvs.secret-vault-token"})
    assert "hvs.secret-vault-token" not in repr(config)
    assert config.routes[0].tokens[0].exec_env == (("VAULT_TOKEN", "hvs.secret-vault-token"),)
