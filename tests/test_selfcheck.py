"""Start-up self-checks and the `limits:` section."""

from __future__ import annotations

import logging
import ssl

import pytest

from proxy.cli.selfcheck import c_parser_in_use, self_check
from proxy.config import Config, ConfigError, parse_config
from proxy.config.limits import Limits

ROUTE = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}


def config(**limits: object) -> Config:
    return parse_config({"routes": [ROUTE], "limits": limits}, env={})


def test_the_c_parser_is_in_use_in_this_test_run() -> None:
    assert c_parser_in_use()  # CI runs the pure-Python parser only in the hostile suite's process


def test_pure_python_parser_refuses_to_start() -> None:
    [problem] = self_check(config(), [ssl.create_default_context()], c_parser=False)
    assert "C HTTP parser is not in use" in problem
    assert "limits.allow_pure_python_parser" in problem


def test_pure_python_parser_can_be_allowed_loudly(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(allow_pure_python_parser=True)
    assert self_check(cfg, [ssl.create_default_context()], c_parser=False) == []
    assert any(
        r.levelno == logging.WARNING and "SECURITY" in r.getMessage() for r in caplog.records
    )


def test_an_unverified_tls_context_refuses_to_start() -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    problems = self_check(config(), [unverified], c_parser=True)
    assert problems == ["an upstream TLS context does not verify certificates; refusing"]


@pytest.mark.parametrize(
    ("version", "ok"), [("3.14.2", False), ("3.9.5", False), ("3.14.3", True), ("4.0.0a1", True)]
)
def test_old_aiohttp_refuses_to_start(version: str, ok: bool) -> None:
    problems = self_check(config(), [], aiohttp_version=version, c_parser=True)
    assert (problems == []) is ok
    if not ok:
        assert "older than 3.14.3" in problems[0]


def test_limits_defaults_and_errors() -> None:
    assert parse_config({"routes": [ROUTE]}, env={}).limits == Limits()
    cfg = parse_config(
        {"routes": [ROUTE], "limits": {"max_connections": 10, "header_timeout": 2.5}}, env={}
    )
    assert (cfg.limits.max_connections, cfg.limits.header_timeout) == (10, 2.5)
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "routes": [ROUTE],
                "limits": {"max_headers": 0, "body_timeout": -1, "max_conections": 1},
            },
            env={},
        )
    assert info.value.errors == [
        "limits.max_conections: unknown key (did you mean 'max_connections'?)",
        "limits.max_headers: must be at least 1, got 0",
        "limits.body_timeout: must be greater than 0, got -1",
    ]
