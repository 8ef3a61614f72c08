"""Property-based: whatever path a client builds from the dangerous pieces, a forwarded request
stays under its own route's base path, with its own route's token and tenant."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import Checked, request

PIECES = [
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    ".%2e",
    "%252e%252e",
    "%2f",
    "%2F",
    "%5c",
    ";",
    ";x=1",
    "@",
    "?",
    "#",
    "a",
    "b%20c",
    "%00",
    "~",
]
PREFIXES = {"/acme": "/api", "/acme-sb": "/sbapi", "/acmeevil": None, "/ACME": None, "": None}
TENANTS = st.sampled_from(["acme", "acme-sb", "evil", "ACME", "acme\tx", "a" * 64])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    prefix=st.sampled_from(sorted(PREFIXES)),
    segments=st.lists(
        st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join), max_size=5
    ),
    tenant=TENANTS,
)
def test_forwarded_requests_stay_in_their_route(
    hostile: Checked, prefix: str, segments: list[str], tenant: str
) -> None:
    target = prefix + "/" + "/".join(segments)
    exchange, forwarded = hostile(
        request(target, "Host: 127.0.0.1", "Connection: close", f"Amperity-Tenant: {tenant}")
    )
    assert len(forwarded) <= 1
    for seen in forwarded:  # in place (path, token, tenant) was checked by `hostile`
        base = PREFIXES[prefix]
        assert base is not None, f"{target!r} reached the upstream"
        assert seen.raw_path == base or seen.raw_path.startswith((base + "/", base + "?"))
    if not forwarded:
        assert exchange.status in (400, 404) or exchange.status == 0
