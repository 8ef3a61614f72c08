"""Waiting for a started proxy to serve: `make ready`, `python -m proxy.cli.readiness`.

Polls the admin listener's `/readyz` until it answers 200, so a script can start the proxy in
the background and send its first request only when the proxy serves (the README's legacy-tool
snippet). Standard library only, so it runs with any Python 3.11, even while `make run` is
still installing the runtime environment.

    python -m proxy.cli.readiness [--admin http://127.0.0.1:9090] [--timeout 120]

Exit status 0 when ready, 1 when the deadline passed (with what was last seen).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request

DEFAULT_ADMIN = "http://127.0.0.1:9090"  # config.example.yaml's admin listener
POLL = 0.2  # seconds between attempts


def probe(admin: str) -> tuple[bool, str]:
    """One attempt: (ready, what was seen)."""
    url = admin.rstrip("/") + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (http URL we were given)
            return answer.status == 200, f"{url} answered {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code} (not ready: a route without a token?)"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason} (not listening yet)"


def wait(admin: str, timeout: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    seen = "nothing tried"
    while True:
        ready, seen = probe(admin)
        if ready or time.monotonic() >= deadline:
            return ready, seen
        time.sleep(POLL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.cli.readiness", description="Wait until the proxy serves."
    )
    parser.add_argument(
        "--admin", default=DEFAULT_ADMIN, help=f"admin URL (default {DEFAULT_ADMIN})"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds (default 120)")
    args = parser.parse_args(argv)
    ready, seen = wait(args.admin, args.timeout)
    if ready:
        print(f"proxy ready ({seen})", file=sys.stderr)
        return 0
    print(
        f"proxy not ready after {args.timeout:g} s; last: {seen}. "
        "Look at the proxy's own output for the reason.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
