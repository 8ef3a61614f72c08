"""Who may use the proxy: browser and DNS-rebinding protections, client networks, client
token, Unix socket, per-route policy, and the audit trail of refusals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, parse_config
from proxy.testing import FakeAmperity, FakeTLS, make_token
from tests.conftest import ProxyFactory, Upstream, acme_route, get, raw_request, tls_route
from tests.support.envelope import message
from tests.support.process import spawn_proxy


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8080",
        "localhost",
        "LOCALHOST:1",
        "[::1]:8080",
        "[::1]",
        "127.0.0.1",
        "localhost.",
    ],
)
async def test_loopback_host_names_are_accepted(
    make_proxy: ProxyFactory, upstream: Upstream, host: str
) -> None:
    proxy = await make_proxy()
    request = f"GET /acme/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    assert (await raw_request(proxy.port, request)).status == 200
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "host", ["attacker.example:8080", "127.0.0.1.nip.io", "localhost.attacker.example", "10.0.0.1"]
)
async def test_rebinding_style_hosts_get_403(
    make_proxy: ProxyFactory, upstream: Upstream, host: str
) -> None:
    proxy = await make_proxy()
    request = f"GET /acme/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    response = await raw_request(proxy.port, request)
    assert response.status == 403
    assert "listen.allowed_hosts" in message(response.body)
    assert upstream.requests == []


async def test_allowed_hosts_extend_the_list(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy(extra={"listen": {"allowed_hosts": ["amperity-proxy.internal"]}})
    ok = get("/acme/x").replace(b"Host: 127.0.0.1", b"Host: Amperity-Proxy.internal:8080")
    assert (await raw_request(proxy.port, ok)).status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403),
        ({"Sec-Fetch-Site": "none"}, 200),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Origin": "https://tool.example.com"}, 200),
        ({"Origin": "HTTPS://TOOL.example.com/"}, 200),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://tool.example.com"}, 200),
    ],
)
async def test_browser_requests_are_refused_unless_their_origin_is_allowed(
    make_proxy: ProxyFactory, upstream: Upstream, headers: dict[str, str], status: int
) -> None:
    proxy = await make_proxy(extra={"listen": {"allowed_origins": ["https://tool.example.com"]}})
    response = await proxy.client.post("/acme/workflow/runs", headers=headers, data=b"{}")
    assert response.status == status
    assert not any(h.lower().startswith("access-control-") for h in response.headers)
    if status == 403:
        assert "listen.allowed_origins" in message(await response.read())
        assert upstream.requests == []
    else:
        assert len(upstream.requests) == 1


async def test_preflight_is_refused_without_cors_headers(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    response = await proxy.client.options(
        "/acme/x",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 403
    assert not any(h.lower().startswith("access-control-") for h in response.headers)
    assert upstream.requests == []


async def _get_from(port: int, source: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(get("/acme/x"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(data.split(b" ", 2)[1])


async def test_allow_clients_is_checked_for_every_connection(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(extra={"listen": {"allow_clients": ["127.0.0.1/32"]}})
    assert await _get_from(proxy.port, "127.0.0.2") == 403
    assert await _get_from(proxy.port, "127.0.0.1") == 200
    assert len(upstream.requests) == 1


async def test_default_allow_clients_is_loopback(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy()
    assert await _get_from(proxy.port, "127.0.0.2") == 200


async def test_reverse_mode_client_token(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy(
        extra={"listen": {"client_token": {"env": "CLIENT_TOKEN"}}},
        env={"CLIENT_TOKEN": "s3cret-client"},
    )
    ok = await proxy.client.get("/acme/x", headers={"X-Proxy-Token": "s3cret-client"})
    wrong = await proxy.client.get("/acme/x", headers={"X-Proxy-Token": "s3cret-clienT"})
    missing = await proxy.client.get("/acme/x")
    assert (ok.status, wrong.status, missing.status) == (200, 403, 403)
    assert "X-Proxy-Token" in message(await missing.read())
    [seen] = upstream.requests
    assert seen.header("X-Proxy-Token") is None  # never forwarded


async def test_route_policy_restricts_methods_and_paths(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    route = acme_route(upstream, methods=["get", "HEAD"], paths=[r"/segments(/[^/]+)?"])
    proxy = await make_proxy([route])
    assert (await proxy.client.get("/acme/segments")).status == 200
    assert (await proxy.client.get("/acme/segments/123")).status == 200
    post = await proxy.client.post("/acme/segments", data=b"{}")
    assert post.status == 403
    assert message(await post.read()) == "route acme allows only GET, HEAD"
    for path in ("/acme/workflows", "/acme/segments/1/2", "/acme", "/acme/segmentsx"):
        response = await proxy.client.get(path)
        assert response.status == 403, path
        assert "does not allow this path" in message(await response.read())
    assert [r.raw_path for r in upstream.requests] == ["/api/segments", "/api/segments/123"]
    text = await proxy.metrics_text()
    assert 'amperity_proxy_rejected_requests_total{reason="forbidden_method"} 1.0' in text
    assert 'amperity_proxy_rejected_requests_total{reason="forbidden_path"} 4.0' in text


async def test_refusals_are_audited_and_counted(
    make_proxy: ProxyFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    caplog.set_level(logging.INFO, "amperity_proxy.access")
    await proxy.client.get("/acme/x", headers={"Origin": "https://evil.example"})
    await raw_request(proxy.port, get("http://evil.example/api/x"))
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    refused = [f for f in fields if f.get("refused")]
    assert [(f["refused"], f["status"], f["client"]) for f in refused] == [
        ("forbidden_origin", 403, "127.0.0.1"),
        ("foreign_host", 403, "127.0.0.1"),
    ]
    text = await proxy.metrics_text()
    for reason in (
        "forbidden_client",
        "forbidden_host",
        "bad_client_token",
        "connect",
        "upgrade",
        "ambiguous_tenant",
    ):
        assert f'amperity_proxy_rejected_requests_total{{reason="{reason}"}} 0.0' in text
    assert 'amperity_proxy_rejected_requests_total{reason="forbidden_origin"} 1.0' in text
    assert 'amperity_proxy_rejected_requests_total{reason="foreign_host"} 1.0' in text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "myhost.example"])  # noqa: S104
def test_non_loopback_listen_needs_explicit_allow_clients(host: str) -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    with pytest.raises(ConfigError) as info:
        parse_config({"listen": {"host": host}, "routes": [route]}, env={})
    [error] = info.value.errors
    assert error.startswith(f"listen.host: {host} is not a loopback address")
    assert "listen.allow_clients" in error
    config = parse_config(
        {"listen": {"host": host, "allow_clients": ["10.0.0.0/8"]}, "routes": [route]}, env={}
    )
    assert config.listen.client_networks == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (
            {"allow_clients": ["not-a-net"]},
            "listen.allow_clients[0]: expected a CIDR network like 10.0.0.0/8 or ::1/128, got 'not-a-net'",
        ),
        (
            {"allowed_hosts": ["host:80"]},
            "listen.allowed_hosts[0]: expected a host name or IP address without a port, got 'host:80'",
        ),
        (
            {"allowed_origins": ["https://x.example/path"]},
            "listen.allowed_origins[0]: expected an origin like https://tool.example.com[:port], got 'https://x.example/path'",
        ),
        (
            {"unix": {"path": "/tmp/x.sock", "mode": "999"}},
            "listen.unix.mode: expected an octal string like \"0660\", got '999'",
        ),
        ({"unix": {"mode": "0660"}}, "listen.unix.path: is required"),
        (
            {"client_token": {"value": "x"}},
            "listen.client_token.value: unknown key; allowed: env, file",
        ),
        ({"allowed_host": []}, "listen.allowed_host: unknown key (did you mean 'allowed_hosts'?)"),
    ],
)
def test_listen_access_settings_errors(listen: dict[str, Any], expected: str) -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    with pytest.raises(ConfigError) as info:
        parse_config({"listen": listen, "routes": [route]}, env={})
    assert info.value.errors[0] == expected


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ({"allow_clients": ["nope"]}, "admin.allow_clients[0]: expected a CIDR network"),
        ({"allowed_hosts": ["a b"]}, "admin.allowed_hosts[0]: expected a host name or IP"),
        ({"header_timeout": 0}, "admin.header_timeout: must be greater than 0, got 0"),
        ({"max_connections": 0}, "admin.max_connections: must be at least 1, got 0"),
        (
            {"allowed_origins": []},
            "admin.allowed_origins: unknown key (did you mean 'allowed_hosts'?)",
        ),
    ],
)
def test_admin_listener_settings_errors(admin: dict[str, Any], expected: str) -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    with pytest.raises(ConfigError) as info:
        parse_config({"admin": admin, "routes": [route]}, env={})
    assert info.value.errors[0].startswith(expected), info.value.errors


def test_admin_listener_settings_defaults() -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    config = parse_config({"routes": [route]}, env={})
    assert config.admin.client_networks == ("127.0.0.0/8", "::1/128")
    assert config.admin_settings.header_timeout == 10.0
    assert config.admin_settings.max_connections == 256
    assert config.enable_reload is False


def test_route_policy_config_errors() -> None:
    route = {
        "prefix": "/a",
        "tenant": "a",
        "token": {"env": "T"},
        "methods": ["GET", "G T"],
        "paths": ["(unclosed"],
    }
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [route]}, env={})
    assert info.value.errors == [
        "routes[0].methods[1]: not a registered HTTP method: 'G T' (did you mean GET?)",
        "routes[0].paths[0]: RE2 can't run '(unclosed' (missing ): (unclosed); patterns run "
        "on RE2, which has no backreferences or lookaround: see the README's 'Regular "
        "expressions'",
    ]


@pytest.mark.parametrize(
    ("where", "pattern", "reason"),
    [
        ("paths", r"/(a)\1", r"invalid escape sequence: \1"),
        ("paths", "/segments/(?!admin)", "invalid perl operator: (?!"),
        ("paths", "/(?<=x)y", "invalid perl operator: (?<="),
        ("paths", "/x{1001}", "invalid repetition size: {1001}"),
        ("id_patterns", "(?=[0-9])[0-9a-f]+", "invalid perl operator: (?="),
    ],
)
def test_check_config_refuses_patterns_re2_cannot_run(
    where: str, pattern: str, reason: str
) -> None:
    """Config regexes run per request on RE2 (linear time); what needs backtracking is refused
    at load time with RE2's reason, never silently run on Python's `re`."""
    route: dict[str, object] = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    if where == "paths":
        route["paths"] = [pattern]
        path = "routes[0].paths[0]"
    else:
        route["rate_limit"] = {"id_patterns": [pattern]}
        path = "routes[0].rate_limit.id_patterns[0]"
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [route]}, env={})
    [error] = info.value.errors
    assert error.startswith(f"{path}: RE2 can't run {pattern!r} ({reason})")
    assert "README's 'Regular expressions'" in error


async def test_unix_socket_listener_with_mode(tmp_path: Path, tls: FakeTLS) -> None:
    from proxy.testing import start_fake

    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    sock_path = tmp_path / "proxy.sock"
    config = {
        "listen": {"unix": {"path": str(sock_path), "mode": "0660"}},
        "admin": {"port": 0},
        "routes": [tls_route(port, tmp_path / "ca.pem")],
    }
    process = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    proc = process.proc
    try:
        assert process.listening["listen"] == [f"unix:{sock_path}"]
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
        assert stat.S_ISSOCK(sock_path.stat().st_mode)
        connector = aiohttp.UnixConnector(path=str(sock_path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://localhost/acme/x") as response,
        ):
            assert response.status == 200
        access = await process.log_until(lambda r: r.get("logger") == "amperity_proxy.access")
        assert access["client"] == f"uid:{os.getuid()}"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert not sock_path.exists()  # removed on shutdown
    finally:
        await process.stop()
        await runner.cleanup()
    assert [r.raw_path for r in fake.requests] == ["/api/x"]


def test_re2_is_loaded_only_when_a_config_has_patterns() -> None:
    """RE2 costs about 2 MiB of RSS: a proxy with no `paths` and no rate limit never loads it."""
    import subprocess
    import sys

    script = (
        "import sys; from proxy.app import create_app; from proxy.config import parse_config; "
        "r = {'prefix': '/a', 'tenant': 'a', 'token': {'env': 'T'}}; "
        "create_app(parse_config({'routes': [r]}, env={}), env={'T': 'x'}); "
        "print('re2' in sys.modules); "
        "parse_config({'routes': [{**r, 'paths': ['/x']}]}, env={}); "
        "print('re2' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True"]
