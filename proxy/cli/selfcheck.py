"""Start-up self-checks: refuse to run in a configuration known to be unsafe.

- aiohttp's C (llhttp) request parser must be in use: most request-smuggling advisories hit
  the pure-Python one. `limits.allow_pure_python_parser: true` turns this into a loud warning.
- Every upstream SSL context must verify certificates and host names.
- aiohttp must be at least the release that fixed the last known request-smuggling advisory
  (GHSA-mfx4-hv73-q22v, smuggling via an Upgrade request, fixed in 3.14.2) and the client-side
  C response parser out-of-bounds read (GHSA-cq5v-8q36-5273, fixed in 3.14.3).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterable

import aiohttp
from aiohttp import http_parser

from proxy.config import Config

log = logging.getLogger("amperity_proxy")

MIN_AIOHTTP = (3, 14, 3)


def c_parser_in_use() -> bool:
    """Whether aiohttp parses requests with its llhttp-based C extension."""
    return http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def self_check(
    config: Config,
    contexts: Iterable[ssl.SSLContext],
    *,
    aiohttp_version: str = aiohttp.__version__,
    c_parser: bool | None = None,
) -> list[str]:
    """Problems that stop the proxy from starting (warnings are logged here)."""
    problems = []
    if not (c_parser if c_parser is not None else c_parser_in_use()):
        text = (
            "aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS set, or no compiled "
            "wheel for this platform); the pure-Python parser has had request-smuggling bugs"
        )
        if config.limits.allow_pure_python_parser:
            log.warning("SECURITY: %s; starting anyway (limits.allow_pure_python_parser)", text)
        else:
            problems.append(f"{text}; set limits.allow_pure_python_parser: true to run anyway")
    for context in contexts:
        if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
            problems.append("an upstream TLS context does not verify certificates; refusing")
            break
    if _version(aiohttp_version) < MIN_AIOHTTP:
        wanted = ".".join(map(str, MIN_AIOHTTP))
        problems.append(
            f"aiohttp {aiohttp_version} is older than {wanted}, which fixed the last known "
            "request-smuggling and parser advisories; upgrade it"
        )
    return problems
