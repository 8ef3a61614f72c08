"""The listener settings: `Listen` (host/port or Unix socket, plus who may connect) and its parser.

Pure, like the rest of the config: `listen_problems` refuses to expose the token beyond
loopback unless the clients allowed to use it are listed explicitly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from proxy.config.clients import NamedClient, parse_clients
from proxy.config.readers import Errors, join, mapping, number, positive, string, string_list
from proxy.config.sources import SECRET_KINDS, TokenSource, parse_source

LOOPBACK_CLIENTS = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class UnixListen:
    path: str
    mode: int  # file permission bits of the socket, e.g. 0o660


@dataclass(frozen=True)
class ListenTLS:
    """`listen.tls`: serve HTTPS with this certificate chain and key (PEM files), re-read when
    they change (cert-manager, a renewed Secret)."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class Listen:
    """A listener. `allowed_hosts` and `allow_clients` guard both listeners; `allowed_origins`,
    `unix` and `client_token` are the proxy listener's only."""

    host: str
    port: int
    allowed_hosts: tuple[str, ...] = ()  # extra Host names accepted in reverse mode
    allowed_origins: tuple[str, ...] = ()  # browser origins that may use the proxy
    allow_clients: tuple[str, ...] | None = None  # CIDRs; None = loopback only (not explicit)
    unix: UnixListen | None = None  # serve on a Unix socket instead of host:port
    client_token: TokenSource | None = None  # a token every client must present
    tls: ListenTLS | None = None  # HTTPS on the proxy listener
    clients: tuple[NamedClient, ...] = ()  # named client tokens; routes list who may use them

    @property
    def client_networks(self) -> tuple[str, ...]:
        return LOOPBACK_CLIENTS if self.allow_clients is None else self.allow_clients

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Whether a listen host only accepts connections from this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_problems(listen: Listen) -> list[str]:
    """SECURITY: refuse to expose the token beyond loopback unless clients are listed explicitly."""
    if listen.unix is not None or listen.allow_clients is not None or is_loopback(listen.host):
        return []
    return [
        f"listen.host: {listen.host} is not a loopback address, so every machine that can reach "
        "it could send requests with the Amperity token; set listen.allow_clients to the networks "
        "that may use the proxy (for example [10.1.2.0/24]), or listen on 127.0.0.1"
    ]


def _listen(
    raw: object, path: str, errs: Errors, default: Listen, keys: tuple[str, ...] = ("host", "port")
) -> Listen:
    if raw is None:
        return default
    m = mapping(raw, path, errs, keys)
    if m is None:
        return default
    host = string(m["host"], join(path, "host"), errs) if "host" in m else default.host
    port = default.port
    if "port" in m:
        value = number(m["port"], join(path, "port"), errs, integer=True)
        if value is not None and not 0 <= value <= 65535:
            errs.add(
                join(path, "port"), f"must be between 0 and 65535, got {errs.show(int(value))}"
            )
        elif value is not None:
            port = int(value)
    return Listen(host or default.host, port)


_PROXY_LISTEN_KEYS = (
    "tls",
    "clients",
    "host",
    "port",
    "allowed_hosts",
    "allowed_origins",
    "allow_clients",
    "unix",
    "client_token",
)
_HOST_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
_ORIGIN_RE = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:\d{1,5})?")


def _allowed_hosts(raw: object, errs: Errors, section: str = "listen") -> tuple[str, ...]:
    hosts = []
    for path, value in string_list(raw, f"{section}.allowed_hosts", errs):
        host = value.lower().rstrip(".").strip("[]")
        if not _HOST_NAME_RE.fullmatch(host) and not _is_ip(host):
            errs.add(
                path, f"expected a host name or IP address without a port, got {errs.show(value)}"
            )
        else:
            hosts.append(host)
    return tuple(hosts)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _allowed_origins(raw: object, errs: Errors) -> tuple[str, ...]:
    origins = []
    for path, value in string_list(raw, "listen.allowed_origins", errs):
        origin = value.lower().rstrip("/")
        if not _ORIGIN_RE.fullmatch(origin):
            errs.add(
                path,
                f"expected an origin like https://tool.example.com[:port], got {errs.show(value)}",
            )
        else:
            origins.append(origin)
    return tuple(origins)


def _allow_clients(raw: object, errs: Errors, section: str = "listen") -> tuple[str, ...]:
    networks = []
    for path, value in string_list(raw, f"{section}.allow_clients", errs):
        try:
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            errs.add(
                path, f"expected a CIDR network like 10.0.0.0/8 or ::1/128, got {errs.show(value)}"
            )
    return tuple(networks)


def _unix(raw: object, errs: Errors) -> UnixListen | None:
    m = mapping(raw, "listen.unix", errs, ("path", "mode"))
    if m is None:
        return None
    if "path" not in m:
        errs.add("listen.unix.path", "is required")
        return None
    path = string(m["path"], "listen.unix.path", errs)
    raw_mode = m.get("mode", "0660")
    mode = -1
    if isinstance(raw_mode, int) and not isinstance(raw_mode, bool):
        mode = raw_mode  # YAML 1.1 reads an unquoted 0660 as octal already
    elif isinstance(raw_mode, str) and re.fullmatch(r"0?[0-7]{3}", raw_mode):
        mode = int(raw_mode, 8)
    if not 0 <= mode <= 0o777:
        errs.add(
            "listen.unix.mode",
            f'expected an octal string like "0660", got {errs.show(m.get("mode"))}',
        )
        return None
    return UnixListen(path, mode) if path else None


def parse_proxy_listen(raw: object, errs: Errors) -> Listen:
    """The `listen:` section: address and access settings."""
    listen = _listen(raw, "listen", errs, Listen("127.0.0.1", 8080), _PROXY_LISTEN_KEYS)
    if not isinstance(raw, dict):
        return listen
    extra: dict[str, Any] = {}
    if "allowed_hosts" in raw:
        extra["allowed_hosts"] = _allowed_hosts(raw["allowed_hosts"], errs)
    if "allowed_origins" in raw:
        extra["allowed_origins"] = _allowed_origins(raw["allowed_origins"], errs)
    if "allow_clients" in raw:
        extra["allow_clients"] = _allow_clients(raw["allow_clients"], errs)
    if raw.get("unix") is not None:
        extra["unix"] = _unix(raw["unix"], errs)
    if raw.get("client_token") is not None:
        token = parse_source(raw["client_token"], "listen.client_token", errs, SECRET_KINDS)
        extra["client_token"] = token
    if raw.get("clients") is not None:
        extra["clients"] = parse_clients(raw["clients"], errs)
    if raw.get("tls") is not None:
        extra["tls"] = _tls(raw["tls"], errs, unix=raw.get("unix") is not None)
    return dataclasses.replace(listen, **extra)


def _tls(raw: object, errs: Errors, *, unix: bool) -> ListenTLS | None:
    m = mapping(raw, "listen.tls", errs, ("cert_file", "key_file"))
    if m is None:
        return None
    files = []
    for key in ("cert_file", "key_file"):
        if m.get(key) is None:
            errs.add(f"listen.tls.{key}", "missing: a PEM file (for example tls.crt / tls.key)")
            continue
        files.append(string(m[key], f"listen.tls.{key}", errs))
    if unix:
        errs.add("listen.tls", "a Unix socket is local to the machine: drop tls or unix")
        return None
    if len(files) != 2 or None in files:
        return None
    return ListenTLS(str(files[0]), str(files[1]))


def parse_listen(text: str) -> Listen:
    """Parse a `HOST:PORT` flag (`[::1]:8080` for IPv6); raise a readable ValueError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (for example 127.0.0.1:8080), got {text!r}")
    return Listen(host, int(port))


@dataclass(frozen=True)
class AdminSettings:
    """The admin listener's own guards (its address and `allowed_hosts`/`allow_clients` are in
    its `Listen`). Defaults suit a sidecar: the kubelet and Prometheus reach the probes and
    /metrics on the pod IP; the views with tenants, fingerprints, paths and reload errors
    answer only to `allow_clients` (loopback, which `kubectl port-forward` is)."""

    enable_reload: bool = False  # serve POST /-/reload
    enable_quit: bool = False  # serve POST /quitquitquit (a Job's app stops its sidecar)
    header_timeout: float = 10.0  # seconds to receive complete request headers -> 408
    max_connections: int = 256  # concurrent admin connections; beyond -> 503


_ADMIN_KEYS = (
    "host",
    "port",
    "enable_reload",
    "enable_quit",
    "allowed_hosts",
    "allow_clients",
    "header_timeout",
    "max_connections",
)


def parse_admin(raw: object, errs: Errors) -> tuple[Listen, AdminSettings]:
    """The `admin:` section: its address, who may see what, its limits, and reload."""
    admin = _listen(raw, "admin", errs, Listen("127.0.0.1", 9090), _ADMIN_KEYS)
    settings = AdminSettings()
    if not isinstance(raw, dict):
        return admin, settings
    extra: dict[str, Any] = {}
    if "allowed_hosts" in raw:
        extra["allowed_hosts"] = _allowed_hosts(raw["allowed_hosts"], errs, "admin")
    if "allow_clients" in raw:
        extra["allow_clients"] = _allow_clients(raw["allow_clients"], errs, "admin")
    values: dict[str, Any] = {}
    for key in ("enable_reload", "enable_quit"):
        if key in raw and isinstance(raw[key], bool):
            values[key] = raw[key]
        elif key in raw:
            errs.add(f"admin.{key}", f"expected true or false, got {errs.show(raw[key])}")
    if "header_timeout" in raw:
        seconds = positive(raw["header_timeout"], "admin.header_timeout", errs)
        if seconds is not None:
            values["header_timeout"] = seconds
    if "max_connections" in raw:
        count = number(raw["max_connections"], "admin.max_connections", errs, integer=True)
        if count is not None and count < 1:
            errs.add("admin.max_connections", f"must be at least 1, got {errs.show(int(count))}")
        elif count is not None:
            values["max_connections"] = int(count)
    return dataclasses.replace(admin, **extra), AdminSettings(**values)
