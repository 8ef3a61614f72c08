"""A real `redis-server` on loopback for the shared-limit tests (never a mock)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from tests.support.net import closed_port

INSTALL = "apt-get install redis-server (Debian), or any redis-server / valkey-server on PATH"


def redis_binary() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


class RedisServer:
    """`redis-server` on 127.0.0.1, no persistence; `stop` and `start` again on the same port
    (the outage test)."""

    def __init__(self, binary: str, workdir: Path, password: str | None = None) -> None:
        self.binary = binary
        self.password = password  # --requirepass
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        for _ in range(5):  # a port taken between choosing and binding: choose again
            self.port = self.port or closed_port()
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once; stop() kills it)
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    *(["--requirepass", self.password] if self.password else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if await self._answers():
                return
            self.stop()
            self.port = 0
        raise RuntimeError("redis-server did not start")

    async def _answers(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.write(b"PING\r\n")
            reply = await reader.readline()
            writer.close()
            if reply.startswith((b"+PONG", b"-NOAUTH")):  # up (a password is asked for)
                return True
            await asyncio.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
