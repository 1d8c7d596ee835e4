"""AES-GCM as secure_keys.core.aead exposes it, checked against NIST's CAVP vectors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cryptography_vectors
import pytest

from secure_keys.core.aead import NONCE_SIZE, TAG_SIZE, AeadKey, AuthenticationFailed

GCM_DIR = Path(cryptography_vectors.__file__).parent / "ciphers" / "AES" / "GCM"


def _nist_cases(filename: str) -> Iterator[dict[str, str]]:
    """Parse a CAVP .rsp file; keep the cases our profile uses (96-bit IV, 128-bit tag)."""
    header: dict[str, str] = {}
    case: dict[str, str] = {}
    for raw in (GCM_DIR / filename).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if case:
                yield {**header, **case}
                case = {}
            key, _, value = line.strip("[]").partition("=")
            header[key.strip()] = value.strip()
            continue
        if line == "FAIL":
            case["FAIL"] = "1"
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key == "Count" and case:
            yield {**header, **case}
            case = {}
        case[key] = value
    if case:
        yield {**header, **case}


def _ours(cases: Iterator[dict[str, str]]) -> list[dict[str, str]]:
    return [c for c in cases if c["IVlen"] == "96" and c["Taglen"] == "128"]


ENCRYPT = _ours(_nist_cases("gcmEncryptExtIV256.rsp"))
DECRYPT = _ours(_nist_cases("gcmDecrypt256.rsp"))


def test_vector_files_were_found() -> None:
    # Guards the parametrised tests below against silently running on nothing.
    assert len(ENCRYPT) >= 100
    assert len(DECRYPT) >= 100
    assert any("FAIL" in c for c in DECRYPT)


@pytest.mark.parametrize(
    "case", ENCRYPT, ids=lambda c: f"enc-{c['PTlen']}-{c['AADlen']}-{c['Count']}"
)
def test_nist_encrypt(case: dict[str, str]) -> None:
    key = AeadKey(bytes.fromhex(case["Key"]))
    out = key.encrypt(
        bytes.fromhex(case["IV"]), bytes.fromhex(case["PT"]), bytes.fromhex(case["AAD"])
    )
    assert out.hex() == case["CT"] + case["Tag"]


@pytest.mark.parametrize(
    "case", DECRYPT, ids=lambda c: f"dec-{c['PTlen']}-{c['AADlen']}-{c['Count']}"
)
def test_nist_decrypt(case: dict[str, str]) -> None:
    key = AeadKey(bytes.fromhex(case["Key"]))
    sealed = bytes.fromhex(case["CT"] + case["Tag"])
    nonce, aad = bytes.fromhex(case["IV"]), bytes.fromhex(case["AAD"])
    if "FAIL" in case:
        with pytest.raises(AuthenticationFailed):
            key.decrypt(nonce, sealed, aad)
    else:
        out = key.decrypt(nonce, sealed, aad)
        assert isinstance(out, bytearray)
        assert out.hex() == case["PT"]


def test_key_size_is_enforced() -> None:
    for size in (0, 16, 24, 31, 33):
        with pytest.raises(ValueError, match="32-byte key"):
            AeadKey(bytes(size))


def test_nonce_size_is_enforced() -> None:
    key = AeadKey(os.urandom(32))
    with pytest.raises(ValueError, match="nonce"):
        key.encrypt(bytes(16), b"data", b"")
    with pytest.raises(AuthenticationFailed):
        key.decrypt(bytes(16), bytes(32), b"")


def test_short_ciphertext_fails_authentication() -> None:
    key = AeadKey(os.urandom(32))
    with pytest.raises(AuthenticationFailed):
        key.decrypt(bytes(NONCE_SIZE), bytes(TAG_SIZE - 1), b"")


def test_caller_may_zero_its_key_buffer_after_construction() -> None:
    raw = bytearray(os.urandom(32))
    copy = bytes(raw)
    key = AeadKey(raw)
    raw[:] = bytes(32)
    nonce = os.urandom(NONCE_SIZE)
    assert AeadKey(copy).decrypt(nonce, key.encrypt(nonce, b"payload", b"ad"), b"ad") == b"payload"


def test_repr_hides_the_key() -> None:
    raw = bytes(range(32))
    assert raw.hex() not in repr(AeadKey(raw))
    assert repr(AeadKey(raw)) == "AeadKey(<redacted>)"


def test_decrypt_goes_straight_into_a_bytearray() -> None:
    # A stand-in cipher exposing only decrypt_into: a decrypt() that returned immutable
    # bytes (and copied them) would fail here.
    real = AeadKey(bytes(32))
    nonce = bytes(NONCE_SIZE)
    sealed = real.encrypt(nonce, b"plaintext", b"")

    class OnlyInto:
        def __init__(self, inner: object) -> None:
            self.decrypt_into = inner.decrypt_into  # type: ignore[attr-defined]

    real._cipher = OnlyInto(real._cipher)  # type: ignore[assignment]
    assert real.decrypt(nonce, sealed, b"") == bytearray(b"plaintext")
