"""Hung token helpers: an `exec` helper runs in its own process group, the whole group is killed
at `timeout` (a grandchild holding the pipes can't stretch it), no zombie is left, and requests
wait for a refresh at most that long before carrying on."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from proxy.config.sources import TokenSource
from proxy.testing import TEST_SECRET
from proxy.tokens import TokenError
from proxy.tokens.commands import ExecSource
from tests.conftest import ProxyFactory, Upstream, acme_route
from tests.hostile.conftest import LEDGER

# The first run prints a token; later runs (after a 401) start a grandchild that sleeps while
# holding stdout and stderr, the way `sh -c "sleep 25; echo t"` does.
HANGING_HELPER = """
import pathlib, subprocess, sys, time, jwt
state = pathlib.Path(sys.argv[1])
runs = state / "runs"
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
if n > 1:
    subprocess.run(["sleep", sys.argv[3]])
now = int(time.time())
print(jwt.encode({"tenant": "acme", "iat": now, "exp": now + 3600}, sys.argv[2], algorithm="HS256"))
"""


def _processes_with(marker: str) -> list[str]:
    """Lines of `ps` that mention `marker` (children, grandchildren, zombies)."""
    ps = shutil.which("ps")
    assert ps is not None, "ps (Debian's procps) is needed"
    out = subprocess.run(
        [ps, "-eo", "pid,ppid,stat,args"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def _marker() -> str:
    """A unique sleep length, so `ps` finds exactly this test's grandchild."""
    return f"31.{uuid.uuid4().int % 10**6:06d}"


async def test_a_grandchild_holding_the_pipes_is_killed_at_the_timeout() -> None:
    marker = _marker()
    source = ExecSource(
        TokenSource("exec", command=("sh", "-c", f"sleep {marker}; echo t"), timeout=1.0),
        "acme",
        {"PATH": "/usr/bin:/bin"},
    )
    started = asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(source.fetch(), 20)  # the bug: ~31 s (the grandchild's sleep)
    except TokenError as exc:
        assert "did not finish within 1s" in str(exc)
    else:
        raise AssertionError("a hung helper gave a token")
    LEDGER.tried("hung helpers")
    assert asyncio.get_running_loop().time() - started < 10
    assert _processes_with(f"sleep {marker}") == []  # the whole group is gone, no zombie


async def test_requests_wait_for_a_hung_refresh_at_most_its_timeout(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    marker = _marker()
    (tmp_path / "helper.py").write_text(HANGING_HELPER)
    command = [sys.executable, str(tmp_path / "helper.py"), str(tmp_path), TEST_SECRET, marker]
    proxy = await make_proxy(
        [acme_route(upstream, token={"exec": {"command": command, "timeout": 1}})],
        env={"PATH": "/usr/bin:/bin"},
    )
    credential = proxy.store.credential("acme")
    assert credential is not None
    upstream.fake.revoked.add(credential.token)  # every answer is a 401 now
    started = asyncio.get_running_loop().time()
    responses = await asyncio.wait_for(
        asyncio.gather(*(proxy.client.get(f"/acme/x{i}") for i in range(5))), 30
    )
    waited = asyncio.get_running_loop().time() - started
    LEDGER.tried("hung helpers")
    # The 401s come back (the current token is all there is) once the refresh gave up: within
    # its 1 s timeout plus slack, not after the grandchild's 31 s sleep.
    assert [r.status for r in responses] == [401] * 5
    assert waited < 10, waited
    assert (tmp_path / "runs").read_text() == "2"  # one refresh for all five (single flight)
    # The helper's timeout and the requests' wait end together; the group is gone right after.
    for _ in range(200):
        if not _processes_with(f"sleep {marker}"):
            break
        await asyncio.sleep(0.05)
    assert _processes_with(f"sleep {marker}") == []
