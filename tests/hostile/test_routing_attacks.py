"""Paths, targets and Host headers that try to reach somewhere the route does not allow."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import Checked, request

H = "Host: 127.0.0.1"
C = "Connection: close"


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/acmeevil/x", 404),
        ("/ACME/x", 404),
        ("/acme;x/y", 404),
        ("/%61cme/x", 404),
        ("/acme%00/x", 400),
        ("/acme%2fx", 400),
        ("/acme/%00", 400),
        ("//acme/x", 404),
        ("/acme-sbx/x", 404),
        ("/acme-sb/../acme/x", 400),
        ("/acme/../acme-sb/x", 400),
        ("/acme/./x", 400),
        ("/acme/x/..", 400),
        ("/acme/%2e%2e/x", 400),
        ("/acme/%2E%2e/x", 400),
        ("/acme/.%2e/x", 400),
        ("/acme/%2e./x", 400),
        ("/acme/%252e%252e/x", 400),
        ("/acme/%25252e%25252e/x", 400),
        ("/acme/a%2fb", 400),
        ("/acme/a%2Fb", 400),
        ("/acme/a%5cb", 400),
        ("/acme/a%255cb", 400),
        ("/acme/..%2facme-sb/x", 400),
        ("/acme/..%5cx", 400),
        ("/acme\\..\\x", 400),
        ("/acme/x\\y", 400),
    ],
)
def test_prefix_confusion_and_traversal_never_reach_the_upstream(
    hostile: Checked, target: str, status: int
) -> None:
    exchange, forwarded = hostile(request(target, H, C))
    assert exchange.status == status
    assert forwarded == []


@pytest.mark.parametrize(
    ("target", "expected_path"),
    [
        ("/acme//x", "/api//x"),
        ("/acme/x//", "/api/x//"),
        ("/acme/a;b=c/d", "/api/a;b=c/d"),
        ("/acme/%7Euser/%41", "/api/%7Euser/%41"),
        ("/acme/x?a=../../etc&b=%2e%2e", "/api/x?a=../../etc&b=%2e%2e"),
        ("/acme-sb/x", "/sbapi/x"),
    ],
)
def test_odd_but_harmless_paths_stay_under_the_base_path(
    hostile: Checked, target: str, expected_path: str
) -> None:
    exchange, forwarded = hostile(request(target, H, C))
    assert exchange.status == 200
    assert [r.raw_path for r in forwarded] == [expected_path]


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/api/x",
        "http://localhost.evil.example:{port}/api/x",
        "http://user@localhost:{port}/api/x",
        "http://localhost:{port}@evil.example/api/x",
        "http://evil.example@localhost:{port}/api/x",
        "http://localhost%2e:{port}/api/x",
        "https://localhost:{port}/api/x",
        "ftp://localhost:{port}/api/x",
        "http://localhost:{port}/api/x#frag",
        "http://localhost:{port}/apix",
        "http://localhost:{port}/",
        "http://localhost:{port}/api/../sbapi/x",
        "http://localhost:{port}/api/%2e%2e/sbapi/x",
        "*",
    ],
)
def test_absolute_form_tricks_never_reach_the_upstream(hostile: Checked, target: str) -> None:
    target = target.format(port=hostile.proxy.upstream_port)
    method = "OPTIONS" if target == "*" else "GET"
    exchange, forwarded = hostile(request(target, H, C, method=method))
    assert exchange.status in (400, 403, 404)
    assert forwarded == []


def test_absolute_form_to_a_configured_host_is_forwarded(hostile: Checked) -> None:
    target = f"http://{hostile.proxy.upstream_authority}/sbapi/segments"
    exchange, forwarded = hostile(request(target, f"Host: {hostile.proxy.upstream_authority}", C))
    assert exchange.status == 200
    assert [r.raw_path for r in forwarded] == ["/sbapi/segments"]


@pytest.mark.parametrize(
    "headers",
    [
        ("Host: evil.example",),
        ("Host: 127.0.0.1.evil.example",),
        ("Host: localhost:80@evil.example",),
        ("Host: 127.0.0.1", "Host: evil.example"),
        ("Host: evil.example", "Host: 127.0.0.1"),
        ("Host: 127.0.0.1", "Host: 127.0.0.1"),
        ("Host: 127.0.0.1, evil.example",),
    ],
)
def test_hostile_host_headers(hostile: Checked, headers: tuple[str, ...]) -> None:
    exchange, forwarded = hostile(request("/acme/x", *headers, C))
    assert exchange.status in (400, 403)
    assert forwarded == []
