"""`make demo`: the fake Amperity API over TLS, the proxy in front of it, and one request.

Everything runs on 127.0.0.1. `make demo` stops by itself after the request; `make demo-serve`
(`python -m proxy.cli.demo --serve`) keeps both running until Ctrl-C so you can send your own
requests, and prints what each one looked like upstream. The fake's certificates come from
trustme (installed by `make demo`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, parse_config
from proxy.listener import bound_sockets
from proxy.testing import FakeAmperity, RecordedRequest, make_tls, make_token, start_fake
from proxy.tokens import fingerprint

DEMO_TOKEN_TTL = 30 * 86400  # plainly fine: the proxy warns about tokens within 7 days of expiry


def upstream_view(received: RecordedRequest, token: str) -> list[str]:
    """What the fake upstream received, the token shown by its fingerprint only."""
    lines = [f"  {received.method} {received.raw_path}"]
    for name, value in received.headers:
        if name.lower() == "authorization":
            value = f"Bearer <token, fingerprint {fingerprint(token)}>"
        lines.append(f"  {name}: {value}")
    return lines


async def _send(url: str, body: str | None = None) -> tuple[str, str]:
    """Send a demo request with curl when it is installed (what the printed command says),
    else with aiohttp; returns (the command as printed, the status line). `body`: a JSON POST."""
    curl = shutil.which("curl")
    post = ["-X", "POST", "-H", "Content-Type: application/json", "-d", body] if body else []
    shown = f" -X POST -H 'Content-Type: application/json' -d '{body}'" if body else ""
    if curl is not None:
        process = await asyncio.create_subprocess_exec(
            curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", *post, url,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await process.communicate()
        return f"$ curl -s{shown} '{url}'   # no credentials", f"<- {out.decode()}"
    method = "POST" if body else "GET"
    headers = {"Content-Type": "application/json"} if body else {}
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, url, data=body, headers=headers) as response,
    ):
        await response.read()
        return (
            f"{method} {url}   # no credentials (sent with aiohttp: curl is not installed)",
            f"<- {response.status} {response.reason}",
        )


def _config(fake_port: int, ca_file: Path) -> Config:
    """Three routes, one per Amperity API (presets), all in front of the fake."""
    common = {"tenant": "acme", "ca_file": str(ca_file), "token": {"env": "DEMO_AMPERITY_TOKEN"}}
    api = f"https://localhost:{fake_port}/api"
    routes = [
        {"prefix": "/acme", "base_url": api, **common},
        {"prefix": "/acme-profile", "api": "profile", "base_url": api, **common},
        {
            "prefix": "/acme-stream",
            "api": "streaming",
            "base_url": f"https://localhost:{fake_port}/stream/v0",
            **common,
        },
    ]
    for route in routes[1:]:
        route["rate_limit"] = "documented"
    return parse_config(
        {"listen": {"host": "127.0.0.1", "port": 0}, "routes": routes}, source="demo"
    )


async def demo(serve: bool = False) -> None:
    """Run the demo and print what the fake upstream received; with `serve`, keep running."""
    tls = make_tls("localhost")
    fake = FakeAmperity()
    fake_runner, fake_port = await start_fake(fake, tls.server)
    token = make_token("acme", ttl=DEMO_TOKEN_TTL)
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "fake-ca.pem"
        ca_file.write_bytes(tls.ca_pem)
        app = create_app(_config(fake_port, ca_file), env={"DEMO_AMPERITY_TOKEN": token})
        await app.startup()
        runner = web.ServerRunner(app.server())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = bound_sockets(site)[0].getsockname()[1]
        try:
            print(f"fake Amperity API: https://localhost:{fake_port}/api (tenant acme)")
            print(f"proxy:             http://127.0.0.1:{port}/acme -> the fake API")
            await _one_request(fake, f"http://127.0.0.1:{port}/acme/segments?limit=2", token)
            print("\n--- the Profile API (api: profile) and the Streaming API (api: streaming):")
            profile = f"http://127.0.0.1:{port}/acme-profile/indexes/demo/profiles/42"
            await _one_request(fake, profile, token)
            stream = f"http://127.0.0.1:{port}/acme-stream/data/demo-stream"
            await _one_request(fake, stream, token, body='{"event": "demo"}')
            if serve:
                await _serve(fake, port, token)
            else:
                print("\nTo keep both running and send your own requests: make demo-serve")
        finally:
            await runner.cleanup()
            await app.cleanup()
            await fake_runner.cleanup()


async def _one_request(fake: FakeAmperity, url: str, token: str, body: str | None = None) -> None:
    command, status = await _send(url, body)
    print()
    print(command)
    print(status)
    print("\nthe upstream received:")
    print("\n".join(upstream_view(fake.requests[-1], token)))
    verdict = "accepted" if fake.requests[-1].status == 200 else "refused"
    print(f"\nupstream verdict: {fake.requests[-1].status} ({verdict})")


async def _serve(fake: FakeAmperity, port: int, token: str) -> None:
    """Until Ctrl-C: print each request's upstream view as it arrives."""
    print(f"\nServing until Ctrl-C. Try:\n  curl -s 'http://127.0.0.1:{port}/acme/segments'")
    print(f"  curl -s -X POST 'http://127.0.0.1:{port}/acme/segments' -d '{{}}'")
    print("Each request's upstream view is printed below.\n", flush=True)
    seen = len(fake.requests)
    while True:
        await fake.wait_for_requests(seen + 1)
        for received in fake.requests[seen:]:
            print(f"-> upstream answered {received.status}:")
            print("\n".join(upstream_view(received, token)), flush=True)
        seen = len(fake.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.cli.demo", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo(serve=args.serve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
