"""Unit tables for route matching, path refusals and the header policy."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.request.routing import RouteTable, path_problem
from proxy.upstream.headers import query_has_api_version, response_headers, upstream_fields

TABLE = RouteTable([("/acme", "acme"), ("/acme/sandbox", "sandbox"), ("/b", "b")])


@pytest.mark.parametrize(
    ("path", "target", "rest"),
    [
        ("/acme", "acme", ""),
        ("/acme/", "acme", "/"),
        ("/acme/segments", "acme", "/segments"),
        ("/acme/sandbox", "sandbox", ""),
        ("/acme/sandbox/x", "sandbox", "/x"),
        ("/acme/sandboxx", "acme", "/sandboxx"),
        ("/b//x", "b", "//x"),
    ],
)
def test_route_matches_on_segment_boundaries_longest_first(
    path: str, target: str, rest: str
) -> None:
    match = TABLE.match(path)
    assert match is not None
    assert (match.target, match.rest) == (target, rest)


@pytest.mark.parametrize("path", ["/", "/acmeevil", "/ACME", "/acme;x", "/%61cme", "/bb", "//acme"])
def test_route_does_not_match(path: str) -> None:
    assert TABLE.match(path) is None


def test_prefixes_are_listed_sorted() -> None:
    assert TABLE.prefixes == ("/acme", "/acme/sandbox", "/b")


@pytest.mark.parametrize(
    "path",
    ["/a/b", "/a/b.c", "/a/..b", "/a/b..", "/a/%2e%2ex", "/a/%7e", "/a/%25", "/a/%zz", "/a/%"],
)
def test_acceptable_paths(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    "path",
    [
        "/a/..",
        "/a/../b",
        "/./a",
        "/a/%2e",
        "/a/%2E%2E/b",
        "/a/%252e%252e",
        "/a/%25252e",
        "/a%2fb",
        "/a%252fb",
        "/a%5Cb",
        "/a\\b",
        "/a%00",
        "/a\x00",
        "a/b",
    ],
)
def test_refused_paths(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", False),
        ("limit=1", False),
        ("api-version=2024-01-01", True),
        ("x=1&API-VERSION=1", True),
        ("api%2Dversion=1", True),
        ("api_version=1", True),
        ("api-versions=1", False),
        ("x=api-version", False),
    ],
)
def test_query_api_version_detection(query: str, expected: bool) -> None:
    assert query_has_api_version(query) is expected


def _upstream(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(
        upstream_fields(
            CIMultiDictProxy(CIMultiDict(pairs)),
            authorization="Bearer t",
            tenant="acme",
            host="acme.amperity.com",
            api_version="2024-04-01",
            request_id="rid",
            query_has_api_version=False,
        )
    )


def test_upstream_headers_replace_what_the_proxy_owns() -> None:
    out = _upstream(
        ("Host", "127.0.0.1:8080"),
        ("X-Request-ID", "client"),
        ("Expect", "100-continue"),
        ("Api_Version", "2020-01-01"),
        ("Accept", "application/json"),
        ("Accept", "text/plain"),
    )
    assert list(out.items()) == [
        ("Accept", "application/json"),
        ("Accept", "text/plain"),
        ("Host", "acme.amperity.com"),
        ("Authorization", "Bearer t"),
        ("Amperity-Tenant", "acme"),
        ("api-version", "2020-01-01"),
        ("X-Request-ID", "rid"),
    ]


def test_connection_listed_names_are_dropped_with_underscore_spelling() -> None:
    out = _upstream(("Connection", "x-a, X_B"), ("X-A", "1"), ("x-b", "2"), ("X-C", "3"))
    assert "X-A" not in out and "X-B" not in out and out["X-C"] == "3"


def test_response_headers_keep_repeats_and_drop_hop_by_hop() -> None:
    out = response_headers(
        [
            ("Set-Cookie", "a=1"),
            ("Connection", "x-drop"),
            ("X-Drop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Set-Cookie", "b=2"),
            ("Content-Length", "10"),
        ]
    )
    assert list(out.items()) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "10"),
    ]
