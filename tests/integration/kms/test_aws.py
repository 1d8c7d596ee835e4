"""What only the ``aws`` provider promises, beyond the shared contract (``test_contract.py``).

- rewrap is one ``ReEncrypt``: the data key never comes out of the KMS;
- a long-lived provider sees an alias moved to a new key (its ``key_version`` follows),
  and is refused by the KMS as soon as the key is disabled (no rebuild needed);
- every call is bounded: a server that never answers costs ``maxAttempts`` connections of
  ``readTimeoutSeconds`` each; a 5xx is retried ``maxAttempts`` times, a refusal never;
- credentials never reach an error message.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import KmsDenied, KmsUnavailable
from secure_keys.core.kms.registry import KmsConfig
from tests.integration.kms.harness import build_provider

pytest.importorskip("boto3", reason="boto3 is not installed: run `make test` (aws extra)")

from secure_keys.core.kms.aws import AwsKms, AwsOptions, make_client
from tests.integration.kms.servers.aws import LocalKmsServer, open_server

BINDING = KeyBinding("payments", "stripe-live", 3)
CONTEXT = BINDING.wrap_context(envelope.FORMAT_V1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalKmsServer]:
    with open_server(tmp_path) as running:
        assert isinstance(running, LocalKmsServer)
        yield running


class CountingClient:
    """A real boto3 KMS client that counts the calls made through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(**kwargs: Any) -> Mapping[str, Any]:
            self.calls[name] += 1
            result: Mapping[str, Any] = method(**kwargs)
            return result

        return counted


def _counting(server: LocalKmsServer) -> tuple[AwsKms, CountingClient]:
    config = server.config()
    client = CountingClient(make_client(config.key_id, AwsOptions.parse(config.options)))
    return AwsKms(config.key_id, client, key_version_cache_seconds=0), client


def test_rewrap_is_one_reencrypt_and_the_dek_stays_in_the_kms(server: LocalKmsServer) -> None:
    provider, client = _counting(server)
    sealed = envelope.seal(b"sk-live-value", BINDING, provider)
    server.rotate()
    client.calls.clear()
    moved = envelope.rewrap(sealed, BINDING, provider)
    assert client.calls == Counter({"describe_key": 1, "re_encrypt": 1})
    assert moved.wrapped.key_version == server.target("primary") != sealed.wrapped.key_version
    assert moved.ciphertext == sealed.ciphertext
    with envelope.opened(moved, BINDING, provider) as plaintext:
        assert plaintext == b"sk-live-value"


def test_a_long_lived_provider_follows_the_alias(server: LocalKmsServer) -> None:
    provider = server.provider()
    first = provider.key_version()
    assert first == server.target("primary")
    assert first.startswith("arn:aws:kms:")
    assert ":key/" in first
    server.rotate()
    assert provider.key_version() == server.target("primary") != first
    # With a cache, the old answer stands until it expires.
    options = dict(server.config().options)
    options["keyVersionCacheSeconds"] = "3600"
    cached = build_provider(KmsConfig("aws", server.config().key_id, options))
    seen = cached.key_version()
    server.rotate()
    assert cached.key_version() == seen != server.target("primary")


def test_a_built_provider_is_refused_once_the_key_is_disabled(server: LocalKmsServer) -> None:
    provider = server.provider()
    dek = bytearray(os.urandom(32))
    wrapped = provider.wrap(dek, CONTEXT)
    server.disable()
    with pytest.raises(KmsDenied, match="DisabledException"):
        provider.unwrap(wrapped, CONTEXT)
    server.enable()
    assert provider.unwrap(wrapped, CONTEXT) == dek


def test_an_alias_cannot_stand_in_for_the_recorded_key(server: LocalKmsServer) -> None:
    provider = server.provider()
    wrapped = provider.wrap(bytearray(32), CONTEXT)
    forged = wrapped._replace(key_version=provider.key_id)  # resolves to "whatever is current"
    with pytest.raises(Exception, match="not a key ARN"):
        provider.unwrap(forged, CONTEXT)


# -- bounded calls ---------------------------------------------------------------------------
def _provider_at(endpoint: str, tmp_path: Path, **options: str) -> AwsKms:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = AKIA{secrets.token_hex(8).upper()}\n"
        f"aws_secret_access_key = {secrets.token_hex(20)}\n"
    )
    merged = {
        "region": "eu-west-1",
        "endpointUrl": endpoint,
        "credentialsFile": str(credentials),
        "connectTimeoutSeconds": "1",
        "readTimeoutSeconds": "0.5",
        "maxAttempts": "3",
        **options,
    }
    provider = build_provider(KmsConfig("aws", "alias/secure-keys-primary", merged))
    assert isinstance(provider, AwsKms)
    return provider


def test_a_server_that_never_answers_costs_bounded_time(tmp_path: Path) -> None:
    accepted: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        provider = _provider_at(f"http://127.0.0.1:{port}", tmp_path)
        started = time.monotonic()
        with pytest.raises(KmsUnavailable, match="ReadTimeoutError"):
            provider.wrap(bytearray(32), CONTEXT)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    assert len(accepted) == 3  # maxAttempts, no more
    # Three read timeouts of 0.5 s (so at least 1.5 s) plus at most 1 s + 2 s of backoff;
    # the upper bound is loose on purpose (a loaded CI machine), yet far below botocore's
    # default of 60 s per read, which is what this guards against.
    assert 1.4 < elapsed < 30.0


class _Canned(http.server.BaseHTTPRequestHandler):
    status = 500
    code = "KMSInternalException"
    seen: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(self.headers.get("X-Amz-Target", ""))
        body = json.dumps({"__type": self.code, "message": "canned"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize(
    ("status", "code", "error", "attempts"),
    [
        (500, "KMSInternalException", KmsUnavailable, 3),
        (400, "ThrottlingException", KmsUnavailable, 3),
        (400, "DisabledException", KmsDenied, 1),
        (400, "AccessDeniedException", KmsDenied, 1),
    ],
)
def test_retries_are_bounded_and_only_for_what_may_pass(
    tmp_path: Path, status: int, code: str, error: type[Exception], attempts: int
) -> None:
    seen: list[str] = []
    handler = type("Handler", (_Canned,), {"status": status, "code": code, "seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        provider = _provider_at(f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path)
        with pytest.raises(error, match=code) as caught:
            provider.wrap(bytearray(32), CONTEXT)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == ["TrentService.Encrypt"] * attempts
    credentials = (tmp_path / "credentials").read_text().split()
    for word in credentials:
        if len(word) > 12:  # the key id and secret, not "=" or the section name
            assert word not in str(caught.value)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        AwsOptions.parse({"secretAccessKey": "x"})
    with pytest.raises(ValueError, match="maxAttempts must be from 1 to 10"):
        AwsOptions.parse({"maxAttempts": "100"})
    assert AwsOptions.parse({}).max_attempts == 3
