"""Owns the CLI's HTTP transport: blocking HTTP/1.1 over the standard library.

``KubeApi`` speaks aiohttp in the controller and the gateway, which are aiohttp processes
anyway. A ``secure-keys get`` in a pipeline makes two or three requests and exits, and
importing aiohttp costs it 170-250 ms on these machines (it builds its default TLS
contexts at import): more than the requests themselves, and most of the gap to
``kubectl`` in ``bench/access.py``. So the CLI gives ``KubeApi`` this transport instead
(``KubeApi(..., transport="blocking")``): ``http.client`` on one kept-alive connection per
TLS context, called from the CLI's one coroutine (nothing else runs on its loop, so a
blocking call holds nobody up). No maintained HTTP library imports faster than the
standard library's own client, which is why it is ours.

Failures to connect, send or read are ``TransportError`` (the CLI's "cannot reach the
API server"); an HTTP error status is not a failure here, ``KubeApi`` reads it.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit


class TransportError(Exception):
    """The request did not complete (connect, TLS, send or read failed, or timed out)."""


class BlockingHttp:
    """Requests to one API server (``server``: ``https://host:port`` or ``http://...``)."""

    def __init__(self, server: str, context: ssl.SSLContext, *, timeout: float) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"the server URL {server!r} is not http(s)://host[:port]")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._context = context
        self._timeout = timeout
        self._connections: dict[int, http.client.HTTPConnection] = {}

    def _connection(self, context: ssl.SSLContext) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for ``context`` and whether it was used before."""
        key = id(context)
        existing = self._connections.get(key)
        if existing is not None:
            return existing, True
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._connections[key] = connection
        return connection, False

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, bytes, str | None]:
        """One request: (status, body, the Retry-After header). ``path`` includes the
        query; ``context`` presents another client certificate (an exec plugin's)."""
        context = context or self._context
        for _ in range(2):
            connection, reused = self._connection(context)
            try:
                connection.request(method, self._prefix + path, body=body, headers=dict(headers))
                response = connection.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(context)
                if reused:
                    continue  # the server closed an idle kept-alive connection: once more
                raise TransportError(str(exc) or type(exc).__name__) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(context)
                raise TransportError(str(exc) or type(exc).__name__) from None
            except ValueError:
                # http.client refuses a header with a control character, quoting its
                # value: never repeat it (an Authorization header holds a credential).
                self._drop(context)
                raise TransportError("a request header holds a control character") from None
            if response.will_close:
                self._drop(context)
            return response.status, payload, response.getheader("Retry-After")
        raise TransportError("the connection was closed twice")  # pragma: no cover

    def _drop(self, context: ssl.SSLContext) -> None:
        connection = self._connections.pop(id(context), None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
