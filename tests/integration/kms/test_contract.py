"""The KMS provider contract: every provider, against its real server, passes every case.

Parametrised over ``local``, ``aws``, ``gcp`` and ``pkcs11`` (``conftest.kms_server``);
run one provider with ``-k aws``. Each case drives the server only through the
``KmsTestServer`` protocol (``harness.py``), so no provider gets a private exception.
Where a case cannot mean anything for a provider, its server says so by skipping (the
``local`` provider has no process to stop).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding, WrapContext
from secure_keys.core.errors import InvalidEnvelope, KmsCorrupt, KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.kms.base import KmsProvider, WrappedKey
from secure_keys.core.memory import zero
from tests.integration.kms.harness import KmsTestServer

BINDING = KeyBinding("payments", "stripe-live", 3)
CONTEXT = BINDING.wrap_context(envelope.FORMAT_V1)
PLAINTEXT = b"sk-live-contract-suite-plaintext"
UNAVAILABLE_WITHIN = 20.0
"""Seconds a call may take to give up on a stopped server (timeouts, retries, backoff)."""


def _dek() -> bytearray:
    return bytearray(os.urandom(32))


def _unwraps_to(provider: KmsProvider, wrapped: WrappedKey, dek: bytes | bytearray) -> bool:
    back = provider.unwrap(wrapped, CONTEXT)
    try:
        return type(back) is bytearray and back == dek
    finally:
        zero(back)


def _relabelled(wrapped: WrappedKey, *, key_id: str | None = None, version: str) -> WrappedKey:
    return WrappedKey(
        wrapped.provider, key_id or wrapped.key_id, version, bytes(wrapped.ciphertext)
    )


def _assert_names_key(exc: KmsError, server: KmsTestServer, key_id: str) -> None:
    assert exc.provider == server.name
    assert exc.key_id == key_id
    assert key_id in str(exc)


def test_round_trip(kms_server: KmsTestServer) -> None:
    provider = kms_server.provider()
    assert provider.name == kms_server.name
    assert provider.key_id == kms_server.config().key_id
    dek = _dek()
    wrapped = provider.wrap(dek, CONTEXT)
    assert wrapped.provider == kms_server.name
    assert wrapped.key_id == provider.key_id
    assert wrapped.key_version == provider.key_version()
    assert dek not in wrapped.ciphertext
    assert _unwraps_to(provider, wrapped, dek)
    # Two wraps of the same key differ (fresh nonce or IV each time).
    assert provider.wrap(dek, CONTEXT).ciphertext != wrapped.ciphertext
    # The whole envelope, as the controller uses it.
    sealed = envelope.seal(PLAINTEXT, BINDING, provider)
    with envelope.opened(sealed.to_bytes(), BINDING, provider) as plaintext:
        assert plaintext == PLAINTEXT
    health = provider.health()
    assert health.healthy, health.detail
    assert health.key_version == provider.key_version()


@pytest.mark.parametrize(
    "other",
    [
        KeyBinding("payments", "stripe-live", 4),
        KeyBinding("payments", "stripe-test", 3),
        KeyBinding("billing", "stripe-live", 3),
    ],
    ids=["version", "name", "namespace"],
)
def test_wrong_context_is_refused(kms_server: KmsTestServer, other: KeyBinding) -> None:
    provider = kms_server.provider()
    dek = _dek()
    wrapped = provider.wrap(dek, CONTEXT)
    with pytest.raises(KmsCorrupt) as caught:
        provider.unwrap(wrapped, other.wrap_context(envelope.FORMAT_V1))
    _assert_names_key(caught.value, kms_server, provider.key_id)
    extra = WrapContext((*CONTEXT.pairs, ("securekeys.io/extra", "x")))
    with pytest.raises(KmsCorrupt):
        provider.unwrap(wrapped, extra)
    assert _unwraps_to(provider, wrapped, dek)  # the right context still works


def test_wrong_key_is_refused(kms_server: KmsTestServer) -> None:
    primary, other = kms_server.provider("primary"), kms_server.provider("other")
    assert primary.key_id != other.key_id
    dek = _dek()
    wrapped = primary.wrap(dek, CONTEXT)
    with pytest.raises(KmsCorrupt):
        other.unwrap(wrapped, CONTEXT)  # labelled with primary's key: refused outright
    # Relabelled as the other key's, the ciphertext must still be refused by the KMS
    # itself: only the key that wrapped it can unwrap it.
    forged = _relabelled(wrapped, key_id=other.key_id, version=other.key_version())
    with pytest.raises(KmsCorrupt):
        other.unwrap(forged, CONTEXT)
    with pytest.raises(InvalidEnvelope):
        envelope.open(envelope.seal(PLAINTEXT, BINDING, primary), BINDING, other)


def test_the_recorded_key_version_is_authenticated(kms_server: KmsTestServer) -> None:
    before = kms_server.provider()
    dek_old, dek_new = _dek(), _dek()
    old = before.wrap(dek_old, CONTEXT)
    kms_server.rotate()
    after = kms_server.provider()
    assert after.key_version() != old.key_version
    new = after.wrap(dek_new, CONTEXT)
    assert new.key_version == after.key_version()
    # Both versions unwrap under the versions they record...
    assert _unwraps_to(after, old, dek_old)
    assert _unwraps_to(after, new, dek_new)
    # ...and under no other: the version is not a label the caller may change.
    with pytest.raises(KmsCorrupt):
        after.unwrap(_relabelled(old, version=new.key_version), CONTEXT)
    with pytest.raises(KmsCorrupt):
        after.unwrap(_relabelled(new, version=old.key_version), CONTEXT)


def test_a_disabled_key_is_denied_and_comes_back(kms_server: KmsTestServer) -> None:
    provider = kms_server.provider()
    dek = _dek()
    wrapped = provider.wrap(dek, CONTEXT)
    sealed = envelope.seal(PLAINTEXT, BINDING, provider)
    kms_server.disable()
    with pytest.raises(KmsDenied) as caught:
        kms_server.provider().unwrap(wrapped, CONTEXT)
    _assert_names_key(caught.value, kms_server, provider.key_id)
    assert not caught.value.retryable
    with pytest.raises(KmsDenied):
        kms_server.provider().wrap(dek, CONTEXT)
    # Through the envelope: refused, not "unavailable" (a local key is refused as soon as
    # a provider is built from its files; a remote one when the KMS is asked).
    with pytest.raises((KmsDenied, InvalidEnvelope)) as refused:
        envelope.open(sealed, BINDING, kms_server.provider())
    assert not isinstance(refused.value, KmsUnavailable)
    # The other key is not affected.
    other = kms_server.provider("other")
    assert _unwraps_to(other, other.wrap(dek, CONTEXT), dek)
    kms_server.enable()
    assert _unwraps_to(kms_server.provider(), wrapped, dek)


def test_a_destroyed_key_is_denied(kms_server: KmsTestServer) -> None:
    provider = kms_server.provider()
    dek = _dek()
    wrapped = provider.wrap(dek, CONTEXT)
    kms_server.destroy()
    with pytest.raises(KmsDenied) as caught:
        kms_server.provider().unwrap(wrapped, CONTEXT)
    _assert_names_key(caught.value, kms_server, provider.key_id)
    with pytest.raises(KmsDenied):
        kms_server.provider().wrap(dek, CONTEXT)


def test_a_stopped_server_is_unavailable_then_recovers(kms_server: KmsTestServer) -> None:
    provider = kms_server.provider()
    dek = _dek()
    wrapped = provider.wrap(dek, CONTEXT)
    kms_server.stop()
    try:
        for call in (
            lambda: provider.unwrap(wrapped, CONTEXT),
            lambda: provider.wrap(dek, CONTEXT),
            provider.key_version,
        ):
            started = time.monotonic()
            with pytest.raises(KmsUnavailable) as caught:
                call()
            assert time.monotonic() - started < UNAVAILABLE_WITHIN
            _assert_names_key(caught.value, kms_server, provider.key_id)
            assert caught.value.retryable
            assert dek.hex() not in str(caught.value)
        started = time.monotonic()
        health = provider.health()  # never raises
        assert not health.healthy
        assert health.detail
        assert time.monotonic() - started < UNAVAILABLE_WITHIN
    finally:
        kms_server.start()
    # The same provider object recovers by itself: no rebuild, no restart.
    assert _unwraps_to(provider, wrapped, dek)
    assert provider.health().healthy


def test_rewrap_onto_a_new_kek_version_keeps_the_ciphertext(kms_server: KmsTestServer) -> None:
    provider = kms_server.provider()
    sealed = envelope.seal(PLAINTEXT, BINDING, provider)
    assert envelope.rewrap(sealed, BINDING, provider) is sealed  # already current: no call
    kms_server.rotate()
    rotated = kms_server.provider()
    assert rotated.key_version() != sealed.wrapped.key_version
    moved = envelope.rewrap(sealed, BINDING, rotated)
    assert moved.nonce == sealed.nonce
    assert moved.ciphertext == sealed.ciphertext  # the sealed data never moved
    assert moved.wrapped.key_id == sealed.wrapped.key_id
    assert moved.wrapped.key_version == rotated.key_version()
    assert moved.wrapped.ciphertext != sealed.wrapped.ciphertext
    with envelope.opened(moved.to_bytes(), BINDING, rotated) as plaintext:
        assert plaintext == PLAINTEXT
    # Rewrapping is bound to the context too: another binding does not move it.
    with pytest.raises(InvalidEnvelope):
        envelope.rewrap(sealed, KeyBinding("payments", "stripe-live", 4), rotated)


def test_many_concurrent_tasks_share_one_provider(kms_server: KmsTestServer) -> None:
    provider = kms_server.provider()
    tasks = 32

    def one(index: int) -> bool:
        binding = KeyBinding("payments", f"key-{index}", index + 1)
        context = binding.wrap_context(envelope.FORMAT_V1)
        dek = bytearray(os.urandom(32))
        wrapped = provider.wrap(dek, context)
        back = provider.unwrap(wrapped, context)
        try:
            sealed = envelope.seal(f"value-{index}".encode(), binding, provider)
            with envelope.opened(sealed, binding, provider) as plaintext:
                return back == dek and plaintext == f"value-{index}".encode()
        finally:
            zero(back)

    async def all_at_once() -> list[bool]:
        return await asyncio.gather(*(asyncio.to_thread(one, i) for i in range(tasks)))

    assert asyncio.run(all_at_once()) == [True] * tasks
