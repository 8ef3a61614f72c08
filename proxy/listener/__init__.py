"""The listener: aiohttp's server, guarded (connection cap, header deadline, enveloped parser
errors), and every use of aiohttp internals in the package - here and nowhere else.

- `server`: GuardedServer and its connections (GuardedHandler)
- `accessors`: typed accessors for per-connection state, the coalescing response class
"""

from proxy.listener.accept import client_ip
from proxy.listener.accessors import (
    CoalescedResponse,
    abandon_body,
    bound_sockets,
    client_gone,
    draining,
    force_close,
    peer_uid,
    write_interim,
)
from proxy.listener.certificate import ServerCertificate
from proxy.listener.server import GuardedHandler, GuardedServer, Reject

__all__ = [
    "CoalescedResponse",
    "GuardedHandler",
    "GuardedServer",
    "Reject",
    "ServerCertificate",
    "abandon_body",
    "bound_sockets",
    "client_gone",
    "client_ip",
    "draining",
    "force_close",
    "peer_uid",
    "write_interim",
]
