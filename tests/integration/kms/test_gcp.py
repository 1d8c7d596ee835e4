"""What the ``gcp`` provider promises beyond the shared contract, against the emulator.

The contract suite (``test_contract.py -k gcp``) covers the cases every provider shares.
These cover what is Google's own: the CRC32C checks in both directions (through a proxy
that damages real answers), a primary version that moves between two wraps of the same
provider, the primary-version cache, which errors are retried and how often, the
options, and Application Default Credentials. Everything talks to the Go emulator over
real gRPC through the unmodified SDK.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from google.cloud import kms_v1

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsUnavailable
from secure_keys.core.kms import gcp
from secure_keys.core.kms.base import WrappedKey, rewrap
from secure_keys.core.kms.registry import KmsConfig
from secure_keys.core.memory import zero
from tests.integration.kms.harness import build_provider
from tests.integration.kms.servers.gcp import TEST_OPTIONS, GcpTestServer, open_server

CONTEXT = KeyBinding("payments", "stripe-live", 3).wrap_context(envelope.FORMAT_V1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GcpTestServer]:
    with open_server(tmp_path / "gcp") as running:
        yield cast(GcpTestServer, running)


def _dek() -> bytearray:
    return bytearray(os.urandom(32))


def _unwraps_to(provider: gcp.GcpKms, wrapped: WrappedKey, dek: bytearray) -> bool:
    back = provider.unwrap(wrapped, CONTEXT)
    try:
        return back == dek
    finally:
        zero(back)


class _Proxy:
    """The real SDK client, counting calls and letting a test damage the answers."""

    def __init__(self, real: kms_v1.KeyManagementServiceClient) -> None:
        self.real = real
        self.calls: Counter[str] = Counter()
        self.damage: dict[str, Callable[[Any], None]] = {}

    def _forward(self, method: str, **kwargs: Any) -> Any:
        self.calls[method] += 1
        response = getattr(self.real, method)(**kwargs)
        if method in self.damage:
            self.damage[method](response)
        return response

    def encrypt(self, **kwargs: Any) -> Any:
        return self._forward("encrypt", **kwargs)

    def decrypt(self, **kwargs: Any) -> Any:
        return self._forward("decrypt", **kwargs)

    def get_crypto_key(self, **kwargs: Any) -> Any:
        return self._forward("get_crypto_key", **kwargs)


def _proxied(
    server: GcpTestServer, key: str = "primary", **options: str
) -> tuple[gcp.GcpKms, _Proxy, list[float]]:
    """A provider over a counting proxy, recording the backoff sleeps instead of sleeping."""
    parsed = gcp.GcpKmsOptions.parse({"endpoint": server.endpoint, **TEST_OPTIONS, **options})
    client, channel = gcp._client_for(server.key_name(key), parsed)
    proxy = _Proxy(client)
    sleeps: list[float] = []
    provider = gcp.GcpKms(
        server.key_name(key),
        cast(kms_v1.KeyManagementServiceClient, proxy),
        parsed,
        channel=channel,
        sleep=sleeps.append,
    )
    return provider, proxy, sleeps


# -- CRC32C ---------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["public", "python"])
def test_crc32c_matches_the_castagnoli_check_value(implementation: str) -> None:
    crc = gcp.crc32c if implementation == "public" else gcp._crc32c_python
    assert crc(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert crc(b"") == 0
    assert crc(bytes(32)) == 0x8A9136AA
    data = os.urandom(300)
    assert crc(data) == gcp._crc32c_python(data)


@pytest.mark.parametrize(
    ("method", "damage"),
    [
        ("encrypt", lambda r: setattr(r, "ciphertext_crc32c", r.ciphertext_crc32c ^ 1)),
        ("encrypt", lambda r: setattr(r, "verified_plaintext_crc32c", False)),
        ("encrypt", lambda r: setattr(r, "verified_additional_authenticated_data_crc32c", False)),
        ("decrypt", lambda r: setattr(r, "plaintext_crc32c", r.plaintext_crc32c ^ 1)),
    ],
    ids=["ciphertext-crc", "plaintext-not-verified", "aad-not-verified", "plaintext-crc"],
)
def test_an_answer_failing_its_integrity_check_is_retried_then_unavailable(
    server: GcpTestServer, method: str, damage: Callable[[Any], None]
) -> None:
    provider, proxy, sleeps = _proxied(server)
    dek = _dek()
    wrapped = provider.wrap(dek, CONTEXT)
    proxy.calls.clear()
    proxy.damage[method] = damage
    call: Callable[[], object] = (
        (lambda: provider.wrap(dek, CONTEXT))
        if method == "encrypt"
        else (lambda: provider.unwrap(wrapped, CONTEXT))
    )
    with pytest.raises(KmsUnavailable) as caught:
        call()
    assert "CRC32C" in str(caught.value)
    assert server.key_name() in str(caught.value)
    assert dek.hex() not in str(caught.value)
    attempts = int(TEST_OPTIONS["maxAttempts"])
    assert proxy.calls[method] == attempts
    assert len(sleeps) == attempts - 1
    # Undamaged, the same provider works again.
    del proxy.damage[method]
    assert _unwraps_to(provider, wrapped, dek)


# -- the primary version ----------------------------------------------------------------
def test_a_primary_that_moved_since_the_last_wrap_is_recorded_and_bound(
    server: GcpTestServer,
) -> None:
    # A long cache: the provider cannot have seen the rotation through GetCryptoKey.
    provider, proxy, _ = _proxied(server, keyVersionCacheSeconds="3600")
    dek_old, dek_new = _dek(), _dek()
    old = provider.wrap(dek_old, CONTEXT)
    assert old.key_version == "1"
    server.rotate()
    proxy.calls.clear()
    new = provider.wrap(dek_new, CONTEXT)
    # Encrypt (by key) answered with version 2; the DEK was encrypted again naming it.
    assert new.key_version == "2"
    assert proxy.calls == Counter({"encrypt": 2})
    assert provider.key_version() == "2"  # learnt from the answer, no GetCryptoKey
    assert proxy.calls["get_crypto_key"] == 0
    assert _unwraps_to(provider, new, dek_new)
    assert _unwraps_to(provider, old, dek_old)
    with pytest.raises(KmsCorrupt):
        provider.unwrap(WrappedKey("gcp", new.key_id, "1", new.ciphertext), CONTEXT)
    # And rewrap moves the old one onto version 2.
    moved = rewrap(provider, old, CONTEXT)
    assert moved.key_version == "2"
    assert _unwraps_to(provider, moved, dek_old)


def test_key_version_is_cached_for_key_version_cache_seconds(server: GcpTestServer) -> None:
    cached, cached_calls, _ = _proxied(server, keyVersionCacheSeconds="3600")
    fresh, fresh_calls, _ = _proxied(server, keyVersionCacheSeconds="0")
    assert cached.key_version() == fresh.key_version() == "1"
    server.rotate()
    assert cached.key_version() == "1"  # within the cache period: not asked again
    assert cached_calls.calls["get_crypto_key"] == 1
    assert fresh.key_version() == "2"
    assert fresh_calls.calls["get_crypto_key"] == 2


def test_an_old_version_disabled_after_rotation_is_denied_while_new_wraps_work(
    server: GcpTestServer,
) -> None:
    provider = cast(gcp.GcpKms, server.provider())
    dek = _dek()
    old = provider.wrap(dek, CONTEXT)
    old_version = server.primary_version()
    server.rotate()
    server.admin.update_crypto_key_version(
        request={
            "crypto_key_version": {
                "name": old_version,
                "state": kms_v1.CryptoKeyVersion.CryptoKeyVersionState.DISABLED,
            },
            "update_mask": {"paths": ["state"]},
        }
    )
    with pytest.raises(KmsDenied) as caught:
        provider.unwrap(old, CONTEXT)
    assert "FAILED_PRECONDITION" in str(caught.value)
    assert "DISABLED" in str(caught.value)
    new = provider.wrap(dek, CONTEXT)
    assert new.key_version == "2"
    assert _unwraps_to(provider, new, dek)


def test_health_reports_a_disabled_primary_without_raising(server: GcpTestServer) -> None:
    provider = server.provider()
    assert provider.health().healthy
    server.disable()
    health = provider.health()
    assert not health.healthy
    assert "FAILED_PRECONDITION" in health.detail


# -- errors and retries ----------------------------------------------------------------
def test_an_unreachable_server_is_retried_a_bounded_number_of_times(
    server: GcpTestServer,
) -> None:
    provider, proxy, sleeps = _proxied(server, maxAttempts="3", backoffSeconds="0.5")
    wrapped = provider.wrap(_dek(), CONTEXT)
    server.stop()
    proxy.calls.clear()
    with pytest.raises(KmsUnavailable) as caught:
        provider.unwrap(wrapped, CONTEXT)
    assert "UNAVAILABLE" in str(caught.value)
    assert proxy.calls["decrypt"] == 3
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0


def test_refusals_are_not_retried(server: GcpTestServer) -> None:
    missing, proxy, sleeps = _proxied(server, key="missing")
    with pytest.raises(KmsDenied) as caught:
        missing.wrap(_dek(), CONTEXT)
    assert "NOT_FOUND" in str(caught.value)
    assert caught.value.key_id == server.key_name("missing")
    assert proxy.calls["get_crypto_key"] == 1
    assert sleeps == []


def test_a_damaged_ciphertext_is_corrupt_not_retried(server: GcpTestServer) -> None:
    provider, proxy, sleeps = _proxied(server)
    wrapped = provider.wrap(_dek(), CONTEXT)
    proxy.calls.clear()
    for ciphertext in (wrapped.ciphertext[:-1], b"\x00" + wrapped.ciphertext[1:]):
        with pytest.raises(KmsCorrupt) as caught:
            provider.unwrap(WrappedKey("gcp", wrapped.key_id, "1", ciphertext), CONTEXT)
        assert "INVALID_ARGUMENT" in str(caught.value)
    assert proxy.calls["decrypt"] == 2
    assert sleeps == []
    with pytest.raises(KmsCorrupt):  # not even sent: a version id is digits
        provider.unwrap(WrappedKey("gcp", wrapped.key_id, "01", wrapped.ciphertext), CONTEXT)
    assert proxy.calls["decrypt"] == 2


# -- configuration -------------------------------------------------------------------
def test_the_registry_builds_a_gcp_provider_from_config(server: GcpTestServer) -> None:
    provider = build_provider(server.config())
    assert isinstance(provider, gcp.GcpKms)
    assert provider.key_id == server.key_name()
    assert "options" not in repr(provider)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"insecure": "true"}, "loopback"),
        ({"endpoint": "kms.example.com:443", "insecure": "true"}, "loopback"),
        ({"endpoint": "127.0.0.1:1", "insecure": "true", "credentials": "default"}, "anonymous"),
        ({"credentials": "anonymous"}, "endpoint override"),
        ({"credentials": "token"}, "credentials"),
        ({"endpoint": "no-port"}, "host:port"),
        ({"timeoutSeconds": "0"}, "timeoutSeconds"),
        ({"maxAttempts": "2.5"}, "whole number"),
        ({"maxAttempts": "0"}, "maxAttempts"),
        ({"insecure": "yes"}, "true or false"),
        ({"endpiont": "127.0.0.1:1"}, "unknown gcp KMS option"),
    ],
)
def test_options_are_checked(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gcp.GcpKmsOptions.parse(options)


def test_defaults_and_loopback_endpoints() -> None:
    defaults = gcp.GcpKmsOptions.parse({})
    assert defaults == gcp.GcpKmsOptions()
    assert defaults.credentials == "default"
    assert defaults.endpoint is None
    for endpoint in ("127.0.0.1:9", "localhost:9", "[::1]:9"):
        parsed = gcp.GcpKmsOptions.parse({"endpoint": endpoint, "insecure": True})
        assert parsed.insecure
        assert parsed.credentials == "anonymous"


@pytest.mark.parametrize(
    "key_id",
    [
        "primary",
        "projects/p/locations/global/keyRings/r",
        "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
    ],
)
def test_the_key_id_must_be_a_crypto_key_name(key_id: str) -> None:
    with pytest.raises(ValueError, match="CryptoKey resource name"):
        gcp.from_config(key_id, {"endpoint": "127.0.0.1:9", "insecure": "true"})


def test_missing_application_default_credentials_are_denied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # ADC looks at GOOGLE_APPLICATION_CREDENTIALS first: a file that is not there fails
    # at once, without probing a metadata server.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    key_id = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
    with pytest.raises(KmsDenied) as caught:
        build_provider(KmsConfig("gcp", key_id, {}))
    assert "Application Default Credentials" in str(caught.value)
    assert caught.value.key_id == key_id
