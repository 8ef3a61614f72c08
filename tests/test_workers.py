"""`run --workers 2`: both workers serve the port, metrics add up across them, SIGTERM drains all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.support.net import closed_port
from tests.support.process import proxy_command

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_two_workers_share_the_port_and_the_metrics(tmp_path: Path) -> None:
    port, admin = closed_port(), closed_port()
    config = {
        "listen": {"port": port},
        "admin": {"port": admin},
        "routes": [{"prefix": "/acme", "tenant": "acme", "token": {"value": "opaque"}}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMPERITY_", "PROMETHEUS_"))}
    log = (tmp_path / "log").open("wb")
    proc = subprocess.Popen(
        [
            *proxy_command(),
            "run",
            "--config",
            str(tmp_path / "config.yaml"),
            "--workers",
            "2",
            "--log-format",
            "json",
        ],
        env=env,
        stderr=log,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            lines = (tmp_path / "log").read_text().splitlines()
            listening = [json.loads(line) for line in lines if '"listen"' in line]
            if len(listening) == 2:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        pids = {record.get("pid") for record in listening}
        assert len(pids) == 2  # two processes, each listening on the same port
        # worker 1 has no admin listener, and says so (it used to log "(admin on )")
        messages = sorted(str(record["message"]) for record in listening)
        assert f"(admin on 127.0.0.1:{admin})" in messages[0] + messages[1]
        assert any("(admin: served by worker 0)" in m for m in messages)
        assert not any("(admin on )" in m for m in messages)
        for _ in range(20):
            assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404
        status, text = _get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        assert 'amperity_proxy_rejected_requests_total{reason="no_route"} 20.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stopped = [
            line for line in (tmp_path / "log").read_text().splitlines() if '"stopped"' in line
        ]
        assert len(stopped) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
