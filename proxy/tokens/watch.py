"""Watching token files: a changed file is re-read within about a second, not at the next poll.

Kubernetes updates a Secret volume by writing a new `..<timestamp>` directory and swapping the
`..data` symlink; the token file itself (`token -> ..data/token`) never changes as a file, so
the watch is on the *directory* that holds it: any event there re-reads that directory's file
sources (single-flight, through the store). The store's poll (every 5 s) stays as the fallback
for filesystems without inotify (NFS, some overlay setups) and for when the watch fails.

`watchfiles` (a Rust `notify` binding, the watcher behind uvicorn's and others' reload) is
imported only when a config has file sources.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

log = logging.getLogger("amperity_proxy.tokens")

DEBOUNCE_MS = 100  # events within this window are one change (a swap is several events)


def _directories(files: list[str]) -> list[str]:
    """The existing directories that hold `files` (blocking: run off the event loop)."""
    directories = sorted({str(Path(f).absolute().parent) for f in files})
    return [d for d in directories if Path(d).is_dir()]


class FileWatch:
    """Watches the directories of the current file sources until cancelled; `changed()` (after a
    reload) restarts it on the new set of directories."""

    def __init__(
        self,
        files: Callable[[], Iterable[str]],
        reread: Callable[[set[str]], Awaitable[None]],
    ) -> None:
        self._files = files
        self._reread = reread
        self._restart = asyncio.Event()

    def changed(self) -> None:
        """The set of file sources may have changed (a reload): watch the new directories."""
        self._restart.set()

    async def run(self) -> None:
        while True:
            self._restart.clear()
            existing = await asyncio.to_thread(_directories, list(self._files()))
            if not existing:
                await self._restart.wait()
                continue
            try:
                await self._watch(existing)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # inotify limits, a vanished directory: the poll remains
                log.warning(
                    "watching token file directories failed (%s: %s); changes are picked up "
                    "by the poll every few seconds instead",
                    type(exc).__name__,
                    exc,
                )
                await self._restart.wait()

    async def _watch(self, directories: list[str]) -> None:
        from watchfiles import awatch  # only configs with file sources load it

        async for changes in awatch(
            *directories,
            stop_event=self._restart,
            debounce=DEBOUNCE_MS,
            step=20,
            recursive=False,
            ignore_permission_denied=True,
        ):
            touched = {str(Path(path).parent) for _, path in changes}
            await self._reread(touched)
