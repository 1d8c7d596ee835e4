"""Owns the gateway's TLS server context and its certificate reloading.

Certificate and key are read from two files and re-read when either changes
(``CertificateReloader.check``, polled by ``watch``), so certificates rotate without a
restart. A pair that fails to load (say, the key written before the certificate) is
ignored until the next change; the previous pair keeps serving. Kept apart from the
HTTP handler and the process set-up (``server``), as vault-k8s and cert-manager keep
their file-backed certificate sources.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import structlog

from secure_keys.gateway import metrics

_log = structlog.get_logger("secure_keys.gateway")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _signature(path: Path) -> tuple[int, int, int]:
    # stat follows symlinks: a Secret volume's atomic ..data swap gives a new inode.
    info = path.stat()
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class CertificateReloader:
    """A TLS server context whose certificate follows two files.

    The context given to the listener stays the same object; each handshake is moved to
    the newest successfully loaded context by the SNI callback (which OpenSSL calls with
    or without SNI: the API server sends none when it dials an IP address).
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.context = server_context(cert, key)
        self._current = self.context
        self._seen = (_signature(cert), _signature(key))
        self.context.sni_callback = self._pick

    def _pick(self, connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._current is not self.context:
            connection.context = self._current

    def check(self) -> bool:
        """Reload if the files changed; True if a new pair is now served."""
        try:
            seen = (_signature(self.cert), _signature(self.key))
        except OSError:
            return False  # mid-swap: look again next time
        if seen == self._seen:
            return False
        try:
            fresh = server_context(self.cert, self.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Only the error's class: OpenSSL's text can quote the file it read.
            metrics.TLS_RELOADS.labels("failed").inc()
            _log.warning("tls.reload_failed", error=type(exc).__name__)
            return False
        self._seen = seen
        self._current = fresh
        metrics.TLS_RELOADS.labels("ok").inc()
        _log.info("tls.reloaded", cert=str(self.cert))
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
