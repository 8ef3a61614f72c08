"""The fake's deterministic payloads: N bytes a test can check without storing them, and a
small gzip body."""

from __future__ import annotations

from collections.abc import Iterator

_BLOCK = 64 * 1024
GZIP_JSON = b'{"compressed": true}'


def pattern(n: int) -> Iterator[bytes]:
    """N deterministic bytes in 64 KiB blocks; each block starts with its index."""
    sent = 0
    index = 0
    base = bytes(range(256)) * (_BLOCK // 256)
    while sent < n:
        block = index.to_bytes(8, "big") + base[8:]
        size = min(_BLOCK, n - sent)
        yield block[:size]
        sent += size
        index += 1
