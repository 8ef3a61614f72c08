"""Token sources behind one interface: `fetch()` gives token text, `next_refresh()` says when.

- `env`, `value`: read once.
- `file`: re-read on every poll (Kubernetes Secret volumes swap a `..data` symlink).
- `exec`: a command (no shell) whose stdout is the token; re-run ahead of `exp` and after 401s.
- `client_credentials`: Amperity's OAuth2 client-credentials flow; minted at start-up and
  refreshed at about 80% of `expires_in`, with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

import aiohttp

from proxy.config import Route
from proxy.config.sources import TokenSource
from proxy.tokens.credential import MAX_TOKEN_BYTES, Credential, TokenError

log = logging.getLogger("amperity_proxy.tokens")

_MAX_STDERR = 2000
MIN_EXEC_REFRESH_BEFORE = 60.0
CC_REFRESH_AT = 0.8  # of expires_in
CC_JITTER = 0.05  # ± of expires_in


@dataclass(frozen=True)
class Fetched:
    text: str
    expires_in: float | None = None  # from an OAuth2 token response


def read_source(source: TokenSource, env: Mapping[str, str]) -> str:
    """Read an env, value or file source's raw text (blocking for `file`)."""
    if source.kind == "value":
        return source.value
    if source.kind == "env":
        value = env.get(source.location)
        if value is None:
            raise TokenError("missing", f"environment variable {source.location} is not set")
        if not value.strip():
            raise TokenError("empty", f"environment variable {source.location} is empty")
        return value
    path = Path(source.location)
    try:
        with path.open("rb") as f:  # follows the Kubernetes `..data` symlink at every read
            data = f.read(MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        raise TokenError("missing", f"token file {path} does not exist") from None
    except OSError as exc:
        raise TokenError("unreadable", f"cannot read token file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise TokenError("invalid", f"token file {path} is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenError("invalid", f"token file {path} is not ASCII text") from None
    if not text.strip():
        raise TokenError("empty", f"token file {path} is empty")
    return text


class Source(Protocol):
    config: TokenSource
    polled: bool  # re-read on every file poll
    refreshable: bool  # worth fetching again after a 401

    async def fetch(self) -> Fetched: ...

    def next_refresh(self, credential: Credential) -> float | None:
        """When to fetch again, as a clock time; None = only when asked (poll or 401)."""
        ...


class StaticSource:
    """`env` and `value`: the process environment does not change while it runs."""

    polled = False
    refreshable = False

    def __init__(self, config: TokenSource, env: Mapping[str, str]) -> None:
        self.config = config
        self._env = env

    async def fetch(self) -> Fetched:
        return Fetched(read_source(self.config, self._env))

    def next_refresh(self, credential: Credential) -> float | None:
        return None


class FileSource(StaticSource):
    polled = True
    refreshable = True

    async def fetch(self) -> Fetched:
        return Fetched(await asyncio.to_thread(read_source, self.config, self._env))


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
                text = text.replace(printed, "<redacted>")
            text = text.strip()[:_MAX_STDERR]
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


class ClientCredentialsSource:
    """Amperity's OAuth2 client-credentials flow (API keys made with "Get OAuth credentials")."""

    polled = False
    refreshable = True

    def __init__(
        self,
        config: TokenSource,
        *,
        tenant: str,
        token_url: str,
        env: Mapping[str, str],
        session: Callable[[], aiohttp.ClientSession | None],
        ssl: object,
        timeout: aiohttp.ClientTimeout,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.token_url = token_url
        self._tenant = tenant
        self._env = env
        self._session = session
        self._ssl = ssl
        self._timeout = timeout
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)

    async def fetch(self) -> Fetched:
        assert self.config.client_secret is not None
        secret = (
            await asyncio.to_thread(read_source, self.config.client_secret, self._env)
        ).strip()
        session = self._session()
        if session is None:
            raise TokenError("mint_failed", "the proxy is not running")
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": secret,  # SECURITY: only ever in this request body
        }
        try:
            async with session.post(
                self.token_url,
                data=urlencode(form),
                headers={
                    "X-Amperity-Tenant": self._tenant,
                    "Accept": "application/json",
                    # Set explicitly: the proxy's session adds no Content-Type of its own.
                    "Content-Type": "application/x-www-form-urlencoded",
                },
                ssl=self._ssl,  # type: ignore[arg-type]
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                body = await response.content.read(MAX_TOKEN_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TokenError(
                "mint_failed",
                f"cannot reach the token endpoint {self.token_url} ({type(exc).__name__})",
            ) from None
        if status != 200:
            raise TokenError(
                "mint_failed",
                f"the token endpoint {self.token_url} answered {status}; check client_id, "
                "client_secret and tenant",
            )
        try:
            answer = json.loads(body)
            token = answer["access_token"]
            expires_in = answer.get("expires_in")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenError(
                "mint_failed", "the token endpoint's answer has no access_token"
            ) from None
        if not isinstance(token, str):
            raise TokenError("mint_failed", "the token endpoint's access_token is not a string")
        valid = isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool)
        return Fetched(token, float(expires_in) if valid else None)

    def next_refresh(self, credential: Credential) -> float | None:
        lifetime = credential.lifetime()
        if lifetime is None or credential.expires_at is None:
            return None
        start = credential.expires_at - lifetime
        jitter = self._rng.uniform(-CC_JITTER, CC_JITTER) * lifetime
        return start + CC_REFRESH_AT * lifetime + jitter


def make_sources(
    route: Route,
    *,
    env: Mapping[str, str],
    session: Callable[[], aiohttp.ClientSession | None],
    ssl: object,
) -> list[Source]:
    """The sources for a route's `token:`/`tokens:` entries."""
    sources: list[Source] = []
    for config in route.tokens:
        if config.kind == "file":
            sources.append(FileSource(config, env))
        elif config.kind == "exec":
            sources.append(ExecSource(config, route.name, env))
        elif config.kind == "client_credentials":
            t = route.timeouts
            sources.append(
                ClientCredentialsSource(
                    config,
                    tenant=route.tenant,
                    # Decision: default to the route's own base URL, which is Amperity's documented
                    # https://{tenant}.amperity.com/api/v0/oauth2/token for the default base_url
                    # and follows AWS (app.amperity.com) and sandbox base URLs.
                    token_url=config.token_url or f"{route.base_url}/v0/oauth2/token",
                    env=env,
                    session=session,
                    ssl=ssl,
                    timeout=aiohttp.ClientTimeout(total=t.connect + t.read, connect=t.connect),
                )
            )
        else:
            sources.append(StaticSource(config, env))
    return sources
