"""The listener: aiohttp's server, guarded (connection cap, header deadline, enveloped parser
errors), and every use of aiohttp internals in the package - here and nowhere else.

- `server`: GuardedServer and its connections (GuardedHandler)
- `accessors`: typed accessors for per-connection state, the coalescing response class, the
  upstream response class that closes a connection after a status outside 200-599
"""

from proxy.listener.accessors import (
    CoalescedResponse,
    GuardedClientResponse,
    abandon_body,
    bound_sockets,
    client_gone,
    draining,
    force_close,
    peer_uid,
    write_interim,
)
from proxy.listener.server import GuardedHandler, GuardedServer, Reject

__all__ = [
    "CoalescedResponse",
    "GuardedClientResponse",
    "GuardedHandler",
    "GuardedServer",
    "Reject",
    "abandon_body",
    "bound_sockets",
    "client_gone",
    "draining",
    "force_close",
    "peer_uid",
    "write_interim",
]
