"""A fake Amperity API for tests, `make demo` and users' own tests. Never for production.

It checks what Amperity checks (a HS256 JWT signed with `TEST_SECRET`, an `Amperity-Tenant`
header equal to the token's `tenant` claim, an `api-version` header) and answers 401 in
Amperity's envelope otherwise. It records every request it receives (method, raw path,
headers, body length and sha256, status, the connection's peer) and, by default, reflects it
back as JSON.

Special paths (under any base path, e.g. `/api/_fake/bytes/1024`):
- `_fake/bytes/N`     N deterministic bytes (see `pattern`), with Content-Length
- `_fake/gzip`        a gzip-encoded JSON body with `Content-Encoding: gzip`
- `_fake/redirect`    302 to the `to` query parameter
- `_fake/cookies`     two `Set-Cookie` headers
- `_fake/status/N`    an empty answer with status N (`?message=M`: Amperity's envelope
                      `{"status": N, "message": M}`)
- `_fake/hold`        waits until `FakeAmperity.release` is set (for drain and timeout tests);
                      `?status=N` then answers N, the first time per path (a 401 that
                      arrives after a reload, say; a replay of it gets 200)
- `_fake/cut/N`       announces 2N bytes, sends N, then drops the connection
                      (`?chunked`: chunked encoding, dropped before the last chunk)
- `_fake/stall/N`     announces 2N bytes, sends N, then goes silent until `release`
- `_fake/reset`       sends headers, then resets the connection
- `_fake/hop`         answers with hop-by-hop and CORS headers a proxy must remove
- `_fake/deprecated`  answers with `Deprecation` and `Sunset` headers
- `_fake/flaky/N`     the first N answers per path are `?status=` (429) with `?after=` as
                      Retry-After, then 200

`POST <base>/v0/oauth2/token` is Amperity's client-credentials endpoint (see `clients`,
`token_ttl`, `token_failures`, `mint_gate`, `mints`); `revoked` tokens get 401 although valid.

On its own, until Ctrl-C (prints its URL, a CA bundle path, a token and the exports that put
config.example.yaml in front of it): `make fake`, or
`python -m proxy.testing.fake [--port 8443] [--tenant acme] [--ca-file PATH]`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from proxy.listener import bound_sockets
from proxy.testing.apis import PROFILE_VERSION, STREAMING_MAX_BODY, Budgets, api_of
from proxy.testing.specials import SPECIAL_PATHS

TEST_SECRET = "fake-amperity-test-secret-not-for-production"  # noqa: S105 (test-only)
FAKE_CLIENT_ID = "fake-client"
FAKE_CLIENT_SECRET = "fake-client-secret-not-for-production"  # noqa: S105 (test-only)
TENANT_CLAIM = "tenant"


def make_token(
    tenant: str,
    *,
    secret: str = TEST_SECRET,
    ttl: float | None = 3600,
    issued_at: float | None = None,
    subject: str = "fake-api-key",
) -> str:
    """A JWT the fake accepts for `tenant` (HS256, `tenant`/`iat`/`exp`/`sub` claims)."""
    iat = time.time() if issued_at is None else issued_at
    # `jti` makes every token unique, as real ones are, even when minted in the same second.
    claims: dict[str, Any] = {
        TENANT_CLAIM: tenant,
        "iat": int(iat),
        "sub": subject,
        "jti": uuid.uuid4().hex,
    }
    if ttl is not None:
        claims["exp"] = int(iat + ttl)
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class RecordedRequest:
    """What the fake received."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body_length: int
    body_sha256: str
    status: int
    received_at: float = 0.0  # FakeAmperity.clock() when it arrived
    peer: str = ""  # the client's address and port: which connection carried it

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


class FakeAmperity:
    """The fake upstream application and what it has recorded."""

    def __init__(self, secret: str = TEST_SECRET) -> None:
        self.secret = secret
        self.requests: list[RecordedRequest] = []
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # set when a request reaches `_fake/hold`
        self._recorded = asyncio.Condition()
        self.revoked: set[str] = set()  # tokens answered with 401 although valid ("rotated")
        # The OAuth2 client-credentials endpoint (`POST <base>/v0/oauth2/token`).
        self.clients: dict[str, str] = {FAKE_CLIENT_ID: FAKE_CLIENT_SECRET}
        self.token_ttl = 3600
        self.token_failures = 0  # answer the next N token requests with 503
        self.mint_gate: asyncio.Event | None = None  # when set, token requests wait for it
        self.mints: list[dict[str, str]] = []  # client_id, tenant, status: never the secret
        self.streamed = 0  # bytes written by `_fake/bytes/N` so far (back-pressure tests)
        self.clock: Callable[[], float] = time.time  # stamps `received_at`
        self.flaky: Counter[str] = Counter()  # answers so far per `_fake/flaky/...` path
        self.holds: Counter[str] = Counter()  # answers so far per `_fake/hold` path
        self.budgets = Budgets(lambda: self.clock())  # 429s past the documented rates, when on
        self.app = web.Application()
        self.app.router.add_post("/{base:.*}/v0/oauth2/token", self._token)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        tenant = request.headers.get("X-Amperity-Tenant", "")
        if self.mint_gate is not None:
            await self.mint_gate.wait()
        status = 200
        if self.token_failures > 0:
            self.token_failures -= 1
            status = 503
        elif form.get("grant_type") != "client_credentials" or not tenant:
            status = 400
        elif self.clients.get(client_id) != secret:
            status = 401
        self.mints.append({"client_id": client_id, "tenant": tenant, "status": str(status)})
        if status != 200:
            return web.json_response({"error": "invalid_client"}, status=status)
        token = make_token(tenant, secret=self.secret, ttl=self.token_ttl, subject=client_id)
        return web.json_response(
            {"access_token": token, "expires_in": self.token_ttl, "token_type": "Bearer"}
        )

    def _check(self, request: web.Request) -> str | None:
        """What Amperity checks, per API (told apart by path): the token, the tenant header
        that API wants (and no other), the api-version it accepts."""
        auth = request.headers.getall("Authorization", [])
        if len(auth) != 1 or not auth[0].startswith("Bearer "):
            return "missing or malformed Authorization header"
        try:
            claims = jwt.decode(auth[0][7:], self.secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            return f"invalid token: {type(exc).__name__}"
        api = api_of(request.path)
        wanted, other = ("X-Amperity-Tenant", "Amperity-Tenant")
        if api != "streaming":
            wanted, other = other, wanted
        if request.headers.getall(wanted, []) != [claims.get(TENANT_CLAIM)]:
            return f"{wanted} does not match the token's tenant"
        if other in request.headers:
            return f"unexpected {other} header for the {api} API"
        if auth[0][7:] in self.revoked:
            return "the token was revoked"
        version = request.headers.get("api-version") or request.query.get("api-version")
        if api == "streaming":
            return "the Streaming API takes no api-version" if version else None
        if version is None:
            return "missing api-version"
        if api == "profile" and version != PROFILE_VERSION:
            return f"the Profile API accepts api-version {PROFILE_VERSION}"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        problem = self._check(request)
        status = 401 if problem is not None else None
        if problem is None and api_of(request.path) == "streaming" and length > STREAMING_MAX_BODY:
            status, problem = 413, "the body is larger than 1 MB"
        if problem is None and self.budgets.over(request):
            status, problem = 429, "rate limit exceeded"
        if status is not None:  # recorded before answering, so a test can wait for it
            await self._record(request, length, digest.hexdigest(), status)
        response = await self._respond(request, problem, length, digest.hexdigest(), status)
        if status is None:
            await self._record(request, length, digest.hexdigest(), response.status)
        return response

    async def _record(self, request: web.Request, length: int, digest: str, status: int) -> None:
        recorded = RecordedRequest(
            request.method,
            request.raw_path,
            tuple(request.headers.items()),
            length,
            digest,
            status,
            self.clock(),
            _peer(request),
        )
        async with self._recorded:
            self.requests.append(recorded)
            self._recorded.notify_all()

    async def wait_for_requests(self, count: int) -> None:
        """Wait until at least `count` requests were recorded (no polling)."""
        async with self._recorded:
            await self._recorded.wait_for(lambda: len(self.requests) >= count)

    async def _respond(
        self,
        request: web.Request,
        problem: str | None,
        length: int,
        digest: str,
        status: int | None = None,
    ) -> web.StreamResponse:
        if problem is not None:
            body = {"status": status or 401, "message": problem, "request_id": "fake"}
            return web.json_response(body, status=status or 401)
        _, _, special = request.raw_path.partition("/_fake/")
        kind, _, arg = special.split("?", 1)[0].partition("/")
        answer = SPECIAL_PATHS.get(kind)
        if answer is not None:
            return await answer(self, request, arg)
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                # Like a real API, never echo the credential back; `requests` has it all.
                "headers": [
                    [k, "<redacted>" if k.lower() == "authorization" else v]
                    for k, v in request.headers.items()
                ],
                "body_length": length,
                "body_sha256": digest,
            }
        )


def swap_secret_volume(directory: Path, token: str, generation: int) -> None:
    """Update `directory` the way the kubelet updates a Secret volume: a new timestamped
    directory holding the file, then an atomic swap of the `..data` symlink; `token` is a
    symlink through `..data` (what a pod sees as /var/run/secrets/.../token)."""
    data = directory / f"..2026_12_01_{generation:04d}"
    data.mkdir()
    (data / "token").write_text(token)
    link = directory / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, directory / "..data")
    if not (directory / "token").is_symlink():
        (directory / "token").symlink_to("..data/token")


async def start_fake(
    fake: FakeAmperity, ssl_context: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve `fake` on host:port (0 = any free port); return the runner and the bound port."""
    runner = web.AppRunner(fake.app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    sockets = bound_sockets(site)
    return runner, int(sockets[0].getsockname()[1])
