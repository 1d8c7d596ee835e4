"""seal/open/rewrap in secure_keys.core.envelope, with the real local provider."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_keys.core import envelope, memory
from secure_keys.core.binding import KeyBinding, WrapContext
from secure_keys.core.envelope import Envelope, EnvelopeFormatError
from secure_keys.core.errors import InvalidEnvelope, KmsUnavailable
from secure_keys.core.kms.base import HealthStatus, WrappedKey
from secure_keys.core.kms.local import LocalKms

# One provider for the property tests: hypothesis runs each test body many times.
KMS = LocalKms._from_keks("default", {1: os.urandom(32)})

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
bindings = st.builds(KeyBinding, names, names, st.integers(1, 2**32 - 1))
plaintexts = st.binary(min_size=1, max_size=512)


@given(plaintext=plaintexts, binding=bindings)
def test_open_inverts_seal(plaintext: bytes, binding: KeyBinding) -> None:
    sealed = envelope.seal(plaintext, binding, KMS)
    assert bytes(envelope.open(sealed.to_bytes(), binding, KMS)) == plaintext
    assert bytes(envelope.open(sealed, binding, KMS)) == plaintext


@given(plaintext=plaintexts, binding=bindings, data=st.data())
def test_any_single_bit_flip_raises_invalid_envelope(
    plaintext: bytes, binding: KeyBinding, data: st.DataObject
) -> None:
    raw = bytearray(envelope.seal(plaintext, binding, KMS).to_bytes())
    bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidEnvelope):
        envelope.open(bytes(raw), binding, KMS)


@given(plaintext=plaintexts, binding=bindings, data=st.data())
def test_any_truncation_raises_invalid_envelope(
    plaintext: bytes, binding: KeyBinding, data: st.DataObject
) -> None:
    raw = envelope.seal(plaintext, binding, KMS).to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    with pytest.raises(InvalidEnvelope):
        envelope.open(raw[:cut], binding, KMS)


@given(garbage=st.binary(max_size=300), binding=bindings)
def test_garbage_raises_invalid_envelope(garbage: bytes, binding: KeyBinding) -> None:
    with pytest.raises(InvalidEnvelope):
        envelope.open(garbage, binding, KMS)


def test_each_binding_field_is_enforced(kms: LocalKms) -> None:
    binding = KeyBinding("payments", "stripe-live", 3)
    raw = envelope.seal(b"sk_live_value", binding, kms).to_bytes()
    for other in (
        KeyBinding("payments2", "stripe-live", 3),
        KeyBinding("payments", "stripe-live2", 3),
        KeyBinding("payments", "stripe-live", 4),
    ):
        with pytest.raises(InvalidEnvelope) as info:
            envelope.open(raw, other, kms)
        assert info.value.version == other.version
        assert info.value.name == other.name


def test_data_aad_binds_the_binding_even_if_the_kms_ignored_its_context(
    binding: KeyBinding,
) -> None:
    # A provider that (wrongly) ignores the wrap context must still not let a blob move:
    # the AES-GCM associated data carries the binding on its own.
    class ContextBlindKms:
        def __init__(self, inner: LocalKms) -> None:
            self.inner = inner
            self.name = inner.name
            self.key_id = inner.key_id
            self.fixed = WrapContext((("fixed", "context"),))

        def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
            return self.inner.wrap(dek, self.fixed)

        def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
            return self.inner.unwrap(wrapped, self.fixed)

        def key_version(self) -> str:
            return self.inner.key_version()

        def health(self) -> HealthStatus:
            return self.inner.health()

    blind = ContextBlindKms(LocalKms._from_keks("default", {1: os.urandom(32)}))
    raw = envelope.seal(b"value", binding, blind).to_bytes()
    assert envelope.open(raw, binding, blind) == b"value"
    moved = KeyBinding(binding.namespace, binding.name, binding.version + 1)
    with pytest.raises(InvalidEnvelope) as info:
        envelope.open(raw, moved, blind)
    assert info.value.reason == "authentication-failed"


def test_other_keyring_is_wrong_key(binding: KeyBinding, kms: LocalKms) -> None:
    raw = envelope.seal(b"value", binding, kms).to_bytes()
    same_id_other_kek = LocalKms._from_keks("default", {1: os.urandom(32)})
    other_id = LocalKms._from_keks("other", {1: os.urandom(32)})
    with pytest.raises(InvalidEnvelope) as info:
        envelope.open(raw, binding, same_id_other_kek)
    assert info.value.reason == "unwrap-refused"
    with pytest.raises(InvalidEnvelope) as info:
        envelope.open(raw, binding, other_id)
    assert info.value.reason == "wrong-key"


def test_fresh_dek_and_nonce_per_seal(binding: KeyBinding, kms: LocalKms) -> None:
    first = envelope.seal(b"same plaintext", binding, kms)
    second = envelope.seal(b"same plaintext", binding, kms)
    assert first.nonce != second.nonce
    assert first.wrapped.ciphertext != second.wrapped.ciphertext
    assert first.ciphertext != second.ciphertext


def test_plaintext_size_limits(binding: KeyBinding, kms: LocalKms) -> None:
    with pytest.raises(ValueError, match="plaintext"):
        envelope.seal(b"", binding, kms)
    with pytest.raises(ValueError, match="plaintext"):
        envelope.seal(bytes(envelope.MAX_PLAINTEXT_SIZE + 1), binding, kms)
    big = os.urandom(envelope.MAX_PLAINTEXT_SIZE)
    assert envelope.open(envelope.seal(big, binding, kms).to_bytes(), binding, kms) == big


def test_seal_zeroes_its_dek(
    binding: KeyBinding, kms: LocalKms, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_out: list[bytearray] = []
    real = memory.random_secret

    def spy(size: int) -> bytearray:
        buf = real(size)
        handed_out.append(buf)
        return buf

    monkeypatch.setattr("secure_keys.core.envelope.random_secret", spy)
    envelope.seal(b"value", binding, kms)
    assert len(handed_out) == 1
    assert handed_out[0] == bytearray(32)


def test_open_zeroes_the_unwrapped_dek(binding: KeyBinding, kms: LocalKms) -> None:
    unwrapped: list[bytearray] = []

    class Spy(LocalKms):
        def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
            dek = super().unwrap(wrapped, context)
            unwrapped.append(dek)
            return dek

    spy = Spy("default", {1: kms._keks[1]})
    raw = envelope.seal(b"value", binding, spy).to_bytes()
    assert envelope.open(raw, binding, spy) == b"value"
    assert unwrapped == [bytearray(32)]


def test_opened_zeroes_the_plaintext(binding: KeyBinding, kms: LocalKms) -> None:
    raw = envelope.seal(b"sk_live_value", binding, kms).to_bytes()
    with envelope.opened(raw, binding, kms) as plaintext:
        assert plaintext == b"sk_live_value"
        held = plaintext
    assert held == bytearray(len(b"sk_live_value"))


def test_unreachable_kms_is_not_reported_as_a_bad_envelope(
    binding: KeyBinding, kms: LocalKms
) -> None:
    raw = envelope.seal(b"value", binding, kms).to_bytes()

    class Down(LocalKms):
        def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
            raise KmsUnavailable("local", "default", "connection refused")

    with pytest.raises(KmsUnavailable):
        envelope.open(raw, binding, Down("default", {1: kms._keks[1]}))


def test_rewrap_moves_the_dek_and_keeps_the_ciphertext(binding: KeyBinding) -> None:
    kek1, kek2 = os.urandom(32), os.urandom(32)
    old = LocalKms._from_keks("default", {1: kek1})
    new = LocalKms._from_keks("default", {1: kek1, 2: kek2})
    sealed = envelope.seal(b"value", binding, old)
    moved = envelope.rewrap(sealed, binding, new)
    assert moved.wrapped.key_version == "2"
    assert (moved.nonce, moved.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert envelope.open(moved.to_bytes(), binding, new) == b"value"
    only_new = LocalKms._from_keks("default", {2: kek2})
    assert envelope.open(moved.to_bytes(), binding, only_new) == b"value"
    with pytest.raises(InvalidEnvelope):
        envelope.open(sealed.to_bytes(), binding, only_new)
    assert envelope.rewrap(moved, binding, new) is moved


def test_rewrap_refuses_a_wrong_binding(binding: KeyBinding) -> None:
    kek1 = os.urandom(32)
    sealed = envelope.seal(b"value", binding, LocalKms._from_keks("default", {1: kek1}))
    newer = LocalKms._from_keks("default", {1: kek1, 2: os.urandom(32)})
    other = KeyBinding(binding.namespace, binding.name, binding.version + 1)
    with pytest.raises(InvalidEnvelope) as info:
        envelope.rewrap(sealed, other, newer)
    assert info.value.reason == "unwrap-refused"


def test_parse_reports_format_problems() -> None:
    with pytest.raises(EnvelopeFormatError) as info:
        Envelope.from_bytes(b"\x07rest")
    assert info.value.reason == "unsupported-format"
    with pytest.raises(EnvelopeFormatError) as info:
        Envelope.from_bytes(b"\x01")
    assert info.value.reason == "malformed"


def test_repr_does_not_dump_ciphertext(binding: KeyBinding, kms: LocalKms) -> None:
    sealed = envelope.seal(b"value", binding, kms)
    text = repr(sealed)
    assert sealed.ciphertext.hex() not in text
    assert "ciphertext=<" in text


@pytest.mark.parametrize(
    ("namespace", "name", "version"),
    [
        ("", "n", 1),
        ("Upper", "n", 1),
        ("a" * 64, "n", 1),
        ("ns", "../etc", 1),
        ("ns", "a/b", 1),
        ("ns", "n", 0),
        ("ns", "n", 2**32),
        ("ns", "n", True),
    ],
)
def test_binding_rejects_invalid_identity(namespace: str, name: str, version: int) -> None:
    with pytest.raises(ValueError, match=r"namespace|name|version"):
        KeyBinding(namespace, name, version)


def test_binding_encoding_is_unambiguous() -> None:
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    assert KeyBinding("ab", "c", 1).encoded != KeyBinding("a", "bc", 1).encoded
    context = KeyBinding("ab", "c", 1).wrap_context(1)
    assert context.canonical != KeyBinding("a", "bc", 1).wrap_context(1).canonical


def test_open_checks_the_format_of_a_parsed_envelope(binding: KeyBinding, kms: LocalKms) -> None:
    sealed = envelope.seal(b"value", binding, kms)
    future = Envelope(2, sealed.wrapped, sealed.nonce, sealed.ciphertext)
    with pytest.raises(InvalidEnvelope) as info:
        envelope.open(future, binding, kms)
    assert info.value.reason == "unsupported-format"


def test_denied_unwrap_during_rewrap_is_an_invalid_envelope(binding: KeyBinding) -> None:
    kek1 = os.urandom(32)
    sealed = envelope.seal(b"value", binding, LocalKms._from_keks("default", {1: kek1}))
    # Version 1 is locked in this instance (its password was not supplied).
    locked = LocalKms(
        "default", {2: LocalKms._from_keks("default", {2: os.urandom(32)})._keks[2]}, [1]
    )
    with pytest.raises(InvalidEnvelope) as info:
        envelope.rewrap(sealed, binding, locked)
    assert info.value.reason == "unwrap-refused"


def test_to_bytes_refuses_fields_the_format_cannot_carry(
    binding: KeyBinding, kms: LocalKms
) -> None:
    sealed = envelope.seal(b"value", binding, kms)
    huge = WrappedKey("local", "default", "1", bytes(envelope.MAX_WRAPPED_SIZE + 1))
    with pytest.raises(ValueError, match="does not fit"):
        Envelope(1, huge, sealed.nonce, sealed.ciphertext).to_bytes()
    with pytest.raises(ValueError, match="does not fit"):
        Envelope(1, sealed.wrapped, sealed.nonce[:8], sealed.ciphertext).to_bytes()


def test_each_seal_draws_a_fresh_dek_and_each_wrap_a_fresh_nonce(binding: KeyBinding) -> None:
    deks: list[bytes] = []

    class Recording(LocalKms):
        def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
            deks.append(bytes(dek))
            return super().wrap(dek, context)

    kms = Recording("default", LocalKms._from_keks("default", {1: os.urandom(32)})._keks)
    wraps = [envelope.seal(b"same plaintext", binding, kms).wrapped for _ in range(3)]
    assert len(set(deks)) == 3
    assert all(len(dek) == 32 and dek != bytes(32) for dek in deks)
    # The KEK is long-lived: a repeated wrap nonce under it would be GCM nonce reuse.
    assert len({w.ciphertext[1:13] for w in wraps}) == 3


def test_a_provider_returning_immutable_bytes_is_refused(binding: KeyBinding) -> None:
    inner = LocalKms._from_keks("default", {1: os.urandom(32)})
    raw = envelope.seal(b"value", binding, inner).to_bytes()

    class Sloppy(LocalKms):
        def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
            return bytes(super().unwrap(wrapped, context))  # type: ignore[return-value]

    with pytest.raises(InvalidEnvelope) as info:
        envelope.open(raw, binding, Sloppy("default", inner._keks))
    assert info.value.reason == "unwrap-refused"


def test_to_bytes_refuses_an_unsupported_format(binding: KeyBinding, kms: LocalKms) -> None:
    sealed = envelope.seal(b"value", binding, kms)
    with pytest.raises(ValueError, match="does not fit"):
        Envelope(2, sealed.wrapped, sealed.nonce, sealed.ciphertext).to_bytes()


@given(binding=bindings, data=st.data())
def test_mutated_headers_never_escape_the_one_error(
    binding: KeyBinding, data: st.DataObject
) -> None:
    raw = bytearray(envelope.seal(b"value", binding, KMS).to_bytes())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, min(len(raw) - 1, 40)), label="at")
        raw[at] = data.draw(st.integers(0, 255), label="byte")
    # Edits may happen to restore a byte, so opening is allowed; anything but the one
    # error type escaping is not.
    with contextlib.suppress(InvalidEnvelope):
        envelope.open(bytes(raw), binding, KMS)


@given(binding=bindings, format_version=st.integers(1, 255))
def test_binding_context_matches_the_generic_encoding(
    binding: KeyBinding, format_version: int
) -> None:
    fast = binding.wrap_context(format_version)
    generic = WrapContext(tuple(fast.as_dict().items()))
    assert fast.pairs == generic.pairs
    assert fast.canonical == generic.canonical
    assert fast.as_dict()["securekeys.io/version"] == str(binding.version)
