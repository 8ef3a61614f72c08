"""HTTPS on the proxy listener (`listen.tls`): a shared deployment is a network service and its
answers carry customer data. A verifying client gets its answer; a renewed certificate (files
replaced, as cert-manager does) is served to new connections without a restart; a broken
renewal keeps the certificate that works."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, parse_config
from proxy.config.listen import ListenTLS
from proxy.listener import ServerCertificate
from proxy.testing import FakeTLS, make_token
from tests.conftest import ProcessUpstream
from tests.support.process import spawn_proxy
from tests.support.waiting import until_async


def _write_leaf(tls: FakeTLS, directory: Path) -> bytes:
    """A new certificate for localhost from the test CA, swapped into place; its DER."""
    leaf = tls.ca.issue_cert("localhost")
    for name, pem in (("tls.key", leaf.private_key_pem), ("tls.crt", leaf.cert_chain_pems[0])):
        (directory / f".{name}").write_bytes(pem.bytes())
        os.replace(directory / f".{name}", directory / name)  # atomic, like a Secret update
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def _served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


async def test_https_listener_serves_and_follows_a_renewal(
    tmp_path: Path, tls: FakeTLS, process_upstream: ProcessUpstream
) -> None:
    fake = process_upstream.fake
    first = _write_leaf(tls, tmp_path)
    config: dict[str, Any] = {
        "listen": {
            "port": 0,
            "tls": {"cert_file": str(tmp_path / "tls.crt"), "key_file": str(tmp_path / "tls.key")},
        },
        "admin": {"port": 0},
        "routes": [process_upstream.route()],
    }
    process = await spawn_proxy(tmp_path, config, {"ACME_TOKEN": make_token("acme")})
    port = int(process.proxy.rsplit(":", 1)[1])
    try:
        url = f"https://localhost:{port}/acme/segments"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=tls.client) as response:
                assert response.status == 200
                assert (await response.json()) is not None
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # verification is on
                async with session.get(url, ssl=ssl.create_default_context()):
                    pass
        assert [r.raw_path for r in fake.requests] == ["/api/segments"]
        assert await _served_certificate(port, tls.client) == first
        second = _write_leaf(tls, tmp_path)
        assert second != first

        async def renewed() -> bool:
            return await _served_certificate(port, tls.client) == second

        await until_async(renewed, "the renewed certificate served")
        (tmp_path / "tls.crt").write_text("not a certificate")  # a broken renewal
        await process.log_until(lambda r: "keeping the current certificate" in r.get("message", ""))
        assert await _served_certificate(port, tls.client) == second
    finally:
        await process.stop()


def test_listen_tls_settings_are_checked() -> None:
    route = {"prefix": "/a", "tenant": "acme", "token": {"env": "T"}}
    with pytest.raises(ConfigError) as info:
        parse_config({"listen": {"tls": {"cert_file": "/c.pem"}}, "routes": [route]}, env={})
    assert "listen.tls.key_file: missing" in str(info.value)
    unix = {"unix": {"path": "/tmp/p.sock"}, "tls": {"cert_file": "/c", "key_file": "/k"}}
    with pytest.raises(ConfigError) as info:
        parse_config({"listen": unix, "routes": [route]}, env={})
    assert "listen.tls: a Unix socket is local to the machine" in str(info.value)


async def test_a_half_written_renewal_never_stops_the_listener(
    tmp_path: Path, tls: FakeTLS, caplog: pytest.LogCaptureFixture
) -> None:
    """cert-manager writes the certificate, then the key: in between, and for ever if the key
    never comes, handshakes get the working certificate (OpenSSL drops a live context's key
    when a load fails its key check, so a renewal is loaded into a new context and swapped in
    only whole). The log says why, once per distinct problem."""
    first = _write_leaf(tls, tmp_path)
    certificate = ServerCertificate(ListenTLS(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")))
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=certificate.context
    )
    port = int(server.sockets[0].getsockname()[1])
    try:
        leaf = tls.ca.issue_cert("localhost")
        (tmp_path / "tls.crt").write_bytes(leaf.cert_chain_pems[0].bytes())  # the key is late
        assert certificate.refresh() is False
        assert await _served_certificate(port, tls.client) == first
        os.utime(tmp_path / "tls.crt")  # touched again, still without its key
        assert certificate.refresh() is False
        said = [r.getMessage() for r in caplog.records if "keeping the current" in r.getMessage()]
        assert len(said) == 1 and "tls.crt" in said[0]
        (tmp_path / "tls.key").write_bytes(leaf.private_key_pem.bytes())
        assert certificate.refresh() is True
        new = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        assert await _served_certificate(port, tls.client) == new
    finally:
        server.close()
        await server.wait_closed()
