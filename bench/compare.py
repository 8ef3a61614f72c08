"""`make bench-compare REVS="A B ..."`: the proxy's code at several git revisions, side by side.

Each revision's `proxy/` package is exported with `git archive` (the checkout is not touched)
and run from the same runtime-only interpreter as `make bench`, in front of the same nginx, with
the same config. Rounds alternate the order of the revisions so a noisy machine hits them alike;
medians are printed (nothing is written to RESULTS.md). This is how "no regression beyond noise"
is checked for a change that should not move performance (a redesign, a refactor).

    python bench/compare.py [--rounds N] REV [REV ...]
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Proxy, Stack, cpu_seconds, tree_pids, wrk  # beside this file


@dataclass
class Contender:
    revision: str
    subject: str
    proxy: Proxy
    rps: dict[int, list[float]]
    p50: dict[int, list[float]]
    cpu: list[float]


def export(revision: str, into: Path) -> tuple[str, str]:
    """The revision's `proxy/` package under `into`; (short hash, subject)."""
    git = ["git", "-C", str(ROOT)]
    line = subprocess.run(
        [*git, "log", "-1", "--format=%h %s", revision], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run([*git, "archive", revision, "proxy"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    short, _, subject = line.partition(" ")
    return short, subject


def measure(contenders: list[Contender], rounds: int) -> None:
    for connections in (1, 32):
        for c in contenders:
            wrk(f"http://127.0.0.1:{c.proxy.port}/acme/small", connections, 1)  # warm up
        for round_ in range(rounds):
            shift = round_ % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                pids = tree_pids(c.proxy.process.pid)
                before = sum(cpu_seconds(p) for p in pids)
                run = wrk(f"http://127.0.0.1:{c.proxy.port}/acme/small", connections)
                c.rps[connections].append(run.rps)
                c.p50[connections].append(run.p50_ms)
                if connections == 32:
                    used = sum(cpu_seconds(p) for p in pids) - before
                    c.cpu.append(used / run.requests * 10_000)


def report(contenders: list[Contender], rounds: int) -> str:
    first = contenders[0]
    base = statistics.median(first.rps[32])
    lines = [
        f"{rounds} alternating rounds per measure, medians (the rounds' range in brackets); "
        "small GETs through the proxy to nginx",
        "",
        "| revision | req/s, 1 connection | p50 at 1 connection | req/s, 32 connections "
        "| vs first | CPU s per 10,000 requests |",
        "|---|---|---|---|---|---|",
    ]
    for c in contenders:
        rps32 = statistics.median(c.rps[32])
        lines.append(
            f"| {c.revision} {c.subject[:60]} | {statistics.median(c.rps[1]):.0f} "
            f"| {statistics.median(c.p50[1]):.3f} ms "
            f"| {rps32:.0f} [{min(c.rps[32]):.0f}-{max(c.rps[32]):.0f}] | {rps32 / base:.2f}x "
            f"| {statistics.median(c.cpu):.2f} [{min(c.cpu):.2f}-{max(c.cpu):.2f}] |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    rounds = 3
    if argv[:1] == ["--rounds"]:
        rounds, argv = int(argv[1]), argv[2:]
    revisions = argv
    if not revisions:
        sys.exit('usage: make bench-compare REVS="REV [REV ...]" (e.g. REVS="HEAD~3 HEAD")')
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = Stack(work, proxy=False)
        try:
            contenders = []
            for i, revision in enumerate(revisions):
                source = work / f"rev{i}"
                short, subject = export(revision, source)
                proxy = stack.start_proxy(source=source)
                contenders.append(
                    Contender(short, subject, proxy, {1: [], 32: []}, {1: [], 32: []}, [])
                )
            measure(contenders, rounds)
        finally:
            stack.close()
    print(report(contenders, rounds))


if __name__ == "__main__":
    main(sys.argv[1:])
