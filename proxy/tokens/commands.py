"""`exec` token sources: a command (no shell) whose stdout is the token, run with a minimal
environment in its own process group, the whole group killed at `timeout`; re-run ahead of
`exp` and after a 401."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping

from proxy.config.sources import TokenSource
from proxy.redaction import REDACTED, outside
from proxy.tokens.credential import MAX_TOKEN_BYTES, Credential, TokenError
from proxy.tokens.sources import Fetched

log = logging.getLogger("amperity_proxy.tokens")

_MAX_STDERR = 2000
MIN_EXEC_REFRESH_BEFORE = 60.0
# What every helper gets from the proxy's environment: enough to find programs and speak the
# user's locale and time zone, nothing that could be a credential.
EXEC_BASE_ENV = ("PATH", "HOME", "LANG", "TZ")
EXEC_BASE_PREFIXES = ("LC_",)


def exec_environment(config: TokenSource, env: Mapping[str, str]) -> dict[str, str]:
    """The environment an `exec` helper runs with. SECURITY: not the proxy's own (which holds
    other routes' tokens, the client token, a Redis password...): the base variables, then the
    names in `pass_env` copied when set, then `env:` from the config."""
    out = {
        name: value
        for name, value in env.items()
        if name in EXEC_BASE_ENV or name.startswith(EXEC_BASE_PREFIXES)
    }
    out |= {name: env[name] for name in config.pass_env if name in env}
    out |= dict(config.exec_env)
    return out


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the helper's whole process group and reap it (its pipes close with it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        # A process that left the group (its own setsid) could still hold a pipe: don't wait
        # for it forever; the child itself is reaped by asyncio either way.
        await asyncio.wait_for(asyncio.shield(proc.wait()), 5)


class ExecSource:
    """Runs `command` (no shell) with a minimal environment (`exec_environment`); stdout is the
    token, stderr is logged, never stdout."""

    polled = False
    refreshable = True

    def __init__(self, config: TokenSource, route: str, env: Mapping[str, str]) -> None:
        self.config = config
        self._route = route
        self._environment = exec_environment(config, env)  # built once, at load time

    async def fetch(self) -> Fetched:
        command = self.config.command
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._environment,
                # Its own process group, so the timeout can kill everything it started: a
                # grandchild (`sh -c "sleep 25; echo t"`) would otherwise keep the pipes open
                # and the wait going long after the helper itself was killed.
                start_new_session=True,
            )
        except OSError as exc:
            raise TokenError("exec_failed", f"cannot run {command[0]}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.config.timeout)
        except TimeoutError:
            raise TokenError(
                "exec_failed", f"{command[0]} did not finish within {self.config.timeout:g}s"
            ) from None
        finally:
            if proc.returncode is None:  # timed out, or the proxy is shutting down
                await _kill_group(proc)
        if err:
            level = logging.WARNING if proc.returncode else logging.INFO
            text = err.decode(errors="replace")
            printed = out.decode(errors="replace").strip()
            if printed:  # SECURITY: a chatty helper may echo its token to stderr too
                text = text.replace(printed, REDACTED)
            text = outside(text, _MAX_STDERR)
            log.log(
                level, "token command stderr: %s", text, extra={"fields": {"route": self._route}}
            )
        if proc.returncode != 0:
            raise TokenError("exec_failed", f"{command[0]} exited with status {proc.returncode}")
        if len(out) > MAX_TOKEN_BYTES:
            raise TokenError("invalid", f"{command[0]} printed more than {MAX_TOKEN_BYTES} bytes")
        try:
            return Fetched(out.decode("ascii"))
        except UnicodeDecodeError:
            raise TokenError("invalid", f"{command[0]} printed non-ASCII output") from None

    def next_refresh(self, credential: Credential) -> float | None:
        lifetime = credential.lifetime()
        if credential.expires_at is None or lifetime is None:
            return None
        before = self.config.refresh_before
        if before is None:
            before = max(MIN_EXEC_REFRESH_BEFORE, 0.1 * lifetime)
        return credential.expires_at - before
