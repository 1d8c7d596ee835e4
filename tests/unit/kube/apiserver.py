"""A scripted HTTP server standing in for kube-apiserver in the client's unit tests.

This is a real HTTP server (aiohttp.web on 127.0.0.1, optionally TLS with client
certificates), not a mock of the client: ``KubeApi`` talks to it over a socket exactly as
it talks to a kube-apiserver, so headers, status codes, Retry-After, chunked watch streams
and TLS handshakes are the real thing. What it answers is scripted per test: a handler
per (method, path), and every request is recorded (method, path, query, headers, body).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer_common_name: str | None = None


@dataclass
class ScriptedServer:
    handlers: dict[tuple[str, str], Handler] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.handlers[(method, path)] = handler

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        common_name = None
        if peer:
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        common_name = value
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
                common_name,
            )
        )
        handler = self.handlers.get((request.method, request.path))
        if handler is None:
            return status(404, "NotFound", f"no handler for {request.method} {request.path}")
        return await handler(request)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener, ssl_context=self.ssl_context).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def status(code: int, reason: str, message: str = "", **headers: str) -> web.Response:
    """A Kubernetes ``Status`` error body."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    body |= {"reason": reason, "message": message}
    return web.json_response(body, status=code, headers=headers)


def ok(body: dict[str, Any]) -> web.Response:
    return web.json_response(body)


async def stream(
    request: web.Request, events: list[dict[str, Any]], *, hang: bool
) -> web.StreamResponse:
    """A watch response: one JSON event per line; then end, or hang until cancelled."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for event in events:
        await response.write(json.dumps(event).encode() + b"\n")
    if hang:
        await asyncio.sleep(3600)
    return response
