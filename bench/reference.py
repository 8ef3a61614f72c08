"""The plain aiohttp pass-through the proxy is compared with: no features, just streaming.

    python bench/reference.py LISTEN_PORT UPSTREAM_BASE_URL [CA_FILE]

It injects a fixed Authorization header, copies the other headers, streams the body up and the
response down. No routing, no policy, no logging, no metrics: the floor a full-featured
aiohttp proxy starts from.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiohttp
from aiohttp import web
from yarl import URL

HOP = {"connection", "keep-alive", "transfer-encoding", "host", "te", "trailer", "upgrade"}


async def main(port: int, base: str, ca_file: str | None) -> None:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    session = aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Authorization"] = "Bearer reference"
        data = request.content if request.body_exists else None
        async with session.request(
            request.method,
            URL(base + request.raw_path, encoded=True),
            headers=headers,
            data=data,
            allow_redirects=False,
            ssl=context if context is not None else True,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
