"""A test double of the gateway's key broker: a real aiohttp server over real TLS that
speaks the ``/v1/stream`` protocol of ``secure_keys.core.delivery``.

It stands in for the broker (built separately, in ``secure_keys.gateway``) so the
sidecar's client can be tested end to end over sockets: it seals material to the key the
sidecar sends, honours ``have``, streams heartbeats, pushes changes, revokes, refuses, and
records every request. It makes no authorization decision of its own: a test says what
to answer. Runs on its own event loop in a background thread; the test thread drives it
through thread-safe methods.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from secure_keys.core import delivery
from secure_keys.core.delivery import (
    ErrorMessage,
    HeartbeatMessage,
    KeyState,
    ReconnectMessage,
    Refusal,
    StateMessage,
    StreamRequest,
    VersionState,
)
from secure_keys_dev import pki

NAMESPACE = "payments"
CA = pki.CertificateAuthority.generate("sidecar-test-ca")


def fingerprint(plaintext: bytes) -> str:
    return "hs256:" + (plaintext.hex() * 16)[:32].ljust(32, "0")


@dataclass
class FakeKey:
    file_name: str
    current: tuple[int, bytes] | None
    previous: tuple[int, bytes] | None = None
    format: str = "raw"
    env_name: str | None = None
    mode: str = "0400"
    sealed_for: str | None = None
    """Seal under another key's name, to test the binding (None: this key's name)."""


@dataclass
class Connection:
    request: StreamRequest
    token: str
    sent: dict[str, set[int]] = field(default_factory=dict)
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class BrokerDouble:
    def __init__(self, tmp: Path, *, server_ca: pki.CertificateAuthority = CA) -> None:
        pair = server_ca.issue_server("broker", ips=("127.0.0.1",), dns_names=("localhost",))
        (tmp / "tls.crt").write_bytes(pair.cert_pem)
        (tmp / "tls.key").write_bytes(pair.key_pem)
        (tmp / "ca.crt").write_bytes(CA.cert_pem)
        self.ca_file = tmp / "ca.crt"
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
        self.keys: dict[str, FakeKey] = {}
        self.lease = timedelta(hours=1)
        self.heartbeat = 10
        self.silent = False
        self.refuse: tuple[int, Refusal, str | None] | None = None
        self.connections: list[Connection] = []
        """Open streams."""
        self.requests: list[Connection] = []
        """Every request, refused or not, in order."""
        self.connect_times: list[float] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> BrokerDouble:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_serving()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post(delivery.STREAM_PATH, self._stream)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def stop_serving(self) -> None:
        """Close every open stream and the listening socket: the gateway is down."""
        if self._stopped:
            return
        self._stopped = True
        self.end()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)

    # --- driving it from the test thread ---------------------------------------------

    def push(self, *names: str) -> None:
        """Send the current state of ``names`` down every open stream."""
        for conn in list(self.connections):
            self._loop.call_soon_threadsafe(conn.queue.put_nowait, ("state", names))

    def revoke(self, *names: str) -> None:
        for conn in list(self.connections):
            self._loop.call_soon_threadsafe(conn.queue.put_nowait, ("revoke", names))

    def end(self, error: ErrorMessage | ReconnectMessage | None = None) -> None:
        for conn in list(self.connections):
            self._loop.call_soon_threadsafe(conn.queue.put_nowait, ("end", error))

    # --- the protocol --------------------------------------------------------------------

    def _version(
        self, conn: Connection, name: str, spec: tuple[int, bytes] | None, expires: datetime | None
    ) -> VersionState | None:
        if spec is None:
            return None
        number, plaintext = spec
        key = self.keys[name]
        held = conn.request.have.get(name)
        sent = conn.sent.setdefault(name, set())
        already = number in sent or (held is not None and number in (held.current, held.previous))
        sealed = None
        if not already:
            sealed = delivery.seal_for_sidecar(
                conn.request.recipient,
                plaintext,
                namespace=NAMESPACE,
                apikey=key.sealed_for or name,
                version=number,
            )
            sent.add(number)
        return VersionState(number, fingerprint(plaintext), expires, sealed)

    def _key_state(self, conn: Connection, name: str, now: datetime) -> KeyState:
        key = self.keys[name]
        return KeyState(
            file_name=key.file_name,
            format=key.format,  # type: ignore[arg-type]
            env_name=key.env_name,
            mode=key.mode,  # type: ignore[arg-type]
            current=self._version(conn, name, key.current, None),
            previous=self._version(conn, name, key.previous, now + timedelta(minutes=5)),
            lease_expires_at=now + self.lease,
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.connect_times.append(self._loop.time())
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        parsed = delivery.parse_stream_request(await request.read())
        conn = Connection(parsed, token)
        self.requests.append(conn)
        if self.refuse is not None:
            status, refusal, retry_after = self.refuse
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.Response(status=status, body=refusal.to_json(), headers=headers)
        response = web.StreamResponse(headers={"Content-Type": delivery.CONTENT_TYPE})
        await response.prepare(request)
        self.connections.append(conn)
        seq = 1
        now = datetime.now(UTC)
        first = StateMessage(
            seq=seq,
            keys={n: self._key_state(conn, n, now) for n in parsed.keys if n in self.keys},
            heartbeat_seconds=self.heartbeat,
        )
        try:
            await response.write(delivery.encode_message(first))
            while True:
                try:
                    kind, arg = await asyncio.wait_for(conn.queue.get(), self.heartbeat)
                except TimeoutError:
                    if not self.silent:
                        seq += 1
                        beat = HeartbeatMessage(seq, datetime.now(UTC))
                        await response.write(delivery.encode_message(beat))
                    continue
                seq += 1
                now = datetime.now(UTC)
                if kind == "state":
                    keys = {n: self._key_state(conn, n, now) for n in arg}
                    await response.write(delivery.encode_message(StateMessage(seq, keys)))
                elif kind == "revoke":
                    message = StateMessage(seq, {}, revoked=tuple(arg))
                    await response.write(delivery.encode_message(message))
                else:
                    if arg is not None:
                        await response.write(delivery.encode_message(arg))
                    break
        except ConnectionResetError:
            pass  # the sidecar went away
        finally:
            self.connections.remove(conn)
        return response
