"""Token rotation faster than the poll: a Kubernetes-style `..data` swap is picked up within
about a second (the directory is watched; the poll is only the fallback), and an upstream 401
re-reads the sources at once, at most about once a second (not once per ten)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.testing import make_token, swap_secret_volume
from proxy.tokens import fingerprint
from tests.conftest import ProxyFactory, Upstream, acme_route, subject
from tests.hostile.conftest import LEDGER
from tests.support.clocks import FakeClock


async def test_a_secret_volume_swap_is_picked_up_within_a_second(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    volume = tmp_path / "secret"
    volume.mkdir()
    first = make_token("acme", subject="first")
    swap_secret_volume(volume, first, 1)
    # The poll is an hour here: only the directory watch can pick the swap up in time.
    proxy = await make_proxy(
        [acme_route(upstream, token={"file": str(volume / "token")})], token_poll_interval=3600
    )
    assert (await proxy.client.get("/acme/a")).status == 200
    second = make_token("acme", subject="second")
    loop = asyncio.get_running_loop()
    swapped = loop.time()
    swap_secret_volume(volume, second, 2)
    while proxy.store.credential("acme").fingerprint != fingerprint(second):  # type: ignore[union-attr]
        assert loop.time() - swapped < 5, "the swap was not picked up (the bug: next poll)"
        await asyncio.sleep(0.02)
    LEDGER.tried("rotation")
    assert (await proxy.client.get("/acme/b")).status == 200
    assert [subject(r.header("Authorization")) for r in upstream.requests] == ["first", "second"]


async def test_a_401_re_reads_the_sources_again_after_a_second(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """Two 401s 1.5 s apart both re-read the token source (the old limit was one per 10 s).
    An exec source (`cat` of a file), so that only a 401 re-reads it: no watch, no poll."""
    token_file = tmp_path / "token"
    old = make_token("acme", subject="old")
    token_file.write_text(old)
    clock = FakeClock()
    source = {"exec": {"command": ["/bin/cat", str(token_file)]}}
    proxy = await make_proxy([acme_route(upstream, token=source)], clock=clock)
    upstream.fake.revoked.add(old)
    assert (await proxy.client.get("/acme/a")).status == 401  # re-read: still the old token
    new = make_token("acme", subject="new")
    token_file.write_text(new)
    clock.now += 1.5
    response = await proxy.client.get("/acme/b")
    LEDGER.tried("rotation")
    assert response.status == 200  # the 401 re-read the file and replayed with the new token
    assert [subject(r.header("Authorization")) for r in upstream.requests] == [
        "old",
        "old",
        "new",
    ]
