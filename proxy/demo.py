"""`make demo`: the fake Amperity API over TLS, the proxy in front of it, and one request.

Needs the dev extra (trustme). Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.config import parse_config
from proxy.fake_amperity import FakeAmperity, make_tls, make_token, start_fake
from proxy.tokens import fingerprint


async def demo() -> None:
    """Run the demo and print what the fake upstream received."""
    tls = make_tls("localhost")
    fake = FakeAmperity()
    fake_runner, fake_port = await start_fake(fake, tls.server)
    token = make_token("acme")
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "fake-ca.pem"
        ca_file.write_bytes(tls.ca_pem)
        config = parse_config(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    {
                        "prefix": "/acme",
                        "tenant": "acme",
                        "base_url": f"https://localhost:{fake_port}/api",
                        "ca_file": str(ca_file),
                        "token": {"env": "DEMO_AMPERITY_TOKEN"},
                    }
                ],
            },
            source="demo",
        )
        app = create_app(config, env={"DEMO_AMPERITY_TOKEN": token})
        await app.startup()
        runner = web.ServerRunner(app.server())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/acme/segments?limit=2"
        try:
            print(f"fake Amperity API: https://localhost:{fake_port}/api (tenant acme)")
            print(f"proxy:             http://127.0.0.1:{port}/acme -> the fake API\n")
            print(f"$ curl '{url}'   # no credentials")
            async with aiohttp.ClientSession() as client, client.get(url) as response:
                print(f"<- {response.status} {response.reason}")
                await response.read()
            received = fake.requests[-1]
            print("\nthe upstream received:")
            print(f"  {received.method} {received.raw_path}")
            for name, value in received.headers:
                if name.lower() == "authorization":
                    value = f"Bearer <token, fingerprint {fingerprint(token)}>"
                print(f"  {name}: {value}")
            verdict = "accepted" if received.status == 200 else "refused"
            print(f"\nupstream verdict: {received.status} ({verdict})")
        finally:
            await runner.cleanup()
            await app.cleanup()
            await fake_runner.cleanup()


def main() -> None:
    asyncio.run(demo())


if __name__ == "__main__":
    main()
