"""The proxy as a process: one command line, one clean environment, and the two ways tests
use them (a command run to completion, a proxy served until stopped)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent


def proxy_command(*args: str) -> list[str]:
    """`python -m proxy ARGS` with this test run's interpreter."""
    return [sys.executable, "-m", "proxy", *args]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any AMPERITY_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPERITY_")}
    return env | (extra or {})


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run an `amperity-proxy` command to completion (check-config, token-info, a refused run)."""
    return subprocess.run(
        proxy_command(*args),
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


class ProxyProcess:
    """`python -m proxy run` as a real process with a JSON log on a pipe (tests that need
    signals, a Unix socket or a process boundary)."""

    def __init__(self, proc: asyncio.subprocess.Process, listening: dict[str, Any]) -> None:
        self.proc = proc
        self.listening = listening

    @property
    def proxy(self) -> str:
        return str(self.listening["listen"][0])

    @property
    def admin(self) -> str:
        return str(self.listening["admin"][0])

    async def log_until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The next JSON log record that matches (bounded wait)."""
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), 30)
            assert line, "the proxy exited"
            record: dict[str, Any] = json.loads(line)
            if predicate(record):
                return record

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def spawn_proxy(
    workdir: Path, config: dict[str, Any] | None, env: dict[str, str] | None = None
) -> ProxyProcess:
    """Write `config`, start the proxy, and wait until it logs that it listens. `config`
    None: no file at all (the AMPERITY_PROXY_* variables in `env` configure it)."""
    args = ["--log-format", "json"]
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        args = ["--config", str(workdir / "config.yaml"), *args]
    proc = await asyncio.create_subprocess_exec(
        *proxy_command("run", *args),
        env=clean_env(env),
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
    )
    process = ProxyProcess(proc, {})
    try:
        process.listening = await process.log_until(lambda r: "listen" in r and "admin" in r)
    except BaseException:
        await process.stop()
        raise
    return process
