"""`client_credentials` token sources: Amperity's OAuth2 client-credentials flow, minted at
start-up and refreshed at about 80% of `expires_in`, with jitter."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

import aiohttp

from proxy.config.sources import TokenSource
from proxy.redaction import SECRETS
from proxy.tokens.credential import MAX_TOKEN_BYTES, Credential, TokenError
from proxy.tokens.sources import Fetched, read_source

log = logging.getLogger("amperity_proxy.tokens")

CC_REFRESH_AT = 0.8  # of expires_in
CC_JITTER = 0.05  # ± of expires_in


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
        SECRETS.remember(f"client_secret:{self.config.client_id}:{self.token_url}", secret)
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
        return _minted(body)

    def next_refresh(self, credential: Credential) -> float | None:
        lifetime = credential.lifetime()
        if lifetime is None or credential.expires_at is None:
            return None
        start = credential.expires_at - lifetime
        jitter = self._rng.uniform(-CC_JITTER, CC_JITTER) * lifetime
        return start + CC_REFRESH_AT * lifetime + jitter


def _minted(body: bytes) -> Fetched:
    """The access token (and its lifetime) from a token endpoint's 200 answer."""
    try:
        answer = json.loads(body)
        token = answer["access_token"]
        expires_in = answer.get("expires_in")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TokenError("mint_failed", "the token endpoint's answer has no access_token") from None
    if not isinstance(token, str):
        raise TokenError("mint_failed", "the token endpoint's access_token is not a string")
    valid = isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool)
    return Fetched(token, float(expires_in) if valid else None)
