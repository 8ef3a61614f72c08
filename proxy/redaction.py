"""What must never appear in text the proxy writes: JWT-shaped values and URL query strings.

The bottom of the package: config errors (`config.readers`), log lines (`observe.logs`) and an
upstream's quoted message (`refusals.upstream_message`) all scrub with these.
"""

from __future__ import annotations

import re

# Three base64url parts, the first a JSON header (`{"` encodes as `eyJ`): a JWT.
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# `scheme://anything-but-space-quote-?#` then `?query`: the query goes, the rest stays.
_URL_QUERY_RE = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://[^\s'"?#<>]*)\?[^\s'"#<>]*""")


def looks_like_jwt(text: str) -> bool:
    return JWT_RE.search(text) is not None


def redact(text: str) -> str:
    """SECURITY: `text` without URL query strings or JWT-shaped values (cheap when neither
    can be there, which is almost always)."""
    if "://" in text and "?" in text:
        text = _URL_QUERY_RE.sub(r"\1?<redacted>", text)
    if "eyJ" in text:
        text = JWT_RE.sub("<redacted JWT>", text)
    return text
