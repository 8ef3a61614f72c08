"""`make rules-test`: check and unit-test the Prometheus alert rules with promtool.

promtool comes from Debian's `prometheus` package. This uses one on PATH, else one unpacked
earlier into .tools/, else fetches the package with `apt-get download` and unpacks it (not
installed, no service started) into a temporary folder that becomes .tools/usr/bin only when
complete, so nothing half-made is left behind. When none of that works, the check is skipped
with one line saying what to install, except in CI (`CI=true`), where it fails.

Standard library only: it runs with the Python that runs `make`.

    python3 tools/promtool.py deploy/kubernetes/rules
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
UNPACKED = TOOLS / "usr" / "bin" / "promtool"
INSTALL = "install Debian's prometheus package (apt-get install prometheus) or put promtool on PATH"


def _quiet(command: list[str], cwd: str) -> int:
    done = subprocess.run(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return done.returncode


def _fetch() -> Path | None:
    """Unpack promtool from Debian's package into .tools/, or None (with the reason printed)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    TOOLS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TOOLS, prefix="fetch-") as tmp:
        download = ["apt-get", "download", "prometheus"]
        if _quiet(download, tmp) != 0:
            _quiet(["apt-get", "update", "-qq"], tmp)
            if _quiet(download, tmp) != 0:
                return None
        debs = glob.glob(os.path.join(tmp, "prometheus_*.deb"))
        unpacked = Path(tmp) / "root"
        if (
            not debs
            or subprocess.run(["dpkg-deb", "-x", debs[0], str(unpacked)], check=False).returncode
        ):
            return None
        found = unpacked / "usr" / "bin" / "promtool"
        if not found.is_file():
            return None
        UNPACKED.parent.mkdir(parents=True, exist_ok=True)
        os.replace(found, UNPACKED)  # whole or not at all
    return UNPACKED


def promtool() -> str | None:
    on_path = shutil.which("promtool")
    if on_path:
        return on_path
    if UNPACKED.is_file():
        return str(UNPACKED)
    fetched = _fetch()
    return str(fetched) if fetched else None


def main() -> int:
    rules = Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes/rules")
    tool = promtool()
    if tool is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            print(f"rules-test: FAILED - promtool is required in CI: {INSTALL}", file=sys.stderr)
            return 1
        print(f"rules-test: SKIPPED - promtool not found: {INSTALL}")
        return 0
    for command in (
        [tool, "check", "rules", str(rules / "amperity-proxy.rules.yaml")],
        [tool, "test", "rules", str(rules / "amperity-proxy.rules.test.yaml")],
    ):
        print("$", " ".join(command[1:]), flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
