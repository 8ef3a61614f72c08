"""The proxy listener's TLS certificate (`listen.tls`), re-read when its files change.

cert-manager and mounted Secrets renew a certificate by replacing its files; `refresh` (called
about once a second by `cli.run`) notices a change of either file and loads the pair into a new
`SSLContext`, swapped in only when certificate and key load and match, so new connections get
it without a restart while open ones keep theirs. A renewal caught half-written (or broken)
keeps the working certificate and is logged once per distinct problem; the next change is
tried again. TLS 1.2 at least; the key file's content never appears in a message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

from proxy.config import StartupError
from proxy.config.listen import ListenTLS

log = logging.getLogger("amperity_proxy")
POLL = 1.0  # seconds between looks at the files (two stat calls)


class ServerCertificate:
    """`context` is the listener's; every handshake is served by `_serving`, a context of its
    own that a renewal replaces whole (`SSLContext.sni_callback` runs for every ClientHello,
    with or without SNI, and may swap the connection's context)."""

    def __init__(self, settings: ListenTLS) -> None:
        self.settings = settings
        self._seen = self._stamp()
        self._said: str | None = None  # the last renewal problem logged
        try:
            self._serving = self._loaded()
        except (OSError, ssl.SSLError) as exc:
            raise StartupError([f"listen.tls: {self._why(exc)}"]) from None
        self.context = self._serving
        self.context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, _name: str | None, _: ssl.SSLContext) -> None:
        if connection.context is not self._serving:
            connection.context = self._serving

    async def watch(self) -> None:
        """Serve a renewed certificate within about a second (runs until cancelled)."""
        while True:
            await asyncio.sleep(POLL)
            self.refresh()

    def refresh(self) -> bool:
        """Load the files again if either changed since the last look; True when the renewal
        is served. SECURITY: a half-written or broken one never touches the working context
        (OpenSSL drops a live context's key when a load fails its key check)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            renewed = self._loaded()
        except (OSError, ssl.SSLError) as exc:
            why = self._why(exc)
            if why != self._said:  # once per distinct problem, not once a second
                self._said = why
                log.error("listen.tls: keeping the current certificate: %s", why)
            return False
        self._said = None
        self._serving = renewed
        log.info("listen.tls: loaded the renewed certificate from %s", self.settings.cert_file)
        return True

    def _loaded(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.cert_file, self.settings.key_file)
        return context

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.settings.cert_file, self.settings.key_file):
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def _why(self, exc: OSError) -> str:
        if isinstance(exc, ssl.SSLError):  # never the key's bytes: only what is wrong
            return (
                f"cannot use {self.settings.cert_file} with {self.settings.key_file} "
                f"({exc.reason or 'not a PEM certificate chain and matching key'})"
            )
        return f"cannot read {getattr(exc, 'filename', None) or 'a file'}: {exc.strerror or exc}"
