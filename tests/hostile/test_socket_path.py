"""The Unix socket path: the proxy removes only a socket it created itself; a path that holds
a user's file or symlink is refused and left alone; a live proxy's socket is never taken over;
a stale socket is replaced with a log line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.testing import FakeTLS, make_token
from tests.conftest import Upstream, tls_route
from tests.hostile.conftest import LEDGER
from tests.support.process import proxy_command, run_cli, spawn_proxy

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, upstream: Upstream, tls: FakeTLS, sock: Path) -> dict[str, Any]:
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    return {
        "listen": {"unix": {"path": str(sock), "mode": "0600"}},
        "admin": {"port": 0},
        "routes": [tls_route(upstream.port, tmp_path / "ca.pem")],
    }


def _run(workdir: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`run` that is expected to refuse to start."""
    (workdir / "refused.yaml").write_text(yaml.safe_dump(config))
    env = {"ACME_TOKEN": make_token("acme")}
    return run_cli("run", "--config", str(workdir / "refused.yaml"), env=env)


async def _get(sock: Path) -> int:
    connector = aiohttp.UnixConnector(path=str(sock))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://localhost/acme/x") as response,
    ):
        return response.status


def test_a_regular_file_at_the_path_is_refused_and_kept(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    sock = tmp_path / "proxy.sock"
    sock.write_text("a user's notes")
    result = _run(tmp_path, _config(tmp_path, upstream, tls, sock))
    LEDGER.tried("socket path")
    assert result.returncode == 1
    assert "exists and is not a socket" in result.stderr
    assert sock.read_text() == "a user's notes"


def test_a_symlink_at_the_path_is_refused_and_kept(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    sock = tmp_path / "proxy.sock"
    sock.symlink_to(target)
    result = _run(tmp_path, _config(tmp_path, upstream, tls, sock))
    LEDGER.tried("socket path")
    assert result.returncode == 1
    assert "is not a socket" in result.stderr
    assert sock.is_symlink() and target.read_text() == "keep me"


async def test_a_live_proxys_socket_is_never_taken_over(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    sock = tmp_path / "proxy.sock"
    config = _config(tmp_path, upstream, tls, sock)
    first = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    try:
        assert await _get(sock) == 200
        second = await asyncio.to_thread(_run, tmp_path, config)
        LEDGER.tried("socket path")
        assert second.returncode == 1
        assert "in use by a running process" in second.stderr
        # The first proxy still owns its socket and still answers on it.
        assert sock.exists()
        assert await _get(sock) == 200
        first.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.proc.wait(), 30) == 0
        assert not sock.exists()  # its own socket: removed when it stops
    finally:
        await first.stop()


async def test_a_stale_socket_is_replaced_with_a_log_line(
    tmp_path: Path, upstream: Upstream, tls: FakeTLS
) -> None:
    sock = tmp_path / "proxy.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays; nobody listens: what a crashed proxy leaves behind
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_config(tmp_path, upstream, tls, sock)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPERITY_")}
    env["ACME_TOKEN"] = make_token("acme")
    proc = await asyncio.create_subprocess_exec(
        *proxy_command(),
        "run",
        "--config",
        str(tmp_path / "config.yaml"),
        "--log-format",
        "json",
        env=env,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, b"".join(lines)
            lines.append(line)
            if b'"listen"' in line:
                break
        text = b"".join(lines).decode()
        LEDGER.tried("socket path")
        assert "stale socket" in text and str(sock) in text
        assert await _get(sock) == 200  # and the new proxy serves on it
    finally:
        proc.kill()
        await proc.wait()
