"""Sealed sources (secure_keys.core.sealing): seal to a recipient key, open, and the format."""

from __future__ import annotations

import base64
import json
import re
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_keys.core import sealing
from secure_keys.core.envelope import MAX_PLAINTEXT_SIZE
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.hierarchy import hkdf_sha256
from secure_keys.core.sealing import (
    HEADER_SIZE,
    MAX_SEALED_TEXT_SIZE,
    Recipient,
    RecipientPrivateKey,
    open_sealed,
    seal_to_recipient,
)
from tests.conftest import CANARY

DATA = Path(__file__).parents[2] / "data"
VECTORS: dict[str, list[dict[str, Any]]] = json.loads(
    (DATA / "sealing" / "sealed.json").read_text(encoding="utf-8")
)

# One key for the property tests: hypothesis runs each test body many times.
PRIVATE = RecipientPrivateKey.generate()
RECIPIENT = PRIVATE.public()

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
plaintexts = st.binary(min_size=1, max_size=512)

# The CRD's pattern for spec.source.sealed.ciphertext and spec.source.sealed.recipient.
CRD_BASE64 = re.compile(r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
CRD_KEY_ID = re.compile(r"x25519:[0-9a-f]{16}\Z")


def _reason(private: RecipientPrivateKey, blob: str, namespace: str, name: str) -> str:
    with pytest.raises(SealedSourceInvalid) as info:
        open_sealed(private, blob, namespace=namespace, name=name)
    assert (info.value.namespace, info.value.name) == (namespace, name)
    return info.value.reason


def _b64(raw: bytes | bytearray) -> str:
    return base64.b64encode(raw).decode()


# Round trips and bindings


@given(plaintext=plaintexts, namespace=names, name=names)
def test_open_inverts_seal(plaintext: bytes, namespace: str, name: str) -> None:
    sealed = seal_to_recipient(RECIPIENT, plaintext, namespace=namespace, name=name)
    assert CRD_BASE64.match(sealed)
    opened = open_sealed(PRIVATE, sealed, namespace=namespace, name=name)
    assert type(opened) is bytearray
    assert opened == plaintext


def test_accepts_a_bytearray_and_the_largest_plaintext() -> None:
    big = bytearray(b"k" * MAX_PLAINTEXT_SIZE)
    sealed = seal_to_recipient(RECIPIENT, big, namespace="ns", name="big")
    assert len(sealed) <= MAX_SEALED_TEXT_SIZE <= 131072  # the CRD's maxLength
    assert open_sealed(PRIVATE, sealed, namespace="ns", name="big") == big


@pytest.mark.parametrize("size", [0, MAX_PLAINTEXT_SIZE + 1])
def test_refuses_empty_and_oversized_plaintext(size: int) -> None:
    with pytest.raises(ValueError, match="plaintext must be 1 to 65536 bytes"):
        seal_to_recipient(RECIPIENT, bytes(size), namespace="ns", name="n")


def test_a_value_is_bound_to_its_namespace_and_name() -> None:
    sealed = seal_to_recipient(RECIPIENT, b"sk_live_value", namespace="payments", name="stripe")
    assert _reason(PRIVATE, sealed, "payments2", "stripe") == "authentication-failed"
    assert _reason(PRIVATE, sealed, "payments", "stripe2") == "authentication-failed"
    # Length prefixes: moving the boundary between namespace and name is not the same key.
    assert _reason(PRIVATE, sealed, "paymentss", "tripe") == "authentication-failed"
    assert open_sealed(PRIVATE, sealed, namespace="payments", name="stripe") == b"sk_live_value"


def test_another_recipient_cannot_open_it() -> None:
    sealed = seal_to_recipient(RECIPIENT, b"value", namespace="ns", name="n")
    assert _reason(RecipientPrivateKey.generate(), sealed, "ns", "n") == "wrong-recipient"


def test_invalid_identity_is_the_callers_error() -> None:
    sealed = seal_to_recipient(RECIPIENT, b"value", namespace="ns", name="n")
    with pytest.raises(ValueError, match="namespace"):
        seal_to_recipient(RECIPIENT, b"value", namespace="Not_A_Label", name="n")
    with pytest.raises(ValueError, match="name"):
        open_sealed(PRIVATE, sealed, namespace="ns", name="../etc")


def test_fresh_ephemeral_key_and_nonce_per_seal() -> None:
    first = base64.b64decode(seal_to_recipient(RECIPIENT, b"same", namespace="ns", name="n"))
    second = base64.b64decode(seal_to_recipient(RECIPIENT, b"same", namespace="ns", name="n"))
    assert first[:9] == second[:9]  # version and recipient key id
    assert first[9:41] != second[9:41]  # ephemeral public key
    assert first[41:53] != second[41:53]  # nonce
    assert first[53:] != second[53:]


# Every damaged value fails with the one error


def _small_sealed() -> tuple[str, bytes]:
    sealed = seal_to_recipient(RECIPIENT, b"tok-1", namespace="ns", name="n")
    return sealed, base64.b64decode(sealed)


def test_every_single_bit_flip_fails_with_the_right_reason() -> None:
    _, raw = _small_sealed()
    for bit in range(len(raw) * 8):
        damaged = bytearray(raw)
        damaged[bit // 8] ^= 1 << (bit % 8)
        reason = _reason(PRIVATE, _b64(damaged), "ns", "n")
        at = bit // 8
        if at == 0:
            assert reason == "unsupported-format"
        elif at < 9:
            assert reason == "wrong-recipient"
        elif at < 41:  # a flipped ephemeral key is a different (or, rarely, invalid) point
            assert reason in {"authentication-failed", "malformed"}
        else:
            assert reason == "authentication-failed", at


def test_every_truncation_fails() -> None:
    sealed, raw = _small_sealed()
    for cut in range(len(raw)):
        expected = "malformed" if cut <= HEADER_SIZE + 16 else "authentication-failed"
        assert _reason(PRIVATE, _b64(raw[:cut]), "ns", "n") == expected
    for cut in range(len(sealed)):
        _reason(PRIVATE, sealed[:cut], "ns", "n")


def test_every_character_substitution_of_the_text_fails() -> None:
    sealed, _ = _small_sealed()
    for at in range(len(sealed)):
        for replacement in ("A", "/", "=", "-", " "):
            if sealed[at] != replacement:
                _reason(PRIVATE, sealed[:at] + replacement + sealed[at + 1 :], "ns", "n")


@given(garbage=st.binary(max_size=300))
def test_garbage_bytes_fail(garbage: bytes) -> None:
    _reason(PRIVATE, _b64(garbage), "ns", "n")
    _reason(PRIVATE, _b64(b"\x01" + RECIPIENT.key_id_digest + garbage), "ns", "n")


@given(garbage=st.text(max_size=200))
def test_garbage_text_fails(garbage: str) -> None:
    _reason(PRIVATE, garbage, "ns", "n")


def test_oversized_input_is_refused_before_decoding() -> None:
    too_long = "A" * (MAX_SEALED_TEXT_SIZE + 4)
    assert _reason(PRIVATE, too_long, "ns", "n") == "malformed"
    framed = b"\x01" + RECIPIENT.key_id_digest + bytes(32 + 12 + MAX_PLAINTEXT_SIZE + 17)
    assert len(_b64(framed)) <= MAX_SEALED_TEXT_SIZE
    assert _reason(PRIVATE, _b64(framed), "ns", "n") == "malformed"


def test_not_a_string_is_malformed() -> None:
    sealed, raw = _small_sealed()
    assert _reason(PRIVATE, raw, "ns", "n") == "malformed"  # type: ignore[arg-type]
    assert _reason(PRIVATE, sealed.encode(), "ns", "n") == "malformed"  # type: ignore[arg-type]


def test_an_all_zero_shared_secret_is_refused_even_if_openssl_returned_it() -> None:
    # OpenSSL refuses a zero X25519 result itself; the module checks again in case a
    # build does not. A stand-in key whose exchange returns zeros exercises that check.
    class ZeroExchange:
        def exchange(self, peer: object) -> bytes:
            return bytes(32)

    sealed, _ = _small_sealed()
    fake = object.__new__(RecipientPrivateKey)
    fake._key = ZeroExchange()  # type: ignore[assignment]
    fake._public = RECIPIENT
    assert _reason(fake, sealed, "ns", "n") == "malformed"


def test_the_derived_key_is_zeroed(monkeypatch: pytest.MonkeyPatch) -> None:
    derived: list[bytearray] = []

    def spy(ikm: bytes | bytearray, *, salt: bytes, info: bytes, length: int = 32) -> bytearray:
        key = hkdf_sha256(ikm, salt=salt, info=info, length=length)
        derived.append(key)
        return key

    monkeypatch.setattr("secure_keys.core.sealing.hkdf_sha256", spy)
    sealed = seal_to_recipient(RECIPIENT, b"value", namespace="ns", name="n")
    assert open_sealed(PRIVATE, sealed, namespace="ns", name="n") == b"value"
    assert len(derived) == 2
    assert derived == [bytearray(32), bytearray(32)]


# Keys and the published recipient document


def test_key_id_is_stable_and_matches_the_crd_pattern() -> None:
    raw = PRIVATE.raw_bytes()
    again = RecipientPrivateKey.from_raw(raw)
    assert again.public() == RECIPIENT
    assert again.public().key_id == RECIPIENT.key_id
    assert Recipient(RECIPIENT.public_key).key_id == RECIPIENT.key_id
    assert Recipient.from_json(RECIPIENT.to_json()).key_id == RECIPIENT.key_id
    assert CRD_KEY_ID.match(RECIPIENT.key_id)
    assert RECIPIENT.key_id == "x25519:" + RECIPIENT.key_id_digest.hex()
    assert RecipientPrivateKey.generate().public().key_id != RECIPIENT.key_id
    # And a sealed value opens with the reloaded key.
    sealed = seal_to_recipient(again.public(), b"value", namespace="ns", name="n")
    assert open_sealed(PRIVATE, sealed, namespace="ns", name="n") == b"value"


def test_to_json_is_the_published_document() -> None:
    document = json.loads(RECIPIENT.to_json())
    assert document == {
        "keyId": RECIPIENT.key_id,
        "publicKey": base64.b64encode(RECIPIENT.public_key).decode(),
    }
    assert Recipient.from_json(RECIPIENT.to_json()) == RECIPIENT
    assert Recipient.from_json(RECIPIENT.to_json().encode()) == RECIPIENT


def _document(**members: object) -> str:
    base: dict[str, object] = {
        "keyId": RECIPIENT.key_id,
        "publicKey": base64.b64encode(RECIPIENT.public_key).decode(),
    }
    base.update(members)
    return json.dumps({k: v for k, v in base.items() if v is not None})


_VALID_KEY = base64.b64encode(RECIPIENT.public_key).decode()
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# 32 bytes take 43 characters and one '='; the 43rd carries 2 bits nobody reads.
_NON_CANONICAL_KEY = _VALID_KEY[:-2] + _ALPHABET[_ALPHABET.index(_VALID_KEY[-2]) ^ 1] + "="


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('"x25519:00"', "must be a JSON object"),
        (_document(keyId=None), "exactly the members keyId and publicKey"),
        (_document(publicKey=None), "exactly the members keyId and publicKey"),
        (_document(algorithm="x25519"), "exactly the members keyId and publicKey"),
        ('{"keyId": "x", "publicKey": "' + _VALID_KEY + '", "keyId": "y"}', "repeats a member"),
        (_document(keyId=7), "must be strings"),
        (_document(publicKey=list(RECIPIENT.public_key)), "must be strings"),
        (_document(publicKey="not base64!"), "not valid base64"),
        (_document(publicKey=_VALID_KEY.rstrip("=")), "not valid base64"),
        (
            _document(publicKey=base64.urlsafe_b64encode(b"\xfb" * 32).decode()),
            "not valid base64",
        ),
        (_document(publicKey=_NON_CANONICAL_KEY), "not canonical"),
        (_document(publicKey=base64.b64encode(bytes(31)).decode()), "is 32 bytes, got 31"),
        (_document(publicKey=base64.b64encode(bytes(32)).decode()), "low-order point"),
        (_document(keyId="x25519:0000000000000000"), "does not match its publicKey"),
        (_document(keyId=RECIPIENT.key_id.upper()), "does not match its publicKey"),
        (" " * 2000, "over 1024 bytes"),
    ],
)
def test_from_json_is_strict(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Recipient.from_json(text)


def test_the_non_canonical_case_decodes_to_the_same_key() -> None:
    # So the strict check above is what refuses it, not the key being different.
    assert _NON_CANONICAL_KEY != _VALID_KEY
    assert base64.b64decode(_NON_CANONICAL_KEY, validate=True) == RECIPIENT.public_key


@pytest.mark.parametrize(
    "public_key",
    [
        bytes(32),  # u = 0
        (1).to_bytes(32, "little"),  # u = 1, of order 4
        # u = 2^255 - 19 - 1: the point of order 2
        (2**255 - 20).to_bytes(32, "little"),
    ],
)
def test_recipient_refuses_low_order_points(public_key: bytes) -> None:
    with pytest.raises(ValueError, match="low-order point"):
        Recipient(public_key)


def test_recipient_refuses_wrong_sizes_and_types() -> None:
    with pytest.raises(ValueError, match="is 32 bytes, got 33"):
        Recipient(bytes(33))
    with pytest.raises(TypeError):
        Recipient("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Recipient(bytearray(RECIPIENT.public_key))  # type: ignore[arg-type]


def test_private_key_from_raw_checks_the_size_without_echoing_it() -> None:
    secret = bytes(range(100, 131))  # 31 bytes
    with pytest.raises(ValueError, match="is 32 bytes, got 31") as info:
        RecipientPrivateKey.from_raw(secret)
    for text in _describe(info.value):
        assert secret.hex() not in text
        assert repr(secret) not in text
    with pytest.raises(TypeError):
        RecipientPrivateKey.from_raw("a" * 32)  # type: ignore[arg-type]


def test_raw_bytes_round_trip_and_are_a_fresh_buffer() -> None:
    raw = PRIVATE.raw_bytes()
    assert type(raw) is bytearray
    assert len(raw) == 32
    raw[:] = bytes(32)  # the caller zeroes its copy; the key itself is untouched
    assert PRIVATE.raw_bytes() != bytes(32)
    assert RecipientPrivateKey.from_raw(PRIVATE.raw_bytes()).public() == RECIPIENT


# Nothing secret escapes


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret),
        repr(bytearray(secret)),
    ]


def _describe(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def test_canary_and_key_material_never_escape() -> None:
    private = RecipientPrivateKey.generate()
    recipient = private.public()
    sealed = seal_to_recipient(recipient, CANARY.encode(), namespace="payments", name="live")
    raw = base64.b64decode(sealed)
    seen = [repr(private), str(private), repr(recipient), recipient.to_json(), sealed]
    attempts: list[tuple[RecipientPrivateKey, str, str, str]] = [
        (private, sealed, "payments", "other"),
        (private, sealed, "other", "live"),
        (RecipientPrivateKey.generate(), sealed, "payments", "live"),
        (private, sealed[:-4], "payments", "live"),
        (private, _b64(raw[:-1]), "payments", "live"),
        (private, _b64(bytes((2,)) + raw[1:]), "payments", "live"),
        (private, sealed + "!", "payments", "live"),
        (private, CANARY, "payments", "live"),
    ]
    failures: list[BaseException] = []
    for key, blob, namespace, name in attempts:
        try:
            open_sealed(key, blob, namespace=namespace, name=name)
        except SealedSourceInvalid as exc:
            failures.append(exc)
    try:
        seal_to_recipient(recipient, CANARY.encode() * 2000, namespace="payments", name="live")
    except ValueError as exc:
        failures.append(exc)
    assert len(failures) == len(attempts) + 1
    for failure in failures:
        seen += _describe(failure)
    haystack = "\n".join(seen)
    canary = CANARY.encode()
    for form in [CANARY, CANARY[8:24], *_forms(canary)]:
        assert form not in haystack, f"a form of the plaintext leaked: {form!r}"
    for form in _forms(bytes(private.raw_bytes())):
        assert form not in haystack, "a form of the private key leaked"
    assert canary not in raw
    assert "<redacted>" in repr(private)


# Known-answer vectors (tests/data/sealing/sealed.json, from tests/data/generate_vectors.py)


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["description"])
def test_seal_matches_vector(case: dict[str, Any]) -> None:
    private = RecipientPrivateKey.from_raw(bytes.fromhex(case["recipientPrivateKey"]))
    recipient = private.public()
    assert recipient.key_id == case["keyId"]
    assert recipient.to_json() == case["recipientDocument"]
    assert Recipient.from_json(case["recipientDocument"]) == recipient
    sealed = sealing._seal_with(
        recipient,
        bytes.fromhex(case["plaintext"]),
        namespace=case["namespace"],
        name=case["name"],
        ephemeral=RecipientPrivateKey.from_raw(bytes.fromhex(case["ephemeralPrivateKey"])),
        nonce=bytes.fromhex(case["nonce"]),
    )
    assert sealed == case["sealed"]


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["description"])
def test_open_vector(case: dict[str, Any]) -> None:
    private = RecipientPrivateKey.from_raw(bytes.fromhex(case["recipientPrivateKey"]))
    opened = open_sealed(private, case["sealed"], namespace=case["namespace"], name=case["name"])
    assert opened.hex() == case["plaintext"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["description"])
def test_invalid_vector_raises_the_one_error(case: dict[str, Any]) -> None:
    private = RecipientPrivateKey.from_raw(bytes.fromhex(case["recipientPrivateKey"]))
    with pytest.raises(SealedSourceInvalid) as info:
        open_sealed(private, case["sealed"], namespace=case["namespace"], name=case["name"])
    assert info.value.reason == case["reason"]
    assert str(info.value).startswith(
        f"cannot open the sealed source of ApiKey {case['namespace']}/{case['name']}: "
    )


def test_vector_sets_cover_every_reason() -> None:
    assert len(VECTORS["valid"]) >= 4
    assert len({case["keyId"] for case in VECTORS["valid"]}) == 2
    assert {case["reason"] for case in VECTORS["invalid"]} == {
        "malformed",
        "unsupported-format",
        "wrong-recipient",
        "authentication-failed",
    }


def test_seam_checks_its_nonce() -> None:
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        sealing._seal_with(
            RECIPIENT,
            b"value",
            namespace="ns",
            name="n",
            ephemeral=RecipientPrivateKey.generate(),
            nonce=bytes(11),
        )


# The HKDF the scheme relies on (hierarchy.hkdf_sha256)


def test_hkdf_sha256_matches_rfc_5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes([0x0B] * 22),
        salt=bytes(range(13)),
        info=bytes(range(0xF0, 0xFA)),
        length=42,
    )
    assert type(okm) is bytearray
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_hkdf_sha256_refuses_impossible_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="output length"):
        hkdf_sha256(b"ikm", salt=b"", info=b"", length=length)
