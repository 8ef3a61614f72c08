"""Token sources behind one interface: `fetch()` gives token text, `next_refresh()` says when.

- `env`, `value`: read once.
- `file`: re-read on every poll (Kubernetes Secret volumes swap a `..data` symlink).
- `exec`: a command (no shell) whose stdout is the token; re-run ahead of `exp` and after 401s.
- `client_credentials`: Amperity's OAuth2 client-credentials flow; minted at start-up and
  refreshed at about 80% of `expires_in`, with jitter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from proxy.config import Route
from proxy.config.sources import TokenSource
from proxy.tokens.credential import MAX_TOKEN_BYTES, Credential, TokenError

log = logging.getLogger("amperity_proxy.tokens")


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


def make_sources(
    route: Route,
    *,
    env: Mapping[str, str],
    session: Callable[[], aiohttp.ClientSession | None],
    ssl: object,
) -> list[Source]:
    """The sources for a route's `token:`/`tokens:` entries."""
    from proxy.tokens.commands import ExecSource  # they import this module's Fetched
    from proxy.tokens.oauth import ClientCredentialsSource

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
                    token_url=config.token_url or _token_url(route),
                    env=env,
                    session=session,
                    ssl=ssl,
                    timeout=aiohttp.ClientTimeout(total=t.connect + t.read, connect=t.connect),
                )
            )
        else:
            sources.append(StaticSource(config, env))
    return sources


def _token_url(route: Route) -> str:
    """Amperity's client-credentials endpoint for a route: under the API's base, which for the
    Streaming API (a base outside /api) is the tenant host's /api."""
    if route.api == "streaming":
        return f"{route.base_url.origin}/api/v0/oauth2/token"
    return f"{route.base_url}/v0/oauth2/token"
