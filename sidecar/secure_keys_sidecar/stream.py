"""Owns the sidecar's network I/O: the HTTPS stream to the gateway and the reload call.

The standard library's ``http.client`` over ``ssl``, blocking, on the one thread the
sidecar has. One long-lived response is all it reads, line by line; aiohttp (and the
``asyncio`` it needs) would cost several MiB of a 20 MiB budget for nothing here, and the
import contract keeps aiohttp out of the sidecar. The gateway's certificate is always
verified, against its CA file when one is mounted, else the system's trust store.
"""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from secure_keys.core.delivery import (
    CONTENT_TYPE,
    MAX_LINE_SIZE,
    STREAM_PATH,
    ProtocolError,
    Refusal,
    parse_refusal,
)

__all__ = ["Refused", "Stream", "StreamBroken", "open_stream", "post_reload", "tls_context"]

_MAX_REFUSAL = 64 * 1024


class StreamBroken(Exception):
    """The connection failed or ended; the message says how, never what was in it."""


class Refused(Exception):
    """The gateway answered with an HTTP error before the stream started."""

    def __init__(self, status: int, refusal: Refusal | None, retry_after: float | None) -> None:
        super().__init__(status)
        self.status = status
        self.refusal = refusal
        self.retry_after = retry_after

    def __str__(self) -> str:
        reason = self.refusal.reason if self.refusal else "Unknown"
        return f"HTTP {self.status} {reason}"


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the gateway: its CA if mounted, else the system's."""
    if ca_file is not None and ca_file.is_file():
        context = ssl.create_default_context(cafile=str(ca_file))
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Stream:
    """An open ``200`` NDJSON response; ``readline`` waits at most ``timeout`` seconds."""

    def __init__(self, connection: http.client.HTTPSConnection, response: http.client.HTTPResponse):
        self._connection = connection
        self._response = response

    def readline(self, timeout: float) -> bytes:
        """The next line, newline included; raises ``StreamBroken`` on end, timeout or error."""
        sock = self._connection.sock
        if sock is None:
            raise StreamBroken("the connection is closed")
        sock.settimeout(max(timeout, 0.001))
        try:
            line = self._response.readline(MAX_LINE_SIZE + 1)
        except TimeoutError:
            raise StreamBroken("no line within the timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            raise StreamBroken(f"read failed: {type(exc).__name__}") from None
        if not line:
            raise StreamBroken("the gateway ended the stream")
        if not line.endswith(b"\n"):
            raise StreamBroken("a line over the size limit or cut short")
        return line

    def close(self) -> None:
        self._connection.close()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def open_stream(
    url: str, token: str, body: bytes, context: ssl.SSLContext, *, timeout: float = 10.0
) -> Stream:
    """``POST /v1/stream``; return the open stream or raise ``Refused`` / ``StreamBroken``."""
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, context=context, timeout=timeout
    )
    try:
        connection.request(
            "POST",
            parts.path.rstrip("/") + STREAM_PATH,
            body=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": CONTENT_TYPE,
                "User-Agent": "secure-keys-sidecar",
            },
        )
        response = connection.getresponse()
    except ssl.SSLCertVerificationError as exc:
        connection.close()
        raise StreamBroken(
            f"the gateway's certificate did not verify: {exc.verify_message}"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise StreamBroken(f"connect failed: {type(exc).__name__}: {exc}") from None
    if response.status != 200:
        try:
            raw = response.read(_MAX_REFUSAL)
            refusal: Refusal | None = parse_refusal(raw)
        except (OSError, http.client.HTTPException, ProtocolError):
            refusal = None
        finally:
            connection.close()
        raise Refused(response.status, refusal, _retry_after(response.getheader("Retry-After")))
    return Stream(connection, response)


def post_reload(url: str, body: bytes, *, timeout: float = 2.0) -> int:
    """POST ``body`` (versions and names only) to the app's localhost reload URL."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read(1024)
        return response.status
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise StreamBroken(f"reload call failed: {type(exc).__name__}") from None
    finally:
        connection.close()
