"""The process's end: SIGTERM/SIGINT or `POST /quitquitquit`, `shutdown_delay`, and a drain
bounded by `shutdown_timeout` (SIGTERM -> exit within shutdown_delay + shutdown_timeout + 1 s).
SIGHUP reloads meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from proxy.app import ProxyApp
from proxy.config import Config
from proxy.observe.logs import flush_logs

FIRST = asyncio.FIRST_COMPLETED
_EXIT_SLACK = 0.9  # seconds past shutdown_timeout for the cleanup after the drain
log = logging.getLogger("amperity_proxy")


async def until_stopped(app: ProxyApp) -> None:
    """Serve until SIGTERM or SIGINT or POST /quitquitquit (SIGHUP reloads meanwhile); then
    mark the app draining, and after SIGTERM serve on for `shutdown_delay` first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(app.reload_from_source("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        quit_requested = asyncio.ensure_future(app.lifecycle.quit.wait())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({signalled, quit_requested}, return_when=FIRST)
        for waiter in (signalled, quit_requested):
            waiter.cancel()
        quitting = app.lifecycle.quit.is_set()
        app.lifecycle.draining = True  # /readyz is 503 from here on
        delay = app.config.shutdown_delay
        if delay > 0 and not quitting:
            # The app beside a classic sidecar may still be finishing: serve on for a while
            # (a second SIGTERM or SIGINT ends the wait early).
            log.info("SIGTERM: serving on for shutdown_delay (%ss), then draining", delay)
            flush_logs()
            stop.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        log.info(
            "shutting down: /readyz is 503, finishing in-flight requests (up to %ss)",
            app.config.shutdown_timeout,
        )
        flush_logs()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def drain(
    config: Config, app: ProxyApp, runner: web.BaseRunner, admin_runner: web.BaseRunner
) -> None:
    """Stop accepting and drain: in-flight requests get shutdown_timeout in all
    (GuardedServer.shutdown), then everything left is closed. The rest is bounded too, so
    SIGTERM -> exit stays within shutdown_timeout + 1 s."""
    deadline = asyncio.get_running_loop().time() + config.shutdown_timeout + _EXIT_SLACK
    await runner.cleanup()
    for step in (app.cleanup, admin_runner.cleanup):
        left = max(0.05, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(step(), left)
        except TimeoutError:
            log.warning("shutdown: a cleanup step did not finish in time; exiting anyway")
