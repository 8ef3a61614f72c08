"""`make security`'s scorecard: the hostile and fault suites' ledger, pip-audit on the lock file,
and slowhttptest (slow headers, slow body) against a local proxy when the tool is installed.

    python -m tests.hostile.scorecard LEDGER.json

Exits 1 when a number that must be zero is not, or a suite case failed.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml

from proxy.testing import FakeAmperity, make_tls, make_token, start_fake
from tests.support.process import proxy_command

ROOT = Path(__file__).resolve().parents[2]


def pip_audit() -> tuple[str, bool | None]:
    """(summary, ok). Offline machines can't reach a vulnerability database: that is reported,
    not hidden, and does not count as a pass."""
    tool = Path(sys.executable).parent / "pip-audit"
    if not tool.exists():
        return "not installed", None
    result = subprocess.run(
        [
            str(tool),
            "-r",
            str(ROOT / "requirements.lock"),
            "--require-hashes",
            "--disable-pip",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        return f"failed to run (exit {result.returncode})", None
    deps = report.get("dependencies", [])
    vulns = sum(len(d.get("vulns", [])) for d in deps)
    skipped = sum(1 for d in deps if d.get("skip_reason"))
    audited = len(deps) - skipped
    summary = f"{vulns} known vulnerabilities in {audited} audited dependencies"
    if skipped:
        summary += f"; {skipped} could not be audited (no vulnerability database reachable)"
    if audited == 0:
        return summary, None  # nothing was checked: neither a pass nor a failure
    return summary, vulns == 0


async def _ready(url: str) -> None:
    for _ in range(300):
        try:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=1)
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the proxy did not become ready")


async def _slowhttptest(mode: str, seconds: int) -> str:
    tls = make_tls("localhost")
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ca.pem").write_bytes(tls.ca_pem)
        config = {
            "listen": {"port": 18380},
            "admin": {"port": 19390},
            "log": {"format": "json", "level": "WARNING"},
            "limits": {"header_timeout": 10, "body_timeout": 10},
            "routes": [
                {
                    "prefix": "/acme",
                    "tenant": "acme",
                    "base_url": f"https://localhost:{port}/api",
                    "ca_file": str(work / "ca.pem"),
                    "token": {"env": "SCORECARD_TOKEN"},
                }
            ],
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "SCORECARD_TOKEN": make_token("acme")}
        proxy = await asyncio.create_subprocess_exec(
            *proxy_command(),
            "run",
            "--config",
            str(work / "config.yaml"),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            await _ready("http://127.0.0.1:19390/readyz")
            args = [
                "slowhttptest",
                mode,
                "-c",
                "1000",
                "-i",
                "5",
                "-r",
                "200",
                "-l",
                str(seconds),
                "-u",
                "http://127.0.0.1:18380/acme/x",
                "-g",
                "-o",
                str(work / "slow"),
                "-p",
                "3",
            ]
            if mode == "-B":
                args += ["-s", "8192", "-t", "POST"]
            tool = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            await asyncio.wait_for(tool.wait(), seconds + 60)
            rows = list(csv.DictReader((work / "slow.csv").open()))
        finally:
            proxy.terminate()
            await proxy.wait()
            await runner.cleanup()
    unavailable = [r for r in rows if r.get("service available", "1").strip() == "0"]
    return f"{len(unavailable)} of {len(rows)} samples with the service unavailable"


def slowhttptest() -> list[tuple[str, str, bool | None]]:
    if shutil.which("slowhttptest") is None:
        return [("slowhttptest", "not installed (apt-get install slowhttptest)", None)]
    results: list[tuple[str, str, bool | None]] = []
    for name, mode in (("slow headers", "-H"), ("slow body", "-B")):
        summary = asyncio.run(_slowhttptest(mode, 30))
        results.append((f"slowhttptest {name}", summary, summary.startswith("0 of")))
    return results


def main() -> int:
    ledger = json.loads(Path(sys.argv[1]).read_text()) if len(sys.argv) > 1 else {}
    failed_cases = int(os.environ.get("SUITE_FAILED", "0"))
    rows: list[tuple[str, str, bool | None]] = [
        (
            "hostile requests tried",
            str(ledger.get("hostile_requests", 0)),
            ledger.get("hostile_requests", 0) > 0,
        ),
        (
            "reached a wrong place (must be 0)",
            str(ledger.get("wrong_place", 0)),
            ledger.get("wrong_place", 0) == 0,
        ),
        (
            "token leaks (must be 0)",
            str(ledger.get("token_leaks", 0)),
            ledger.get("token_leaks", 0) == 0,
        ),
        ("desyncs (must be 0)", str(ledger.get("desyncs", 0)), ledger.get("desyncs", 0) == 0),
        ("fault cases passed", str(ledger.get("fault_cases", 0)), failed_cases == 0),
    ]
    # Attempts per attack category (reload races, policy bypass, exec helpers, secrets in
    # errors, ...): each must have been tried, and any failure shows in the suite's result.
    for category, count in sorted(ledger.get("categories", {}).items()):
        rows.append((f"  {category} attempts", str(count), count > 0 and failed_cases == 0))
    audit, audit_ok = pip_audit()
    rows.append(("pip-audit (requirements.lock)", audit, audit_ok))
    rows += slowhttptest()
    width = max(len(r[0]) for r in rows)
    print("\namperity-auth-proxy security scorecard\n")
    for name, value, ok in rows:
        mark = "n/a " if ok is None else ("ok  " if ok else "FAIL")
        print(f"  {mark}  {name.ljust(width)}  {value}")
    print()
    return 1 if any(ok is False for _, _, ok in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
