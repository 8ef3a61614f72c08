"""The fake Amperity on its own, until Ctrl-C: `make fake`, `python -m proxy.fake_amperity`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from proxy.testing.fake import FakeAmperity, make_token, start_fake
from proxy.testing.tls import FakeTLS, make_tls


async def serve_standalone(
    tls: FakeTLS, port: int, tenant: str, ca_path: Path, out: TextIO
) -> None:
    """`python -m proxy.testing.fake`: the fake on its own until Ctrl-C, for users' own
    integration tests. Prints its URL, the CA bundle to trust (written to `ca_path` already)
    and a token it accepts, as the exports config.example.yaml reads."""
    fake = FakeAmperity()
    runner, bound = await start_fake(fake, tls.server, port=port)
    token = make_token(tenant, ttl=30 * 86400)
    print(
        f"fake Amperity API: https://localhost:{bound}/api (tenant {tenant}; Ctrl-C stops it)",
        file=out,
    )
    print(f"CA bundle:         {ca_path}", file=out)
    print(f"token (30 days):   {token}", file=out)
    print("\nTo put the proxy in front of it (config.example.yaml), in another shell:", file=out)
    print(f"  export AMPERITY_TENANT={tenant} AMPERITY_TOKEN={token}", file=out)
    print(
        f"  export AMPERITY_BASE_URL=https://localhost:{bound}/api AMPERITY_CA_FILE={ca_path}",
        file=out,
    )
    print("  make run", file=out, flush=True)
    try:
        await asyncio.Event().wait()  # until cancelled (Ctrl-C)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.testing.fake",
        description="Run the bundled fake Amperity API over TLS (for your own integration tests).",
    )
    parser.add_argument(
        "--port", type=int, default=8443, help="TCP port on 127.0.0.1 (default 8443; 0: any)"
    )
    parser.add_argument(
        "--tenant", default="acme", help="tenant the printed token is for (default acme)"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=Path(tempfile.gettempdir()) / "fake-amperity-ca.pem",
        help="where to write the CA bundle (default: fake-amperity-ca.pem in the temp folder)",
    )
    args = parser.parse_args(argv)
    tls = make_tls("localhost")
    args.ca_file.write_bytes(tls.ca_pem)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_standalone(tls, args.port, args.tenant, args.ca_file, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
