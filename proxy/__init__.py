"""amperity-auth-proxy: a local reverse proxy that injects Amperity API credentials."""

__version__ = "0.1.0"
