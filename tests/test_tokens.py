"""Token sources: env/file/value, Kubernetes Secret rotation, failures that keep the last token."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import StartupError, parse_config
from proxy.testing import make_token
from proxy.tokens import TokenStore, fingerprint, make_sources, parse_token
from tests.conftest import ProxyFactory, Upstream, acme_route


class SecretVolume:
    """A directory laid out like a Kubernetes Secret volume: token -> ..data/token."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    @property
    def path(self) -> Path:
        return self.root / "token"

    def write(self, content: str) -> None:
        """Atomically publish new content the way the kubelet does (swap the ..data link)."""
        self.generation += 1
        version = self.root / f"..2026_11_28_{self.generation}"
        version.mkdir()
        (version / "token").write_text(content)
        tmp = self.root / "..data_tmp"
        os.symlink(version.name, tmp)
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            os.symlink("..data/token", self.path)

    def remove(self) -> None:
        (self.root / "..data").unlink()


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path)


async def test_file_token_rotates_through_a_data_symlink_swap(
    make_proxy: ProxyFactory, upstream: Upstream, volume: SecretVolume
) -> None:
    first, second = make_token("acme", subject="a"), make_token("acme", subject="b")
    volume.write(first + "\n")
    proxy = await make_proxy([acme_route(upstream, token={"file": str(volume.path)})])
    await proxy.client.get("/acme/x")
    volume.write(second)
    await proxy.store.reload_files()
    await proxy.client.get("/acme/y")
    assert [r.header("Authorization") for r in upstream.requests] == [
        f"Bearer {first}",
        f"Bearer {second}",
    ]


async def test_background_poller_picks_up_a_rotation(
    make_proxy: ProxyFactory, upstream: Upstream, volume: SecretVolume
) -> None:
    first, second = make_token("acme", subject="a"), make_token("acme", subject="b")
    volume.write(first)
    route = acme_route(upstream, token={"file": str(volume.path)})
    proxy = await make_proxy([route], token_poll_interval=0.01)
    volume.write(second)
    deadline = time.monotonic() + 10
    while proxy.store.credential("acme").fingerprint != fingerprint(second):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the poller never re-read the file"
        await asyncio.sleep(0.01)
    await proxy.client.get("/acme/x")
    assert upstream.requests[0].header("Authorization") == f"Bearer {second}"


async def test_missing_or_empty_file_keeps_the_last_good_token(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    volume: SecretVolume,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = make_token("acme")
    volume.write(good)
    proxy = await make_proxy([acme_route(upstream, token={"file": str(volume.path)})])
    caplog.set_level(logging.INFO, "amperity_proxy.tokens")
    volume.remove()
    await proxy.store.reload_files()
    await proxy.store.reload_files()
    volume.write("   \n")
    await proxy.store.reload_files()
    await proxy.client.get("/acme/x")
    assert upstream.requests[0].header("Authorization") == f"Bearer {good}"
    text = await proxy.metrics_text()
    assert 'amperity_proxy_token_load_errors_total{reason="missing",route="acme"} 2.0' in text
    assert 'amperity_proxy_token_load_errors_total{reason="empty",route="acme"} 1.0' in text
    readyz = await (await proxy.admin.get("/readyz")).json()
    assert readyz["ready"] is True and readyz["routes"][0]["failing"] is True

    volume.write(good)
    await proxy.store.reload_files()
    await proxy.store.reload_files()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("token source failing")]) == 1
    assert len([m for m in messages if m == "token source recovered"]) == 1
    assert all(good not in m for m in messages)


async def test_startup_fails_with_one_line_per_route_without_a_token(tmp_path: Path) -> None:
    config = parse_config(
        {
            "routes": [
                {"prefix": "/a", "tenant": "a", "token": {"env": "MISSING_TOKEN"}},
                {"prefix": "/b", "tenant": "b", "token": {"file": str(tmp_path / "none")}},
                {"prefix": "/c", "tenant": "c", "token": {"env": "EMPTY_TOKEN"}},
                {"prefix": "/d", "tenant": "d", "token": {"env": "GOOD"}},
            ]
        },
        env={},
    )
    with pytest.raises(StartupError) as info:
        await create_app(config, env={"EMPTY_TOKEN": "  ", "GOOD": "x"}).startup()
    assert info.value.lines == [
        "route a: environment variable MISSING_TOKEN is not set",
        f"route b: token file {tmp_path / 'none'} does not exist",
        "route c: environment variable EMPTY_TOKEN is empty",
    ]


@pytest.mark.parametrize(
    ("text", "reason"), [("", "empty"), ("a b", "invalid"), ("abc\r\nX-Evil: 1", "invalid")]
)
def test_unusable_token_text_is_refused(text: str, reason: str) -> None:
    from proxy.tokens import TokenError

    with pytest.raises(TokenError) as info:
        parse_token(text, 0)
    assert info.value.reason == reason
    assert text.strip() == "" or text not in str(info.value)


def test_jwt_claims_are_read_without_verifying_the_signature() -> None:
    token = make_token("acme", secret="a-secret-the-proxy-does-not-know", issued_at=1000, ttl=50)
    cred = parse_token(f"  {token}\n", loaded_at=5000)
    assert cred.authorization == f"Bearer {token}"
    assert (cred.issued_at, cred.expires_at, cred.subject, cred.is_jwt) == (
        1000,
        1050,
        "fake-api-key",
        True,
    )
    assert cred.expired(2000) and not cred.expired(1049)
    assert cred.age(1500) == 500
    assert cred.fingerprint == fingerprint(token) and len(cred.fingerprint) == 8
    assert token not in repr(cred)


def test_opaque_token_ages_from_its_load_time() -> None:
    cred = parse_token("opaque", loaded_at=100)
    assert (cred.is_jwt, cred.issued_at, cred.expires_at) == (False, None, None)
    assert cred.age(160) == 60 and not cred.expired(10**12)


def store_for(raw_routes: list[dict[str, Any]], env: dict[str, str]) -> TokenStore:
    config = parse_config({"routes": raw_routes}, env={})
    return TokenStore(
        config.routes, lambda r: make_sources(r, env=env, session=lambda: None, ssl=None)
    )


async def test_inline_value_source() -> None:
    store = store_for([{"prefix": "/a", "tenant": "a", "token": {"value": " inline "}}], {})
    assert await store.load_initial() == []
    assert store.credential("a").authorization == "Bearer inline"  # type: ignore[union-attr]


async def test_token_close_to_expiry_is_warned_about_at_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soon = make_token("acme", ttl=2 * 86400)
    store = store_for([{"prefix": "/a", "tenant": "acme", "token": {"env": "T"}}], {"T": soon})
    caplog.set_level(logging.INFO, "amperity_proxy.tokens")
    assert await store.load_initial() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "token expires within 7 days (in 2.0 days); generate a new token in Settings > "
        "Security > API keys"
    ]
