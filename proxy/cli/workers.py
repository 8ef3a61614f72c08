"""`run --workers N`: N processes share the proxy port (SO_REUSEPORT) so a VM can use its cores.

The supervisor (this module) starts the workers, forwards SIGTERM/SIGINT/SIGHUP to all of them
(so every worker drains, and every worker reloads), and exits when they have. Metrics stay
correct across workers through prometheus-client's multiprocess mode: each worker writes its
counters to files in a private directory and worker 0, which alone serves the admin port,
aggregates them. Token sources are loaded and refreshed in every worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("amperity_proxy")


def supervise(argv: Sequence[str], workers: int) -> int:
    """Run `amperity-proxy <argv> --worker I` for I in 0..workers-1; return the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="amperity-proxy-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    procs = {
        i: subprocess.Popen([sys.executable, "-m", "proxy", *argv, "--worker", str(i)], env=env)
        for i in range(workers)
    }
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(procs):
            for index, proc in procs.items():
                if index in codes:
                    continue
                try:
                    code = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                codes[index] = code
                _mark_dead(proc.pid, metrics_dir)
                if not stopping:  # a worker died on its own: stop the rest, fail loudly
                    log.error("worker %d exited with %d; stopping the others", index, code)
                    stopping = True
                    for other in procs.values():
                        if other.poll() is None:
                            other.terminate()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if all(code == 0 for code in codes.values()) and stopping else 1


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (in-flight requests) from the aggregate."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
