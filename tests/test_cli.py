"""The command line, run as a real process: check-config, start-up failures, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy import __version__
from proxy.cli.main import main
from proxy.testing import make_token
from tests.conftest import ProcessUpstream
from tests.support.process import run_cli as _run
from tests.support.process import spawn_proxy

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run(*args, env={"AMPERITY_TENANT": "acme"} | (env or {}))  # the example needs it


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"amperity-proxy {__version__}")


def test_check_config_accepts_the_example() -> None:
    result = run_cli("check-config", "--config", "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "config.example.yaml: ok (1 route(s))" in result.stdout


def test_check_config_lists_every_error_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"prot": 1},
                "routes": [
                    {"prefix": "/a", "tenant": "a", "token": {"env": "A"}},
                    {"prefix": "b", "tenant": "b", "token": {"env": "B", "file": "/x"}},
                ],
            }
        )
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}: 3 error(s)",
        "  listen.prot: unknown key (did you mean 'port'?)",
        "  routes[1].prefix: must start with '/', got 'b'",
        "  routes[1].token: expected exactly one of env, file, value, exec, client_credentials",
    ]
    assert result.stdout == ""


def test_config_path_defaults_to_the_environment_variable(tmp_path: Path) -> None:
    result = run_cli("check-config", env={"AMPERITY_PROXY_CONFIG": "config.example.yaml"})
    assert result.returncode == 0
    missing = run_cli("check-config")
    assert missing.returncode == 2
    assert "pass --config PATH, set AMPERITY_PROXY_CONFIG, mount one at" in missing.stderr


def test_run_without_a_token_names_the_variable_and_exits_nonzero() -> None:
    result = run_cli("run", "--config", "config.example.yaml", "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "amperity-proxy: route amperity: environment variable AMPERITY_TOKEN is not set"
    )
    assert "Traceback" not in result.stderr


def test_run_on_a_busy_port_fails_cleanly() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli(
            "run",
            "--config",
            "config.example.yaml",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            "127.0.0.1:0",
            env={"AMPERITY_TOKEN": "opaque"},
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (proxy)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "opaque" not in result.stderr
    # what to do about it, and it is the last thing printed (the token was loaded before,
    # and its log line used to come out after the error)
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"amperity-proxy: cannot listen on 127.0.0.1:{port} (proxy): the port is busy "
        "(another amperity-proxy?); stop what uses it, or pick another port with "
        "--listen 127.0.0.1:PORT"
    )
    assert "token loaded" in result.stderr


def test_bad_listen_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--config", "config.example.yaml", "--listen", "nope"])
    assert info.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


async def test_sigterm_drains_in_flight_requests_then_exits_zero(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    fake = process_upstream.fake
    config = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "shutdown_timeout": 20,
        "routes": [process_upstream.route()],
    }
    process = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    proc = process.proc
    try:
        proxy_addr, admin_addr = process.proxy, process.admin
        proxy_port = int(proxy_addr.rsplit(":", 1)[1])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            assert (await session.get(f"http://{admin_addr}/readyz")).status == 200
            in_flight = asyncio.create_task(session.get(f"http://{proxy_addr}/acme/_fake/hold"))
            await asyncio.wait_for(fake.held.wait(), 30)

            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while (await session.get(f"http://{admin_addr}/readyz")).status != 503:
                assert time.monotonic() < deadline, "/readyz never turned 503"
                await asyncio.sleep(0.02)
            while True:  # the listener stops accepting new connections
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                    writer.close()
                except ConnectionRefusedError:
                    break
                assert time.monotonic() < deadline, "the proxy kept accepting connections"
                await asyncio.sleep(0.02)
            assert not in_flight.done()

            fake.release.set()
            response = await in_flight
            assert response.status == 200
            assert await response.json() == {"held": True}
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await process.stop()
    assert [r.raw_path for r in fake.requests] == ["/api/_fake/hold"]


def test_listen_flag_on_a_public_address_needs_allow_clients() -> None:
    result = run_cli(
        "run",
        "--config",
        "config.example.yaml",
        "--listen",
        "0.0.0.0:0",
        env={"AMPERITY_TOKEN": "opaque"},
    )
    assert result.returncode == 2
    assert "listen.host: 0.0.0.0 is not a loopback address" in result.stderr
    assert "listen.allow_clients" in result.stderr
