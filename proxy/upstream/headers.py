"""The header policy: what goes upstream, what comes back, and how `Location` is rewritten.

Pure functions over multidicts; nothing here knows about routes or tokens beyond the strings it
is handed.

RFC 9110 §7.6.1 (Connection): "Intermediaries MUST parse a received Connection header field
before a message is forwarded and, for each connection-option in this field, remove any header
or trailer field(s) from the message with the same name as the connection-option, and then
remove the Connection header field itself". It also names Proxy-Connection, Keep-Alive, TE,
Transfer-Encoding and Upgrade as fields an intermediary must not forward. RFC 9110 §11.7.1/§11.7.2
make Proxy-Authenticate/Proxy-Authorization hop-by-hop; §6.6.2 does the same for Trailer.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterable, Iterator
from urllib.parse import unquote, urljoin, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.redaction import SECRETS

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# SECURITY: a client never chooses the credential or the tenant; every copy is removed, whatever
# its case or whether it is spelt with `_` (some servers read `Amperity_Tenant` as
# `Amperity-Tenant`).
CREDENTIAL = frozenset({"authorization", "amperity-tenant", "x-amperity-tenant"})

# Set by the proxy itself. `Expect` is answered by the proxy's own server (100-continue), so
# forwarding it would make the upstream exchange wait for a second 100.
# `X-Proxy-Token` is the client's credential for the proxy itself: never forwarded.
# `Content-Length` is the writer's (upstream.framing), declared from what it sends.
_REPLACED = frozenset(
    {"host", "x-request-id", "expect", "api-version", "x-proxy-token", "content-length"}
)

# SECURITY: headers that ask a server (or a framework in front of it) to act on another method,
# path or client than the request line and the connection say: method overrides, rewrite
# targets, and the forwarding chain. The proxy is the edge and its clients are local, so no
# client has a forwarding chain worth passing on; a route's `methods`/`paths` policy judges the
# request line, and these would let the upstream act on something else.
CLIENT_OVERRIDES = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-real-ip",
        "forwarded",
    }
)

_DROP_UPSTREAM = HOP_BY_HOP | CREDENTIAL | _REPLACED | CLIENT_OVERRIDES

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


_NORMALIZED: dict[str, str] = {}


def normalize(name: str) -> str:
    """Header names compare case-insensitively and with `_` read as `-`."""
    normalized = _NORMALIZED.get(name)
    if normalized is None:
        normalized = name.lower().replace("_", "-")
        if len(_NORMALIZED) < 4096:  # header names repeat; a bounded cache saves the work
            _NORMALIZED[name] = normalized
    return normalized


_NOTHING: frozenset[str] = frozenset()


def _connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Names listed in every `Connection` header (RFC 9110 §7.6.1), normalized."""
    if "Connection" not in headers:  # no `_` can hide in "connection": one lookup suffices
        return _NOTHING
    listed: set[str] = set()
    for key, value in headers.items():
        if normalize(key) == "connection":
            listed.update(normalize(v.strip()) for v in value.split(",") if v.strip())
    return frozenset(listed)


_ID_PREFIX = uuid.uuid4().hex[:16]  # random per process: ids stay unique across restarts
_ID_COUNTER = itertools.count(1)


def request_id(client_value: str | None) -> str:
    """The client's X-Request-ID when well-formed (1-128 of `A-Za-z0-9._:-`), else a new one
    (32 hex digits: a random per-process prefix and a counter — no entropy read per request)."""
    if client_value is not None and _REQUEST_ID_RE.fullmatch(client_value):
        return client_value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def query_has_api_version(query: str) -> bool:
    """Whether a raw query string carries an `api-version` parameter."""
    if "api" not in query.lower():  # fast path: almost every query lacks it
        return False
    for pair in query.split("&"):
        key = pair.split("=", 1)[0]
        if normalize(unquote(key.replace("+", " "))) == "api-version":
            return True
    return False


def upstream_fields(
    client: CIMultiDictProxy[str],
    *,
    authorization: str,
    tenant: str,
    host: str,
    tenant_headers: tuple[str, ...] = ("Amperity-Tenant",),
    api_version: str | None,
    request_id: str,
    query_has_api_version: bool,
) -> Iterator[tuple[str, str]]:
    """The upstream headers in order: the client's minus hop-by-hop, credential and override
    headers, then the proxy's own. The one place the policy is applied."""
    listed = _connection_listed(client)
    client_api_version: list[str] = []
    for key, value in client.items():
        name = normalize(key)
        if name == "api-version":
            client_api_version.append(value)
        elif name not in _DROP_UPSTREAM and name not in listed:
            yield key, value
    yield "Host", host
    yield "Authorization", authorization
    for name in tenant_headers:  # the api preset's spelling (streaming: X-Amperity-Tenant)
        yield name, tenant
    # Re-spelt canonically: a server such as nginx drops `api_version` by default.
    for value in client_api_version:
        yield "api-version", value
    if not client_api_version and not query_has_api_version and api_version is not None:
        yield "api-version", api_version
    yield "X-Request-ID", request_id


def response_headers(upstream: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop and CORS ones, and any that holds a
    live secret; repeats survive.

    SECURITY: the proxy never answers with CORS headers, so no web page can read a response.
    """
    items = list(upstream)
    listed = _connection_listed(CIMultiDict(items))
    # SECURITY: a value that holds a live secret (an upstream echoing the token) is dropped.
    # One scan of all values together; the per-value check only when that finds one.
    echoed = SECRETS.holds("\n".join(value for _, value in items))
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in items:
        name = normalize(key)
        if name not in HOP_BY_HOP and name not in listed and not name.startswith("access-control-"):
            if echoed and SECRETS.holds(value):
                continue
            out.add(key, value)
    return out


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


def rewrite_location(
    location: str,
    *,
    request_url: str,
    base_scheme: str,
    base_host: str,
    base_port: int,
    base_path: str,
    public_base: str,
) -> str:
    """Map a Location inside the route's base URL to `public_base` (how the client reaches the
    base URL through the proxy); leave any other Location unchanged."""
    try:
        target = urlsplit(urljoin(request_url, location))
        port = _port(target.scheme, target.port)
    except ValueError:
        return location
    inside = (
        target.scheme == base_scheme
        and (target.hostname or "").rstrip(".") == base_host
        and port == base_port
        and not target.username
        and (target.path == base_path or target.path.startswith(base_path + "/"))
    )
    if not inside:
        return location
    rest = target.path[len(base_path) :]
    query = f"?{target.query}" if target.query else ""
    fragment = f"#{target.fragment}" if target.fragment else ""
    return f"{public_base}{rest}{query}{fragment}"
