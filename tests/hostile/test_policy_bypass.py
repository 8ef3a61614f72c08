"""Route policy can't be bypassed: fragments, dot segments with `;parameters`, method-override
and rewrite headers, and config regexes that would freeze a backtracking engine."""

from __future__ import annotations

import concurrent.futures
import re
import time
import urllib.request

import pytest

from tests.hostile.conftest import POLICY_PATHS, Checked, request, send

H = "Host: 127.0.0.1"
C = "Connection: close"


def _judged_by_policy(prefix: str, upstream_path: str) -> bool:
    """Whether the path the upstream received (after /api) is one the route's policy allows."""
    rest = upstream_path.split("?", 1)[0].removeprefix("/api")
    return any(re.fullmatch(p, rest) for p in POLICY_PATHS[prefix])


@pytest.mark.parametrize(
    "target",
    [
        "/ro/segments/abc#/profiles",
        "/ro/segments#",
        "/ro/segments/abc/profiles#x",
        "/acme/x#frag",
        "/acme/x?a=1#frag",
    ],
)
def test_a_fragment_in_a_reverse_mode_target_is_refused(hostile: Checked, target: str) -> None:
    hostile.ledger.tried("policy bypass")
    exchange, forwarded = hostile(request(target, H, C))
    assert exchange.status == 400
    assert b"fragment" in exchange.body
    assert forwarded == []


@pytest.mark.parametrize(
    "target",
    [
        "/acme/..;/admin",
        "/acme/.;/x",
        "/acme/%2e%2e;/admin",
        "/acme/%2E%2E;x=1/admin",
        "/acme/..%3b/admin",
        "/acme/..%3B/admin",
        "/acme/.%3bjsessionid=1/x",
        "/acme/%252e%252e%253b/admin",
        "/acme/x/..;",
        "/ro-any/segments/..;/..;/admin/keys",
        "/ro-any/segments/%2e%2e;/x",
    ],
)
def test_dot_segments_with_parameters_are_refused(hostile: Checked, target: str) -> None:
    hostile.ledger.tried("policy bypass")
    exchange, forwarded = hostile(request(target, H, C))
    assert exchange.status == 400
    assert forwarded == []


@pytest.mark.parametrize("path", ["/api/..;/admin", "/api/%2e%2e;/x", "/api/..%3b/sbapi/x"])
def test_dot_segments_with_parameters_are_refused_in_forward_mode(
    hostile: Checked, path: str
) -> None:
    hostile.ledger.tried("policy bypass")
    authority = hostile.proxy.upstream_authority
    exchange, forwarded = hostile(request(f"http://{authority}{path}", f"Host: {authority}", C))
    assert exchange.status == 400
    assert forwarded == []


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/ro/segments", 200),
        ("/ro/segments/abc/profiles", 200),
        ("/ro/segments/abc;x/profiles", 200),
        ("/ro/segments/abc", 403),
        ("/ro/segments/abc/profiles/../keys", 400),
        ("/ro/segments/abc/profiles/", 403),
        ("/ro/segments/a%2fb/profiles", 400),
        ("/ro/segments/abc/profiles?x=#", 400),
    ],
)
def test_the_policy_judges_exactly_the_path_that_is_sent(
    hostile: Checked, target: str, status: int
) -> None:
    hostile.ledger.tried("policy bypass")
    exchange, forwarded = hostile(request(target, H, C))
    assert exchange.status == status
    assert all(_judged_by_policy("/ro", r.raw_path) for r in forwarded)
    assert len(forwarded) == (1 if status == 200 else 0)


OVERRIDES = (
    "X-HTTP-Method-Override: DELETE",
    "X-HTTP-Method: DELETE",
    "X-Method-Override: DELETE",
    "X-Original-URL: /api/admin/keys",
    "X-Rewrite-URL: /api/admin/keys",
    "X-Original-Method: DELETE",
    "X-Forwarded-Host: evil.example",
    "X-Forwarded-For: 10.1.2.3",
    "X-Forwarded-Proto: http",
    "X-Forwarded-Port: 80",
    "X-Forwarded-Prefix: /admin",
    "X_Forwarded_Host: evil.example",
    "Forwarded: for=10.1.2.3;host=evil.example;proto=http",
    "X-Real-IP: 10.1.2.3",
)


@pytest.mark.parametrize("prefix", ["/ro", "/acme"])
def test_method_override_rewrite_and_forwarded_headers_are_stripped(
    hostile: Checked, prefix: str
) -> None:
    hostile.ledger.tried("policy bypass", len(OVERRIDES))
    exchange, forwarded = hostile(request(f"{prefix}/segments", H, *OVERRIDES, C))
    assert exchange.status == 200
    [received] = forwarded
    assert received.method == "GET"
    assert received.raw_path == "/api/segments"
    names = {name.lower().replace("_", "-") for name, _ in received.headers}
    sent = {line.split(":", 1)[0].lower().replace("_", "-") for line in OVERRIDES}
    assert names & sent == set(), names & sent


def _livez(port: int) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as response:
        assert response.status == 200
    return time.monotonic() - started


@pytest.mark.parametrize(
    "rest",
    [
        "a" * 30 + "!",
        "a1" * 20 + "!",
        # A path just under the request line limit (limits.max_request_line: 8,190 by default).
        "a" * (8190 - len("GET /slug/segments/ HTTP/1.1") - 2) + "!",
    ],
    ids=["30", "mixed", "request-line-limit"],
)
def test_a_nested_quantifier_policy_cannot_freeze_the_proxy(hostile: Checked, rest: str) -> None:
    """`([a-z0-9]+-?)+` against `aaa…!` backtracks for minutes in Python's `re`; on RE2 the
    answer, and `/livez` meanwhile, come at once. Generous deadlines tell a fix from a hang."""
    hostile.ledger.tried("policy bypass")
    target = f"/slug/segments/{rest}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(send, hostile.proxy.port, request(target, H, C), 10.0)
        livez = [_livez(hostile.proxy.admin_port) for _ in range(3)]
        exchange = pending.result(timeout=20)
    assert exchange.status == 403  # `!` is outside the pattern: refused, nothing forwarded
    assert max(livez) < 2.0
