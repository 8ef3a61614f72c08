"""Reload races: a request is sent, and replayed, only with a credential of the route generation
that admitted it. A reload timed against a held request must never mix generations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from proxy.config import parse_config
from proxy.testing import make_token
from tests.conftest import ProxyFactory, Upstream
from tests.hostile.conftest import LEDGER

OLD = make_token("acme-sb", subject="old-generation")
NEW = make_token("acme", subject="new-generation")  # TOK_A of the issue
Seen = list[tuple[str, str | None, str | None]]


def _main(upstream: Upstream, tenant: str, host: str, token: dict[str, Any]) -> dict[str, Any]:
    return {"prefix": "/main", "tenant": tenant, "base_url": upstream.url(host), "token": token}


async def _race(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    old_token: dict[str, Any],
    rotate: tuple[Path, str] | None = None,
) -> tuple[int, Seen]:
    """Hold a request on the old generation of `main` (tenant acme-sb, host acme-sb), reload
    `main` to tenant acme, host acme and token NEW, then let the old host answer 401. Returns
    the client's status and what each upstream request carried (host, token, tenant)."""
    proxy = await make_proxy(
        [_main(upstream, "acme-sb", "acme-sb.amperity.com", old_token)],
        env={"OLD_TOKEN": OLD, "NEW_TOKEN": NEW},
    )
    held = asyncio.create_task(proxy.client.get("/main/_fake/hold?status=401"))
    await asyncio.wait_for(upstream.fake.held.wait(), 30)
    new = _main(upstream, "acme", "acme.amperity.com", {"env": "NEW_TOKEN"})
    assert await proxy.app.reload(parse_config({"routes": [new]}, env={})) == []
    if rotate is not None:  # the old generation's own source changes meanwhile
        rotate[0].write_text(rotate[1])
    upstream.fake.release.set()
    response = await asyncio.wait_for(held, 30)
    LEDGER.tried("reload races")
    seen = [
        (
            (r.header("Host") or "").split(":")[0],
            r.header("Authorization"),
            r.header("Amperity-Tenant"),
        )
        for r in upstream.requests
    ]
    return response.status, seen


async def test_a_401_after_a_reload_never_replays_the_new_token_to_the_old_host(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    status, seen = await _race(make_proxy, upstream, {"env": "OLD_TOKEN"})
    # Sent once, with the old generation's token and tenant, to the old host; never TOK_A.
    assert seen == [("acme-sb.amperity.com", f"Bearer {OLD}", "acme-sb")]
    assert status == 401  # the old generation has no other token: its 401 goes back


async def test_a_replay_after_a_reload_uses_the_old_generations_own_sources(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """The old generation may still recover from its own token file: the replay carries that
    file's new token to the old host with the old tenant, never the new route's token."""
    token_file = tmp_path / "old-token"
    token_file.write_text(OLD)
    rotated = make_token("acme-sb", subject="old-generation-rotated")
    status, seen = await _race(
        make_proxy, upstream, {"file": str(token_file)}, rotate=(token_file, rotated)
    )
    assert seen == [
        ("acme-sb.amperity.com", f"Bearer {OLD}", "acme-sb"),
        ("acme-sb.amperity.com", f"Bearer {rotated}", "acme-sb"),
    ]
    assert status == 200
