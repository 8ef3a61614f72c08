"""Who may connect: client networks, browser protections (Origin, Sec-Fetch-Site, Host) and
the client token, for the proxy listener (`Gate`) and the admin listener (`AdminGate`).

Below both the request pipeline and the admin endpoints, which never import each other.

Anything that reaches the proxy gets a live Amperity credential attached, so every check here
refuses by default and each refusal says how to allow a legitimate client. All sets, networks
and patterns are built once from the config; a check is a few lookups.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import re
from collections.abc import Mapping

from aiohttp import web

from proxy.config import SharedRedis, StartupError
from proxy.config.listen import Listen
from proxy.listener import client_ip
from proxy.redaction import SECRETS
from proxy.refusals import Refusal, refuse
from proxy.tokens import TokenError, read_source

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Sec-Fetch-Site values a browser sends for requests a user made directly (typed URL, bookmark)
# or from the proxy's own origin; anything else (same-site, cross-site) is a page's request.
_SAFE_FETCH_SITES = frozenset({"none", "same-origin"})
_CACHE_LIMIT = 4096


_HOST_RE = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]{0,5})?")


def host_part(host_header: str) -> str:
    """The host of a Host header without its port: `[::1]:8080` → `::1`, lower case; "" when
    the value is not a well-formed `host[:port]` (user info, commas, spaces, ...)."""
    host = host_header.strip().lower()
    match = _HOST_RE.fullmatch(host)
    if match is None:
        return ""
    return match.group(1).strip("[]").rstrip(".")


class Gate:
    """The listener's access checks, precomputed from `listen:` (or `admin:`: `section`)."""

    def __init__(
        self, listen: Listen, clients: Mapping[str, str] | None, section: str = "listen"
    ) -> None:
        self._section = section
        self.unix = listen.unix is not None
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n) for n in listen.client_networks
        )
        self._allowed_networks_text = ", ".join(listen.client_networks)
        self._hosts = _LOOPBACK_NAMES | {host_part(listen.host)} | set(listen.allowed_hosts)
        self._origins = frozenset(listen.allowed_origins)
        # name -> token; "" names the one `listen.client_token`
        self._tokens = [(name, token.encode()) for name, token in (clients or {}).items()]
        self._token_setting = "listen.clients" if listen.clients else "listen.client_token"
        self._client_ok: dict[str, bool] = {}

    def client(self, address: str | None) -> Refusal | None:
        """Is the peer address inside `listen.allow_clients`? (Unix sockets: file permissions.)"""
        if self.unix:
            return None
        allowed = self._client_ok.get(address or "")
        if allowed is None:
            allowed = self._check_address(address)
            if len(self._client_ok) >= _CACHE_LIMIT:
                self._client_ok.clear()
            self._client_ok[address or ""] = allowed
        if allowed:
            return None
        return refuse(
            "forbidden_client",
            f"client address {address} may not use this proxy; allowed networks: "
            f"{self._allowed_networks_text} ({self._section}.allow_clients)",
        )

    def _check_address(self, address: str | None) -> bool:
        ip = client_ip(address)
        return ip is not None and any(ip in net for net in self._networks)

    def browser(self, request: web.BaseRequest, *, forward: bool) -> Refusal | None:
        """SECURITY: refuse web pages (Origin, Sec-Fetch-Site) and DNS rebinding (Host)."""
        origin = request.headers.get("Origin")
        origin_ok = origin is not None and origin.lower().rstrip("/") in self._origins
        if origin is not None and not origin_ok:
            return refuse(
                "forbidden_origin",
                f"requests from web pages are refused (Origin: {origin[:100]}); to allow a "
                "browser-based tool, add its origin to listen.allowed_origins",
            )
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in _SAFE_FETCH_SITES and not origin_ok:
            return refuse(
                "forbidden_origin",
                f"requests from web pages are refused (Sec-Fetch-Site: {site[:40]}); to allow a "
                "browser-based tool, add its origin to listen.allowed_origins",
            )
        if forward:
            return None  # the absolute URL, not Host, decides where a forward request goes
        host = request.headers.get("Host")
        if host is not None and host_part(host) not in self._hosts:
            return refuse(
                "forbidden_host",
                f"Host {host[:100]!r} is not a name of this proxy (DNS rebinding protection); "
                "use http://127.0.0.1:<port>/ or add the name to listen.allowed_hosts",
            )
        return None

    def identify(self, request: web.BaseRequest, *, forward: bool) -> str | Refusal | None:
        """With client tokens configured, the presenting client's name ("" for the one
        `listen.client_token`) or why it is refused; None when no token is required. Every
        token is compared, in constant time, whichever matches."""
        if not self._tokens:
            return None
        if forward:
            presented = _proxy_authorization(request.headers.get("Proxy-Authorization", ""))
        else:
            presented = request.headers.get("X-Proxy-Token", "")
        given = presented.strip().encode()
        found = None
        for name, token in self._tokens:
            if hmac.compare_digest(given, token) and presented:
                found = name
        if found is not None:
            return found
        what = "Proxy-Authorization: Bearer <client token>" if forward else "X-Proxy-Token"
        kind, headers = (
            ("bad_proxy_token", {"Proxy-Authenticate": 'Bearer realm="amperity-proxy"'})
            if forward
            else ("bad_client_token", None)
        )
        return refuse(
            kind,
            f"{'a wrong' if presented else 'no'} client token; send {what} with the token "
            f"configured in {self._token_setting}",
            headers,
        )


class AdminGate:
    """The admin listener's checks: as guarded as the proxy listener, with rules for who
    reaches it (the kubelet and Prometheus on the pod IP; an operator on loopback).

    - Host (DNS rebinding needs a *name*): an IP literal is accepted, a name must be
      `localhost` or in `admin.allowed_hosts`.
    - Browsers: a request whose `Sec-Fetch-Site` says same-site or cross-site, or whose
      `Origin` is not the admin's own origin, is refused (the status page's own requests are
      same-origin; a page elsewhere can't read or act on the admin port).
    - `sensitive` views (tenants, fingerprints, file paths, reload errors, reload itself) answer
      only to `admin.allow_clients` (default loopback, which `kubectl port-forward` is)."""

    def __init__(self, admin: Listen) -> None:
        self._names = frozenset({"localhost", *admin.allowed_hosts})
        self._clients = Gate(admin, None, section="admin")

    def host(self, request: web.BaseRequest) -> Refusal | None:
        raw = request.headers.get("Host")
        if raw is None:
            return None  # HTTP/1.0 without Host: no name to rebind
        host = host_part(raw)
        if host and (host in self._names or _is_ip_literal(host)):
            return None
        return refuse(
            "forbidden_host",
            f"Host {raw[:100]!r} is not a name of this admin listener (DNS rebinding "
            "protection); use its IP address or localhost, or add the name to "
            "admin.allowed_hosts",
        )

    def browser(self, request: web.BaseRequest) -> Refusal | None:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in _SAFE_FETCH_SITES:
            return refuse(
                "forbidden_origin",
                f"requests from other web pages are refused on the admin port (Sec-Fetch-Site: "
                f"{site[:40]})",
            )
        origin = request.headers.get("Origin")
        if origin is not None:
            own = f"http://{request.headers.get('Host', '')}".lower()
            if origin.lower().rstrip("/") != own:
                return refuse(
                    "forbidden_origin",
                    f"requests from other web pages are refused on the admin port (Origin: "
                    f"{origin[:100]})",
                )
        return None

    def client(self, address: str | None) -> Refusal | None:
        return self._clients.client(address)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _proxy_authorization(value: str) -> str:
    """The token in `Bearer <token>`, or the password of `Basic base64(user:token)` (what
    clients send for HTTP_PROXY=http://user:token@host:port)."""
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


def client_tokens(listen: Listen, env: Mapping[str, str]) -> dict[str, str]:
    """Client name -> token: `listen.clients`, or "" -> `listen.client_token`; read from their
    sources (blocking: they may be files). Empty: no token is required."""
    sources = {
        c.name: (c.token, f"listen.clients[{i}].token") for i, c in enumerate(listen.clients)
    }
    if listen.client_token is not None:
        sources[""] = (listen.client_token, "listen.client_token")
    tokens: dict[str, str] = {}
    for name, (source, path) in sources.items():
        try:
            tokens[name] = read_source(source, env).strip()
        except TokenError as exc:
            raise StartupError([f"{path}: {exc}"]) from None
        SECRETS.remember(f"client:{name}", tokens[name])
    _distinct(tokens)
    return tokens


def _distinct(tokens: Mapping[str, str]) -> None:
    """SECURITY: two clients with one token would be one client: whichever name is checked
    last wins, and that token reaches the other's routes. Never names the token."""
    holders: dict[str, list[str]] = {}
    for name, token in tokens.items():
        holders.setdefault(token, []).append(name)
    shared = [names for names in holders.values() if len(names) > 1]
    if shared:
        raise StartupError(
            [
                f"listen.clients: {' and '.join(names)} have the same token; give each client "
                "a token of its own (a token names its client)"
                for names in shared
            ]
        )


def shared_password(shared: SharedRedis, env: Mapping[str, str]) -> str | None:
    """`shared.redis.password`, read from its source (blocking: it may be a file)."""
    if shared.password is None:
        return None
    try:
        password = read_source(shared.password, env).strip()
    except TokenError as exc:
        raise StartupError([f"shared.redis.password: {exc}"]) from None
    SECRETS.remember("redis", password)
    return password
