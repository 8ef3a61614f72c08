"""Running the proxy as a process: the two listeners, signals, reload, and the drain.

SIGTERM/SIGINT: `/readyz` turns 503, the proxy listener stops accepting, in-flight requests
finish (up to `shutdown_timeout`), exit 0. SIGHUP: re-read and reload the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from proxy import __version__
from proxy.app import create_admin_app, create_app
from proxy.cli.memory import trim_periodically
from proxy.cli.selfcheck import self_check
from proxy.cli.shutdown import drain, until_stopped
from proxy.config import Config, ConfigLoader, StartupError
from proxy.config.listen import Listen, UnixListen
from proxy.listener import ServerCertificate, bound_sockets
from proxy.observe.logs import flush_logs

log = logging.getLogger("amperity_proxy")


class UnixSocketFile:
    """The proxy's Unix socket file: created here, and removed only by its creator.

    SECURITY / availability: a path that holds a regular file or a symlink is refused and left
    alone; a socket someone answers on belongs to a live process (another proxy) and is never
    taken over; a socket nobody answers on is stale (a crashed run) and is replaced, with a
    log line. On the way out only the socket this process bound (same device and inode) is
    removed, so a failed start never deletes a user's file or a live proxy's socket."""

    def __init__(self, unix: UnixListen) -> None:
        self.unix = unix
        self.path = Path(unix.path)
        self._identity: tuple[int, int] | None = None

    def bind(self) -> socket.socket:
        """A listening socket whose file has exactly `unix.mode` permissions."""
        path = self.path
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise StartupError(
                    [
                        f"listen.unix.path: {path} exists and is not a socket; remove it or "
                        "choose another path"
                    ]
                )
            if self._answers(path):
                raise StartupError(
                    [
                        f"listen.unix.path: {path} is in use by a running process (another "
                        "proxy?); stop it or choose another path"
                    ]
                )
            log.warning("replacing a stale socket at %s (nothing answers on it)", path)
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # SECURITY: bind with owner-only permissions, then widen to the configured mode, so the
        # socket is never reachable by more users than the config allows.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise StartupError([f"cannot listen on unix:{path}: {exc.strerror or exc}"]) from None
        finally:
            os.umask(old_umask)
        created = path.lstat()
        self._identity = (created.st_dev, created.st_ino)
        os.chmod(path, self.unix.mode)
        sock.listen(128)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _answers(path: Path) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:  # ECONNREFUSED: nobody listens; the file is left over
            return False
        finally:
            probe.close()
        return True

    def remove(self) -> None:
        """Remove the socket file if it is still the one this process created."""
        if self._identity is None:
            return
        with contextlib.suppress(OSError):
            current = self.path.lstat()
            if (
                stat.S_ISSOCK(current.st_mode)
                and (current.st_dev, current.st_ino) == self._identity
            ):
                self.path.unlink()
        self._identity = None


async def _start_site(
    runner: web.BaseRunner,
    listen: Listen,
    what: str,
    reuse_port: bool = False,
    unix: UnixSocketFile | None = None,
) -> list[str]:
    if unix is not None:  # listen.unix: the socket file this process creates and removes
        await web.SockSite(runner, unix.bind()).start()
        return [f"unix:{unix.path}"]
    site = web.TCPSite(
        runner,
        listen.host,
        listen.port,
        reuse_address=True,
        reuse_port=reuse_port or None,  # TLS (listen.tls) is the server's own: see app.server
    )
    try:
        await site.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE or "address already in use" in reason:
            flag = "--listen" if what == "proxy" else "--admin-listen"
            reason = (
                f"the port is busy (another amperity-proxy?); stop what uses it, or pick "
                f"another port with {flag} {listen.host}:PORT"
            )
        raise StartupError([f"cannot listen on {listen} ({what}): {reason}"]) from None
    sockets = bound_sockets(site)
    return [
        f"[{s.getsockname()[0]}]:{s.getsockname()[1]}"
        if s.family == socket.AF_INET6
        else f"{s.getsockname()[0]}:{s.getsockname()[1]}"
        for s in sockets
    ]


async def _flush_logs_periodically(interval: float = 0.2) -> None:
    """Buffered access-log lines reach stderr within `interval` even when traffic stops."""
    while True:
        await asyncio.sleep(interval)
        flush_logs()


async def serve(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    config_loader: ConfigLoader | None = None,
    worker: int | None = None,
    workers: int = 1,
) -> int:
    """Run until SIGTERM/SIGINT, then drain in-flight requests; return the exit code.
    `config_loader` re-reads the config for SIGHUP and `POST /-/reload`. Each of `workers`
    processes paces its local buckets at 1/`workers` of the rate."""
    app = create_app(config, env=env, rate_share=1 / workers)
    problems = self_check(config, app.ssl_contexts.values())
    if problems:
        raise StartupError(problems)
    tls = config.listen.tls
    certificate = ServerCertificate(tls) if tls is not None else None
    app.config_loader = config_loader
    admin = create_admin_app(app)
    await app.startup()
    runner = web.ServerRunner(
        app.server(certificate.context if certificate is not None else None),
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout,
    )
    # The admin endpoints answer in milliseconds: its drain is short, inside the overall bound.
    admin_runner = web.ServerRunner(admin, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    await admin_runner.setup()
    unix = UnixSocketFile(config.listen.unix) if config.listen.unix is not None else None
    background: list[asyncio.Task[None]] = []
    try:
        background = await _open(config, runner, admin_runner, worker, unix, certificate)
        await until_stopped(app)
    finally:
        await drain(config, app, runner, admin_runner)
        if unix is not None:
            unix.remove()  # only the socket this process created
        for task in background:
            task.cancel()
    log.info("stopped")
    flush_logs()
    return 0


async def _open(
    config: Config,
    runner: web.BaseRunner,
    admin_runner: web.BaseRunner,
    worker: int | None,
    unix: UnixSocketFile | None,
    certificate: ServerCertificate | None,
) -> list[asyncio.Task[None]]:
    """Start listening; return the background tasks that run until the drain has ended."""
    # Workers share the proxy port (SO_REUSEPORT); only worker 0 serves the admin port.
    proxy_addrs = await _start_site(runner, config.listen, "proxy", worker is not None, unix)
    admin_addrs: list[str] = []
    if worker in (None, 0):
        admin_addrs = await _start_site(admin_runner, config.admin, "admin")
    _started(config, proxy_addrs, admin_addrs, worker)
    # The log flusher runs through the drain too: lines logged then reach stderr within
    # 0.2 s, not at exit (a SIGKILL at the end of the grace period would lose them).
    background = [
        asyncio.create_task(_flush_logs_periodically(), name="log-flush"),
        asyncio.create_task(trim_periodically(), name="malloc-trim"),
    ]
    if certificate is not None:
        background.append(asyncio.create_task(certificate.watch(), name="listen-tls"))
    return background


LISTED_ROUTES = 10  # in the start line; a 1,000-route config would make it a 60 KB line


def _routes_in_words(config: Config) -> str:
    listed = ", ".join(
        f"{r.prefix} -> {r.base_url} ({r.tenant})" for r in config.routes[:LISTED_ROUTES]
    )
    more = len(config.routes) - LISTED_ROUTES
    return f"{listed} and {more} more (check-config lists them all)" if more > 0 else listed


def _started(
    config: Config, proxy_addrs: list[str], admin_addrs: list[str], worker: int | None
) -> None:
    log.info(
        "amperity-proxy %s listening on %s (%s), routes: %s",
        __version__,
        ", ".join(proxy_addrs),
        f"admin on {', '.join(admin_addrs)}" if admin_addrs else "admin: served by worker 0",
        _routes_in_words(config),
        extra={
            "fields": {
                "listen": proxy_addrs,
                "admin": admin_addrs,
                "worker": worker,
                "pid": os.getpid(),
            }
        },
    )
