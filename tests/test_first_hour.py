"""A newcomer's first hour: the mistakes people make first get one message each, with its fix.

Each case here was seen when the proxy was tried from a fresh clone with a sloppy config; the
expected text is the whole message a user reads (paths, the fix), not a fragment of it.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from proxy.config import ConfigError, load_config, parse_config
from proxy.testing import make_token
from proxy.tokens import TokenStore, in_words, make_sources
from proxy.upstream.failures import detail
from tests.conftest import ProxyFactory, Upstream, acme_route, get, raw_request
from tests.support.envelope import message
from tests.support.process import run_cli, spawn_proxy

ROOT = Path(__file__).resolve().parent.parent


def errors_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return info.value.errors


def test_one_pass_reports_every_independent_problem_once_where_it_was_written() -> None:
    # Before: the duplicate prefix and the public listener surfaced only after the other
    # errors were fixed; the bad defaults.base_url came once per route; the unset variable
    # came with a second error about the empty string it left behind.
    raw = {
        "listen": {"host": "0.0.0.0", "port": 8080},  # noqa: S104 (the mistake under test)
        "defaults": {"base_url": "ftp://amperity.example/{tenant}"},
        "routes": [
            {"prefix": "/a", "tenant": "a", "token": {"env": "T"}},
            {"prefix": "/a", "tenant": "b", "token": {"env": "T"}},
            {"prefix": "/c", "tenant": "c", "token": {"env": "T"}},
            {"prefix": "/d", "tenant": "${NOPE}", "token": {"env": "T"}},
        ],
    }
    assert errors_of(raw) == [
        "routes[3].tenant: environment variable NOPE is not set: export NOPE=..., or write "
        "${NOPE:-default} for a default",
        "defaults.base_url: scheme must be https: 'ftp://amperity.example/tenant'",
        "routes[1].prefix: duplicate prefix '/a' (also routes[0])",
        "listen.host: 0.0.0.0 is not a loopback address, so every machine that can reach it "
        "could send requests with the Amperity token; set listen.allow_clients to the networks "
        "that may use the proxy (for example [10.1.2.0/24]), or listen on 127.0.0.1",
    ]


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        (
            ["GET", "FETCH"],
            "routes[0].methods[1]: not a registered HTTP method: 'FETCH' (did you mean PATCH?)",
        ),
        (["GTE"], "routes[0].methods[0]: not a registered HTTP method: 'GTE' (did you mean GET?)"),
        (
            ["get", "XYZZY"],
            "routes[0].methods[1]: not a registered HTTP method: 'XYZZY' (use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
        ),
    ],
)
def test_methods_must_be_registered_http_methods(methods: list[str], expected: str) -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}, "methods": methods}
    assert errors_of({"routes": [route]}, {"T": "x"}) == [expected]


def test_registered_but_unusual_methods_pass() -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}, "methods": ["QUERY", "propfind"]}
    [r] = parse_config({"routes": [route]}, env={}).routes
    assert r.methods == frozenset({"QUERY", "PROPFIND"})


def test_a_tilde_in_a_token_file_or_ca_file_is_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ca.pem").write_text("x")
    route = {
        "prefix": "/a",
        "tenant": "a",
        "token": {"file": "~/amperity-token"},
        "ca_file": "~/ca.pem",
    }
    [r] = parse_config({"routes": [route]}, env={}).routes
    assert r.tokens[0].location == str(tmp_path / "amperity-token")
    assert r.ca_file == str(tmp_path / "ca.pem")


JWT = make_token("acme")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (
            "AMPERITY_TOKEN",
            "expected a mapping, got a string: to read the token from the environment variable "
            "AMPERITY_TOKEN, write {env: AMPERITY_TOKEN}",
        ),
        (
            "~/amperity-token",
            "expected a mapping, got a string that looks like a path: write {file: <that path>}",
        ),
        (
            JWT,
            "expected a mapping, got a string that looks like a token (not shown): never paste a "
            "token into the config; export it and write {env: AMPERITY_TOKEN}",
        ),
        (
            "0123456789ABCDEF0123456789ABCDEF",  # shaped like an opaque token: never echoed
            "expected a mapping, got a string: write {env: VARIABLE} or {file: PATH}",
        ),
    ],
)
def test_a_string_where_a_token_source_belongs_gets_the_fix(written: str, expected: str) -> None:
    route = {"prefix": "/a", "tenant": "a", "token": written}
    assert errors_of({"routes": [route]}) == [f"routes[0].token: {expected}"]


def test_a_variable_name_from_an_expansion_is_never_echoed() -> None:
    route = {"prefix": "/a", "tenant": "a", "token": "${SECRETISH}"}
    [message] = errors_of({"routes": [route]}, {"SECRETISH": "ABC_DEF_GHI"})
    assert "ABC_DEF_GHI" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "routes:\n\t- prefix: /a\n",
            "line 2, column 1: a tab; YAML forbids tabs for indentation: indent with spaces",
        ),
        (
            "routes:\n  - {prefix: /a, tenant: a, token: {env: ${X}}}\n",
            "line 2, column 43: expected ',' or '}', but got '{'; inside a flow mapping {...} a "
            'value holding ${...} must be quoted: write {key: "${VAR}"}',
        ),
        (
            "routes:\n  - prefix: /a\n    tenant: a: b\n",
            "line 3, column 14: mapping values are not allowed here (a ': ' inside a value: quote the value)",
        ),
    ],
)
def test_common_yaml_mistakes_get_their_position_and_fix(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == [expected]


def test_a_yaml_error_never_quotes_the_line_it_is_on(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(f"routes:\n  - prefix: /a\n    token: {{value: {JWT}}}: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert JWT not in info.value.render() and JWT[:20] not in info.value.render()


def test_check_config_with_tokens_loads_them_as_run_would(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "routes:\n"
        "  - {prefix: /a, tenant: a, token: {file: ~/missing-token}}\n"
        "  - {prefix: /b, tenant: b, token: {env: T}}\n"
    )
    env = {"HOME": str(tmp_path), "T": make_token("b")}
    plain = run_cli("check-config", "--config", str(config), env=env)
    assert plain.returncode == 0, plain.stderr  # the config itself is fine
    checked = run_cli("check-config", "--config", str(config), "--tokens", env=env)
    assert checked.returncode == 1
    missing = f"missing: token file {tmp_path / 'missing-token'} does not exist"
    assert missing in checked.stdout
    assert "ok (in use)" in checked.stdout  # route b


async def test_a_token_that_starts_like_a_jwt_but_does_not_parse_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(
        {"routes": [{"prefix": "/a", "tenant": "a", "token": {"env": "T"}}]}, env={}
    )
    env = {"T": "eyJhbGciOiJIUzI1NiJ9.garbage-pasted"}
    store = TokenStore(
        config.routes, lambda r: make_sources(r, env=env, session=lambda: None, ssl=None)
    )
    caplog.set_level(logging.INFO, "amperity_proxy.tokens")
    assert await store.load_initial() == []
    await store.load_initial()  # the same token again: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "token starts like a JWT but does not parse as one: it is used as an opaque token, and "
        "Amperity will likely refuse it; copy the whole token again from Settings > Security > "
        "API keys"
    ]


def test_log_level_flag_takes_every_level_the_config_takes() -> None:
    result = run_cli("run", "--log-level", "critical", "--config", "/nonexistent.yaml")
    assert "invalid choice" not in result.stderr
    assert "cannot read config file" in result.stderr


async def test_forward_mode_says_whether_the_port_or_the_path_did_not_match(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    """Before: a port mismatch was reported as "the path must be under a route's base path"."""
    proxy = await make_proxy([acme_route(upstream)])  # https://acme.amperity.com:<port>/api
    wrong_port = await raw_request(proxy.port, get("http://acme.amperity.com:9999/api/segments"))
    assert wrong_port.status == 404
    assert message(wrong_port.body) == (
        "no route for http://acme.amperity.com:9999/api/segments; the port does not match: "
        f"routes for acme.amperity.com serve {upstream.port}, not port 9999"
    )
    wrong_path = await raw_request(
        proxy.port, get(f"http://acme.amperity.com:{upstream.port}/v2/segments")
    )
    assert message(wrong_path.body) == (
        f"no route for http://acme.amperity.com:{upstream.port}/v2/segments; the path must be "
        "under a route's base path (/api)"
    )
    assert upstream.requests == []


def test_upstream_failure_details_carry_no_object_reprs() -> None:
    key = ConnectionKey(
        "acme.amperity.com", 443, True, ssl.create_default_context(), None, None, None
    )
    text = detail(aiohttp.ClientConnectorError(key, OSError(111, "Connection refused")))
    assert "object at 0x" not in text
    assert text == (
        "ClientConnectorError: Cannot connect to host acme.amperity.com:443 ssl:SSLContext "
        "[Connection refused]"
    )


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (60, "1 minute"),
        (120, "2 minutes"),
        (3600, "1 hour"),
        (5400, "1.5 hours"),
        (86400, "1 day"),
        (2 * 86400, "2.0 days"),
    ],
)
def test_durations_agree_in_number(seconds: float, words: str) -> None:
    assert in_words(seconds) == words


async def test_the_start_line_names_ten_routes_and_counts_the_rest(tmp_path: Path) -> None:
    """It listed every route: with 1,000 routes the first line a newcomer reads was 60 KB."""
    routes = [
        {"prefix": f"/r{i}", "tenant": f"t{i}", "token": {"env": "ACME_TOKEN"}} for i in range(12)
    ]
    config = {"listen": {"port": 0}, "admin": {"port": 0}, "routes": routes}
    process = await spawn_proxy(
        tmp_path, config, {"ACME_TOKEN": make_token("acme", ttl=86400 * 30)}
    )
    try:
        line = process.listening["message"]
    finally:
        await process.stop()
    assert "/r9 -> https://t9.amperity.com/api (t9)" in line
    assert "/r10 ->" not in line and "/r11 ->" not in line
    assert line.endswith("and 2 more (check-config lists them all)")
