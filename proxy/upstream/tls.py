"""TLS for the upstream: one verifying SSL context per distinct CA bundle, reused across reloads.

SECURITY: `ssl.create_default_context` verifies certificates and host names; nothing here can
turn that off. A route's `ca_file` only adds trust anchors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ssl
from collections.abc import Mapping

from proxy.config import Config, Route, StartupError

ContextKey = tuple[str | None, str]  # (ca_file, sha256 of its content; "" for system CAs)


@dataclasses.dataclass(frozen=True)
class Contexts:
    by_route: dict[str, ssl.SSLContext]
    by_key: dict[ContextKey, ssl.SSLContext]


def ssl_contexts(
    config: Config,
    keys: Mapping[str, ContextKey],
    previous: Mapping[ContextKey, ssl.SSLContext],
) -> dict[ContextKey, ssl.SSLContext]:
    """One verifying SSL context per distinct ca_file (None = system CAs), reusing the previous
    generation's context when the CA bundle is unchanged. A new context per reload would give
    aiohttp's pool new connection keys: old connections (and the contexts, about 2 MiB of CA
    store each) would linger until their keep-alive ran out, and under load a reload every
    second grew memory and file descriptors without bound. Blocking: reads the bundles."""
    contexts: dict[ContextKey, ssl.SSLContext] = {}
    for route in config.routes:
        key = keys[route.name]
        if key in contexts:
            continue
        if key in previous:
            contexts[key] = previous[key]
            continue
        # SECURITY: create_default_context verifies certificates and host names; nothing
        # here can turn that off. ca_file only adds trust anchors.
        context = ssl.create_default_context()
        if route.ca_file is not None:
            try:
                context.load_verify_locations(cafile=route.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(
                    [f"route {route.name}: cannot load ca_file {route.ca_file}: {exc}"]
                ) from None
        contexts[key] = context
    return contexts


def context_key(route: Route) -> ContextKey:
    if route.ca_file is None:
        return (None, "")
    try:
        with open(route.ca_file, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise StartupError(
            [f"route {route.name}: cannot read ca_file {route.ca_file}: {exc.strerror or exc}"]
        ) from None
    return (route.ca_file, digest)


class TlsContexts:
    """The running generation's contexts by (ca_file, digest); `build` makes a config's,
    reusing unchanged ones, and `keep` makes a built set the running one (after a reload
    is committed). `fixed` (tests): one context for every route."""

    def __init__(self, fixed: ssl.SSLContext | None = None) -> None:
        self._fixed = fixed
        self._cache: dict[ContextKey, ssl.SSLContext] = {}

    def build(self, config: Config) -> Contexts:
        """route name -> SSL context. Blocking: reads the CA bundles."""
        if self._fixed is not None:
            return Contexts({route.name: self._fixed for route in config.routes}, {})
        keys = {route.name: context_key(route) for route in config.routes}
        by_key = ssl_contexts(config, keys, self._cache)
        return Contexts({name: by_key[key] for name, key in keys.items()}, by_key)

    def keep(self, built: Contexts) -> None:
        self._cache = built.by_key


def trim_tls_read_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    """asyncio's TLS layer (`asyncio.sslproto.SSLProtocol`) gives every connection a 256 KiB
    ciphertext buffer (`max_size`), allocated and zero-filled when the connection opens and
    kept for its life, pooled or not: a quarter of a MiB per upstream connection. Reading
    `size` at a time instead costs a few more syscalls on a large download and bounds what
    each connection holds. The stdlib has no public knob for it, so this reaches for the
    protocol's attributes and does nothing when they are not there (another Python, uvloop);
    `tests/test_memory.py` shows when that happens."""
    protocol = getattr(transport, "_ssl_protocol", None)
    buffer = getattr(protocol, "_ssl_buffer", None)
    if isinstance(buffer, bytearray) and len(buffer) > size and hasattr(protocol, "max_size"):
        protocol.max_size = size  # type: ignore[union-attr]
        protocol._ssl_buffer = small = bytearray(size)  # type: ignore[union-attr]
        protocol._ssl_buffer_view = memoryview(small)  # type: ignore[union-attr]
