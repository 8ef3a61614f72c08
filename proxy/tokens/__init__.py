"""Route tokens: credentials, the sources they come from, and the store that picks one."""

from proxy.tokens.credential import (
    LOAD_ERROR_REASONS,
    Credential,
    TokenError,
    fingerprint,
    in_words,
    parse_token,
)
from proxy.tokens.sources import make_sources, read_source
from proxy.tokens.state import RouteState
from proxy.tokens.store import TokenStore
from proxy.tokens.views import RouteStatus, TokenStatus

__all__ = [
    "LOAD_ERROR_REASONS",
    "Credential",
    "RouteState",
    "RouteStatus",
    "TokenError",
    "TokenStatus",
    "TokenStore",
    "fingerprint",
    "in_words",
    "make_sources",
    "parse_token",
    "read_source",
]
