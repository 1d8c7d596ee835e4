"""``kube.blocking``: the CLI's HTTP transport. A kept-alive connection the server closed
while idle is replaced once, transparently; a server that cannot be reached is a
``TransportError``; and the CLI starts without importing aiohttp at all (the reason the
transport exists: bench/access.py)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from secure_keys.kube.blocking import BlockingHttp, TransportError

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n{}"
)


@pytest.fixture
def one_answer_per_connection() -> Iterator[tuple[int, list[int]]]:
    """A server that answers one request per connection, then closes it without saying
    so (as an API server does with a connection idle past its timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    connection.sendall(RESPONSE)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    listener.close()


def test_a_connection_closed_while_idle_is_replaced_once(
    one_answer_per_connection: tuple[int, list[int]],
) -> None:
    port, accepted = one_answer_per_connection
    http = BlockingHttp(f"http://127.0.0.1:{port}", ssl.create_default_context(), timeout=5)
    try:
        for _ in range(3):
            status, body, _retry = http.send("GET", "/api", None, {})
            assert (status, body) == (200, b"{}")
    finally:
        http.close()
    assert len(accepted) == 3


def test_an_unreachable_server_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = BlockingHttp(f"http://127.0.0.1:{port}", ssl.create_default_context(), timeout=5)
    with pytest.raises(TransportError):
        http.send("GET", "/api", None, {})


def test_a_server_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not http"):
        BlockingHttp("unix:///run/kube.sock", ssl.create_default_context(), timeout=5)


def test_the_cli_starts_without_aiohttp_structlog_or_the_local_store() -> None:
    """What a `secure-keys get` in a pipeline must not pay for at start-up."""
    heavy = ("aiohttp", "structlog", "sqlite3", "secure_keys.store.local")
    code = (
        f"import sys, secure_keys.cli.main\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_a_header_the_library_refuses_is_reported_without_its_value() -> None:
    """http.client's own message quotes the header's value: an Authorization header holds
    a credential, which must not reach the CLI's error line."""
    http = BlockingHttp("http://127.0.0.1:9", ssl.create_default_context(), timeout=5)
    with pytest.raises(TransportError) as refused:
        http.send("GET", "/api", None, {"Authorization": "Bearer sk-canary-token\n"})
    assert "sk-canary-token" not in str(refused.value)
