"""What must never appear in text the proxy writes: the live secret values, JWT-shaped values,
URL query strings and user info, and the controls that would let outside text forge a line.

The bottom of the package. Two tools:

- `redact(text)`: JWT shapes and URL query strings, for every log line (cheap when neither can
  be there, which is almost always).
- `SECRETS` and `outside(text, limit)`: one registry of the secret values the proxy holds, which
  every secret-bearing setting adds to when it is read (a token source's tokens, the last three
  per source, kept across reloads; client tokens; client-credential secrets; the Redis
  password), and the one scrub of text that came from outside (Amperity's messages, helper
  stderr, exception text) before it reaches a log line, an answer, a trace, the status page,
  `doctor` or `token-info`. In this order, so that a cut never leaves a secret's prefix:
  1. JWT shapes and URL queries (`redact`);
  2. each secret value, its percent-encoded and base64 forms, and any run of 12 or more of its
     characters (a token quoted in part; of a JWT, past its public header) become `<redacted>`;
  3. C0 and C1 controls, U+2028/U+2029 and bidirectional overrides become spaces;
  4. the text is cut to `limit` characters.
"""

from __future__ import annotations

import base64
import re
from collections import OrderedDict, deque
from urllib.parse import quote

# Three base64url parts, the first a JSON header (`{"` encodes as `eyJ`): a JWT.
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# `scheme://anything-but-space-quote-?#` then `?query`: the query goes, the rest stays.
_URL_QUERY_RE = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://[^\s'"?#<>]*)\?[^\s'"#<>]*""")
# C0 and C1 controls, DEL, the line and paragraph separators, and the bidirectional embedding,
# override and isolate characters (a reader's terminal or page would obey them).
_CONTROLS_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")

RUN = 12  # a quoted run of this many of a secret's characters is removed
MIN_SECRET = 6  # shorter values are not scrubbed from text (they would match everywhere)
KEEP = 3  # values remembered per owner (a source's last tokens)
MAX_OWNERS = 4096  # owners remembered (the least recently updated go first)
REDACTED = "<redacted>"


def looks_like_jwt(text: str) -> bool:
    return JWT_RE.search(text) is not None


def redact(text: str) -> str:
    """SECURITY: `text` without URL query strings or JWT-shaped values."""
    if "://" in text and "?" in text:
        text = _URL_QUERY_RE.sub(r"\1?<redacted>", text)
    if "eyJ" in text:
        text = JWT_RE.sub("<redacted JWT>", text)
    return text


def _forms(value: str) -> set[str]:
    """The whole-value forms a secret can be quoted in besides itself."""
    raw = value.encode()
    forms = {
        quote(value, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    forms.discard(value)
    return forms


class Secrets:
    """The live secret values, by owner (`token:<route>:<n>`, `client:<name>`, `redis`, ...)."""

    def __init__(self) -> None:
        self._owners: OrderedDict[str, deque[str]] = OrderedDict()
        self._runs: set[str] = set()  # every RUN-character run of every long value
        self._whole: list[str] = []  # every value and form, longest first
        self._stale = False

    def remember(self, owner: str, value: str) -> None:
        """`owner` now holds `value` (its previous KEEP - 1 values stay scrubbed too)."""
        value = value.strip()
        if len(value) < MIN_SECRET:
            return
        values = self._owners.pop(owner, None) or deque(maxlen=KEEP)
        if value not in values:
            values.append(value)
            self._stale = True
        self._owners[owner] = values
        while len(self._owners) > MAX_OWNERS:
            self._owners.popitem(last=False)
            self._stale = True

    def values(self) -> set[str]:
        return {v for values in self._owners.values() for v in values}

    def _index(self) -> None:
        runs: set[str] = set()
        whole: set[str] = set()
        for value in self.values():
            whole.add(value)
            whole.update(f for f in _forms(value) if len(f) >= MIN_SECRET)
            # A JWT's first part is its public header, the same in every token: not secret.
            body = value.partition(".")[2] if JWT_RE.fullmatch(value) else value
            runs.update(body[i : i + RUN] for i in range(len(body) - RUN + 1))
        self._runs, self._whole, self._stale = runs, sorted(whole, key=len, reverse=True), False

    def holds(self, text: str) -> bool:
        """Whether `text` contains a live secret value or one of its forms, whole."""
        if self._stale:
            self._index()
        return any(value in text for value in self._whole)

    def scrub(self, text: str) -> str:
        """`text` without any secret value, form, or run of RUN of a secret's characters."""
        if self._stale:
            self._index()
        if not self._whole:
            return text
        for value in self._whole:
            if value in text:
                text = text.replace(value, REDACTED)
        runs = self._runs
        if not runs or len(text) < RUN:
            return text
        spans: list[list[int]] = []
        for i in range(len(text) - RUN + 1):
            if text[i : i + RUN] in runs:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + RUN
                else:
                    spans.append([i, i + RUN])
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
        return text


SECRETS = Secrets()  # the process's one registry


def outside(text: str, limit: int | None = None) -> str:
    """SECURITY: text that came from outside, safe to log and show (see the module doc)."""
    text = _CONTROLS_RE.sub(" ", SECRETS.scrub(redact(text))).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def without_controls(text: str) -> str:
    """`text` with controls, separators and bidirectional overrides as spaces."""
    return _CONTROLS_RE.sub(" ", text)
