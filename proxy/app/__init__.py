"""The composition root, the one place that wires everything: a Config in, a running proxy out.

- `runtime`: `ProxyApp`, each generation (plans, TLS contexts, targets, token states) built at
  load time; startup, cleanup and reload
- `factory`: `create_app` (the test seams) and `create_admin_app`
"""

from proxy.app.factory import create_admin_app, create_app
from proxy.app.runtime import ProxyApp

__all__ = ["ProxyApp", "create_admin_app", "create_app"]
