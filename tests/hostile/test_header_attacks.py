"""Client credentials in every spelling, hop-by-hop tricks, and the size limits (414/431)."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import Checked, request

H = "Host: 127.0.0.1"
C = "Connection: close"


@pytest.mark.parametrize(
    "headers",
    [
        ("Authorization: Bearer attacker",),
        ("authorization: Bearer a", "AUTHORIZATION: Bearer b"),
        ("Amperity-Tenant: acme-sb",),
        ("amperity-tenant: acme-sb", "Amperity-Tenant: other"),
        ("Amperity_Tenant: acme-sb",),
        ("AMPERITY_TENANT: acme-sb",),
        ("X-Amperity-Tenant: acme-sb",),
        ("x_amperity_tenant: acme-sb",),
        ("Proxy-Authorization: Bearer x",),
        (
            "Authorization: Basic dXNlcjpwYXNz",
            "Amperity-Tenant: acme-sb",
            "X-Amperity-Tenant: acme-sb",
        ),
    ],
)
def test_client_credentials_never_reach_the_upstream(
    hostile: Checked, headers: tuple[str, ...]
) -> None:
    exchange, forwarded = hostile(request("/acme/x", H, C, *headers))
    assert exchange.status == 200
    [seen] = forwarded  # `hostile` already checked: acme's token and tenant, nothing else
    names = [name.lower().replace("_", "-") for name, _ in seen.headers]
    assert names.count("authorization") == 1 and names.count("amperity-tenant") == 1
    assert "x-amperity-tenant" not in names and "proxy-authorization" not in names


@pytest.mark.parametrize(
    "connection",
    [
        "Connection: Authorization, close",
        "Connection: close, Authorization, Amperity-Tenant",
        "Connection: api-version, close",
    ],
)
def test_connection_naming_injected_headers_does_not_remove_them(
    hostile: Checked, connection: str
) -> None:
    exchange, forwarded = hostile(request("/acme/x", H, connection))
    assert exchange.status == 200
    [seen] = forwarded
    assert seen.header("Authorization") is not None
    assert seen.header_all("Amperity-Tenant") == ["acme"]
    assert seen.header_all("api-version") == ["2024-04-01"]


def test_request_line_too_long_is_414(hostile: Checked) -> None:
    exchange, forwarded = hostile(request("/acme/" + "a" * 9000, H, C))
    assert exchange.status == 414
    assert b"aaaaaaaa" not in exchange.body  # the request is never echoed
    # the refusal names the setting that would raise the limit
    assert b"longer than 8190 bytes (limits.max_request_line raises it)" in exchange.body
    assert forwarded == [] and exchange.closed


def test_header_too_large_is_431(hostile: Checked) -> None:
    exchange, forwarded = hostile(request("/acme/x", H, C, "X-Big: " + "b" * 9000))
    assert exchange.status == 431
    assert b"bbbbbbbb" not in exchange.body
    assert b"longer than 8190 bytes (limits.max_header_size raises it)" in exchange.body
    assert forwarded == [] and exchange.closed


def test_too_many_headers_is_431(hostile: Checked) -> None:
    many = [f"X-H{i}: v" for i in range(150)]
    exchange, forwarded = hostile(request("/acme/x", H, C, *many))
    assert exchange.status == 431
    assert b"more than 100 request headers (limits.max_headers raises it)" in exchange.body
    assert forwarded == [] and exchange.closed


def test_many_small_headers_within_the_limit_pass(hostile: Checked) -> None:
    some = [f"X-H{i}: v" for i in range(90)]
    exchange, forwarded = hostile(request("/acme/x", H, C, *some))
    assert exchange.status == 200
    assert len(forwarded) == 1
