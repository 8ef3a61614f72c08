"""Config parsing: defaults, inheritance, env expansion, and exact error messages with paths."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    BaseURL,
    ConfigError,
    Timeouts,
    load_config,
    parse_config,
)
from proxy.config.listen import Listen, parse_listen
from proxy.config.sources import TokenSource

ROOT = Path(__file__).resolve().parent.parent


def route(**overrides: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"prefix": "/acme", "tenant": "acme", "token": {"env": "T"}}
    r.update(overrides)
    return r


def errors_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return info.value.errors


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config({"routes": [route()]}, env={})
    assert config.listen == Listen("127.0.0.1", 8080)
    assert config.admin == Listen("127.0.0.1", 9090)
    assert config.shutdown_timeout == 15
    [r] = config.routes
    assert r.name == "acme"
    assert r.base_url == BaseURL("https", "acme.amperity.com", 443, "/api")
    assert str(r.base_url) == "https://acme.amperity.com/api"
    assert r.api_version == "2024-04-01"
    assert r.ca_file is None
    assert r.timeouts == Timeouts(connect=10, read=300, total=None)
    assert r.tokens == (TokenSource("env", location="T"),)


def test_routes_inherit_defaults_and_may_override_each_key() -> None:
    config = parse_config(
        {
            "defaults": {
                "base_url": "https://app.amperity.com/api",
                "api_version": "2025-01-01",
                "timeouts": {"connect": 3, "read": 30},
            },
            "routes": [
                route(),
                route(
                    prefix="/sb",
                    tenant="acme-sb-12345",
                    base_url="https://acme.amperity.com/api/",
                    api_version=None,
                    timeouts={"read": 5},
                ),
            ],
        },
        env={},
    )
    first, second = config.routes
    assert str(first.base_url) == "https://app.amperity.com/api"
    assert first.api_version == "2025-01-01"
    assert first.timeouts == Timeouts(3, 30)
    assert str(second.base_url) == "https://acme.amperity.com/api"  # trailing slash dropped
    assert second.api_version is None
    assert second.timeouts == Timeouts(3, 5)
    assert second.name == "sb"


def test_yaml_date_api_version_is_accepted() -> None:
    config = parse_config({"routes": [route(api_version=datetime.date(2024, 4, 1))]}, env={})
    assert config.routes[0].api_version == "2024-04-01"


def test_env_expansion_with_and_without_default() -> None:
    acme = route(tenant="${TENANT}", prefix="/${PREFIX:-acme}", name="cost$$")
    raw = {"listen": {"port": "${PORT:-8181}"}, "routes": [acme]}
    errors = errors_of(raw, env={"TENANT": "acme"})
    assert errors == ["routes[0].name: expected letters, digits and _.- (max 63), got 'cost$'"]
    acme.pop("name")
    config = parse_config(raw, env={"TENANT": "acme"})
    assert config.listen.port == 8181
    assert config.routes[0].tenant == "acme"
    assert config.routes[0].prefix == "/acme"


def test_unset_variable_without_default_is_an_error() -> None:
    assert errors_of({"routes": [route(tenant="${AMPERITY_TENANT}")]}) == [
        # once: the empty string it leaves behind is the same problem, not a second one
        "routes[0].tenant: environment variable AMPERITY_TENANT is not set: export "
        "AMPERITY_TENANT=..., or write ${AMPERITY_TENANT:-default} for a default",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ["the config is empty; it needs at least a routes: list"]),
        ([], ["expected a mapping, got a list"]),
        ({}, ["routes: expected a non-empty list of routes, got null"]),
        ({"routes": []}, ["routes: expected a non-empty list of routes, got a list"]),
        (
            {"rotues": [route()]},
            [
                "rotues: unknown key (did you mean 'routes'?)",
                "routes: expected a non-empty list of routes, got null",
            ],
        ),
        (
            {"routes": [route(tokn={"env": "T"})]},
            ["routes[0].tokn: unknown key (did you mean 'token'?)"],
        ),
        (
            {"routes": [route(token={"env": "T", "file": "/x"})]},
            ["routes[0].token: expected exactly one of env, file, value, exec, client_credentials"],
        ),
        (
            {"routes": [route(token={})]},
            ["routes[0].token: expected exactly one of env, file, value, exec, client_credentials"],
        ),
        (
            {"routes": [route(token="abc")]},
            [
                "routes[0].token: expected a mapping, got a string: write {env: VARIABLE} or {file: PATH}"
            ],
        ),
        (
            {"routes": [route(token={"env": "1BAD"})]},
            ["routes[0].token.env: not a valid environment variable name: '1BAD'"],
        ),
        (
            {"routes": [route(token={"path": "/x"})]},
            [
                "routes[0].token.path: unknown key; allowed: env, file, value, exec, client_credentials",
                "routes[0].token: expected exactly one of env, file, value, exec, client_credentials",
            ],
        ),
        ({"routes": [route(prefix="acme")]}, ["routes[0].prefix: must start with '/', got 'acme'"]),
        (
            {"routes": [route(prefix="/acme/")]},
            ["routes[0].prefix: must not end with '/', got '/acme/'"],
        ),
        ({"routes": [route(prefix="/")]}, ["routes[0].prefix: must not end with '/', got '/'"]),
        (
            {"routes": [route(prefix="/a/../b")]},
            [
                "routes[0].prefix: segments may hold only letters, digits and ._~- (no dot segments), got '/a/../b'"
            ],
        ),
        (
            {"routes": [route(prefix="/a%2fb")]},
            [
                "routes[0].prefix: segments may hold only letters, digits and ._~- (no dot segments), got '/a%2fb'"
            ],
        ),
        (
            {"routes": [route(tenant="Acme_1")]},
            ["routes[0].tenant: expected a DNS-label-like tenant id (a-z, 0-9, -), got 'Acme_1'"],
        ),
        (
            {"routes": [route(tenant="-acme")]},
            ["routes[0].tenant: expected a DNS-label-like tenant id (a-z, 0-9, -), got '-acme'"],
        ),
        (
            {"routes": [route(base_url="ftp://x.example/api")]},
            ["routes[0].base_url: scheme must be https: 'ftp://x.example/api'"],
        ),
        (
            {"routes": [route(base_url="https://u:p@x.example/api")]},
            ["routes[0].base_url: user info is not allowed: 'https://<user info>@x.example/api'"],
        ),
        (
            {"routes": [route(base_url="https://x.example/api?x=1")]},
            [
                "routes[0].base_url: query and fragment are not allowed: 'https://x.example/api?<hidden>'"
            ],
        ),
        (
            {"routes": [route(base_url="https://{region}.example/api")]},
            ["routes[0].base_url: unknown placeholder {region}; only {tenant} is expanded"],
        ),
        (
            {"routes": [route(base_url="https://x.example:99999/api")]},
            [
                "routes[0].base_url: not a valid URL (Port out of range 0-65535): 'https://x.example:99999/api'"
            ],
        ),
        (
            {"routes": [route(timeouts={"read": 0})]},
            ["routes[0].timeouts.read: must be greater than 0, got 0"],
        ),
        (
            {"routes": [route(timeouts={"connect": "soon"})]},
            ["routes[0].timeouts.connect: expected a number, got a string"],
        ),
        (
            {"routes": [route(retry_body_limit=-1, max_body_bytes=1.5)]},
            [
                "routes[0].retry_body_limit: must be 0 or more, got -1",
                "routes[0].max_body_bytes: expected an integer, got 1.5",
            ],
        ),
        (
            {"defaults": {"max_body_bytes": -5}, "routes": [route()]},
            ["defaults.max_body_bytes: must be 0 or more, got -5"],
        ),
        (
            {"routes": [route(ca_file="/nonexistent/ca.pem")]},
            ["routes[0].ca_file: no such file: /nonexistent/ca.pem"],
        ),
        (
            {"listen": {"port": 70000}, "routes": [route()]},
            ["listen.port: must be between 0 and 65535, got 70000"],
        ),
        (
            {"admin": {"port": True}, "routes": [route()]},
            ["admin.port: expected an integer, got a boolean"],
        ),
        (
            {"listen": {"host": "127.0.0.1", "prot": 1}, "routes": [route()]},
            ["listen.prot: unknown key (did you mean 'port'?)"],
        ),
        (
            {"shutdown_timeout": -1, "routes": [route()]},
            ["shutdown_timeout: must be greater than 0, got -1"],
        ),
        (
            {"log": {"format": "xml"}, "routes": [route()]},
            ["log.format: expected auto, json or text, got 'xml'"],
        ),
        (
            {"routes": [route(), route()]},
            # the name comes from the prefix: one problem, reported once
            ["routes[1].prefix: duplicate prefix '/acme' (also routes[0])"],
        ),
        (
            {"routes": [route(), route(prefix="/b", name="acme")]},
            ["routes[1].name: duplicate name 'acme' (also routes[0])"],
        ),
        (
            {"routes": [{"prefix": "/acme"}]},
            [
                "routes[0].tenant: is required",
                "routes[0].token: is required (or tokens: a list of sources)",
            ],
        ),
        ({"routes": ["acme"]}, ["routes[0]: expected a mapping, got a string"]),
    ],
)
def test_config_errors_are_exact_and_carry_their_path(raw: object, expected: list[str]) -> None:
    assert errors_of(raw) == expected


def test_byte_counts_inherit_and_null_lifts_the_body_cap() -> None:
    config = parse_config(
        {
            "defaults": {"max_body_bytes": 10, "retry_body_limit": 0},
            "routes": [route(), route(prefix="/b", max_body_bytes=None, retry_body_limit="7")],
        },
        env={},
    )
    first, second = config.routes
    assert (first.max_body_bytes, first.retry_body_limit) == (10, 0)
    assert (second.max_body_bytes, second.retry_body_limit) == (None, 7)


def test_every_error_is_reported_together() -> None:
    raw = {
        "listen": {"port": "http"},
        "routes": [
            route(prefix="acme"),
            route(prefix="/b", tenant="B!", token={"env": "X", "value": "y"}),
        ],
    }
    assert errors_of(raw) == [
        "listen.port: expected an integer, got a string",
        "routes[0].prefix: must start with '/', got 'acme'",
        "routes[1].tenant: expected a DNS-label-like tenant id (a-z, 0-9, -), got 'B!'",
        "routes[1].token: expected exactly one of env, file, value, exec, client_credentials",
    ]


def test_inline_token_and_plain_http_are_warned_about() -> None:
    config = parse_config(
        {"routes": [route(token={"value": "abc"}, base_url="http://localhost:8000/api")]}, env={}
    )
    assert config.warnings == (
        "routes[0].token: inline token value in the config file; prefer env or file",
        "routes[0].base_url: plain http upstream 'http://localhost:8000/api'; use only for local testing",
    )
    assert "abc" not in repr(config)  # SECURITY: an inline token never shows in a repr


def test_config_error_renders_every_line() -> None:
    error = ConfigError(["a: x", "b: y"], "conf.yaml")
    assert error.render() == "conf.yaml: 2 error(s)\n  a: x\n  b: y"


def test_load_config_reports_file_and_yaml_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.yaml")
    assert missing.value.errors == ["cannot read config file: No such file or directory"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - prefix: /a\n   tenant: x\n")
    with pytest.raises(ConfigError) as invalid:
        load_config(bad)
    assert invalid.value.errors[0].startswith("line 3, column 4: ")


def test_example_config_parses() -> None:
    config = load_config(ROOT / "config.example.yaml", env={"AMPERITY_TENANT": "acme"})
    assert config.listen == Listen("127.0.0.1", 8080)
    assert config.admin == Listen("127.0.0.1", 9090)
    [r] = config.routes
    assert (r.name, r.prefix, r.tenant) == ("amperity", "/amperity", "acme")
    assert str(r.base_url) == "https://acme.amperity.com/api"
    assert r.ca_file is None  # AMPERITY_CA_FILE unset: ""
    assert r.tokens == (TokenSource("env", location="AMPERITY_TOKEN"),)
    assert config.warnings == ()


def test_example_config_needs_a_tenant_and_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config.example.yaml", env={})
    assert info.value.errors == [
        "routes[0].tenant: environment variable AMPERITY_TENANT is not set: export "
        "AMPERITY_TENANT=..., or write ${AMPERITY_TENANT:-default} for a default"
    ]


def test_example_config_takes_an_aws_base_url_and_a_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "AMPERITY_TENANT": "acme",
        "AMPERITY_BASE_URL": "https://app.amperity.com/api",
        "AMPERITY_CA_FILE": str(ca),
    }
    [r] = load_config(ROOT / "config.example.yaml", env=env).routes
    assert (str(r.base_url), r.ca_file) == ("https://app.amperity.com/api", str(ca))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", Listen("127.0.0.1", 8080)),
        ("[::1]:0", Listen("::1", 0)),
        ("0.0.0.0:9", Listen("0.0.0.0", 9)),  # noqa: S104
    ],
)
def test_parse_listen(text: str, expected: Listen) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:x", "host:70000"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen(text)
