"""A scripted Redis: a RESP2 server on loopback that answers every script call (EVALSHA, EVAL)
with exact bytes, for replies no real Redis running the proxy's script could give."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


async def _command(reader: asyncio.StreamReader) -> list[bytes]:
    """One command: an array of bulk strings (what redis-py sends)."""
    head = await reader.readline()
    if not head.startswith(b"*"):
        raise ConnectionError("not a RESP array")
    parts = []
    for _ in range(int(head[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


@dataclass
class ScriptedRedis:
    reply: bytes  # the raw RESP answer to every script call
    calls: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                name = (await _command(reader))[0].upper()
                if name in (b"EVALSHA", b"EVAL"):
                    self.calls += 1
                    writer.write(self.reply)
                elif name == b"PING":
                    writer.write(b"+PONG\r\n")
                else:  # CLIENT SETINFO, SELECT, SCRIPT LOAD ...: whatever, OK
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            writer.close()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
