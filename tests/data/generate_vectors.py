"""Generates the known-answer vectors under tests/data/ from an independent implementation.

Nothing here imports ``secure_keys``: the envelope, the local provider's wrap and the key
hierarchy are rebuilt from ``docs/envelope-format.md``, and sealed sources from
``docs/sealed-source-format.md``, with raw AES-GCM, raw X25519, ``struct``, ``hashlib``
and ``hmac``. The committed JSON therefore pins the format, and
``tests/unit/core/test_vectors.py`` checks both that the package matches the files and
that this script still reproduces them. Run ``python tests/data/generate_vectors.py`` to
rewrite them (only when the format deliberately changes, with a new format version).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = Path(__file__).parent
FORMAT = 1


def lp(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">H", len(raw)) + raw


def binding_bytes(namespace: str, name: str, version: int) -> bytes:
    return lp(namespace) + lp(name) + struct.pack(">I", version)


def wrap_context(namespace: str, name: str, version: int) -> bytes:
    pairs = sorted(
        {
            "securekeys.io/namespace": namespace,
            "securekeys.io/name": name,
            "securekeys.io/version": str(version),
            "securekeys.io/format": str(FORMAT),
        }.items()
    )
    return b"securekeys.io/wrap-context\x00" + b"".join(lp(k) + lp(v) for k, v in pairs)


def local_wrap(
    kek: bytes, key_id: str, kek_version: int, context: bytes, dek: bytes, nonce: bytes
) -> bytes:
    aad = (
        b"securekeys.io/local-wrap\x00"
        + bytes((1,))
        + lp(key_id)
        + struct.pack(">I", kek_version)
        + context
    )
    return bytes((1,)) + nonce + AESGCM(kek).encrypt(nonce, dek, aad)


def envelope(case: dict[str, Any]) -> bytes:
    b = case["binding"]
    k = case["kek"]
    dek = bytes.fromhex(case["dek"])
    nonce = bytes.fromhex(case["nonce"])
    context = wrap_context(b["namespace"], b["name"], b["version"])
    wrapped = local_wrap(
        bytes.fromhex(k["key"]),
        k["keyId"],
        k["version"],
        context,
        dek,
        bytes.fromhex(case["wrapNonce"]),
    )
    aad = (
        b"securekeys.io/envelope\x00"
        + bytes((FORMAT,))
        + binding_bytes(b["namespace"], b["name"], b["version"])
        + lp("local")
        + lp(k["keyId"])
    )
    ciphertext = AESGCM(dek).encrypt(nonce, bytes.fromhex(case["plaintext"]), aad)
    return b"".join(
        (
            bytes((FORMAT, len(b"local"))),
            b"local",
            lp(k["keyId"]),
            lp(str(k["version"])),
            lp(wrapped),
            nonce,
            ciphertext,
        )
    )


def seeded(label: str, size: int) -> str:
    """Deterministic test bytes: no randomness, so regeneration is reproducible."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size].hex()


def seal_cases() -> list[dict[str, Any]]:
    plaintexts = [
        ("a 40-byte GitHub-style token", b"ghp_" + b"A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"),
        ("a single byte", b"x"),
        ("a 64-byte random key", bytes.fromhex(seeded("pt64", 64))),
        ("non-ASCII UTF-8", "clé-secrète-ключ-🔑".encode()),
        ("1 KiB of binary", bytes.fromhex(seeded("pt1k", 1024))),
    ]
    bindings = [
        {"namespace": "default", "name": "github-token", "version": 1},
        {"namespace": "payments", "name": "stripe.live", "version": 7},
        {"namespace": "a", "name": "b", "version": 4294967295},
        {"namespace": "team-x", "name": "svc-key", "version": 2},
        {"namespace": "kube-public", "name": "x.y.z", "version": 12},
    ]
    cases = []
    for i, ((desc, plaintext), binding) in enumerate(zip(plaintexts, bindings, strict=True)):
        case: dict[str, Any] = {
            "description": desc,
            "binding": binding,
            "kek": {
                "keyId": "default" if i % 2 == 0 else "prod.keyring",
                "version": 1 + i,
                "key": seeded(f"kek{i}", 32),
            },
            "plaintext": plaintext.hex(),
            "dek": seeded(f"dek{i}", 32),
            "nonce": seeded(f"nonce{i}", 12),
            "wrapNonce": seeded(f"wrapnonce{i}", 12),
        }
        case["envelope"] = base64.b64encode(envelope(case)).decode()
        cases.append(case)
    return cases


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def invalid_cases(valid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = valid[0]
    raw = base64.b64decode(base["envelope"])
    other_keyring = base64.b64decode(valid[1]["envelope"])
    same_key_id = base64.b64decode(valid[2]["envelope"])
    key_id = base["kek"]["keyId"].encode()
    header = 2 + len(b"local")
    key_id_at = header + 2
    version_at = key_id_at + len(key_id) + 2
    wrapped_len_at = version_at + 1
    wrapped_at = wrapped_len_at + 2
    nonce_at = wrapped_at + 61

    def case(
        desc: str, data: bytes, reason: str, binding: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "description": desc,
            "binding": binding or base["binding"],
            "kek": base["kek"],
            "envelope": base64.b64encode(data).decode(),
            "reason": reason,
        }

    # An envelope whose wrapped DEK was lifted from another envelope of the same keyring.
    third = valid[4] if valid[4]["kek"]["keyId"] == base["kek"]["keyId"] else valid[2]
    lifted = base64.b64decode(third["envelope"])
    third_wrapped_at = header + 2 + len(key_id) + 2 + len(str(third["kek"]["version"])) + 2
    spliced = raw[:wrapped_at] + lifted[third_wrapped_at : third_wrapped_at + 61] + raw[nonce_at:]
    b = base["binding"]
    nonce_and_ct = raw[nonce_at:]

    def framed(key_id: bytes, key_version: bytes, wrapped: bytes, tail: bytes) -> bytes:
        # Internally consistent lengths, so only the size limits can reject these.
        return b"".join((b"\x01\x05local", lp(key_id), lp(key_version), lp(wrapped), tail))

    wrapped_dek = raw[wrapped_at:nonce_at]
    return [
        case("zero-length wrapped DEK", framed(key_id, b"1", b"", nonce_and_ct), "malformed"),
        case(
            "key id over 2048 bytes",
            framed(b"k" * 2049, b"1", wrapped_dek, nonce_and_ct),
            "malformed",
        ),
        case(
            "key version over 1024 bytes",
            framed(key_id, b"1" * 1025, wrapped_dek, nonce_and_ct),
            "malformed",
        ),
        case(
            "wrapped DEK over 8192 bytes",
            framed(key_id, b"1", bytes(8193), nonce_and_ct),
            "malformed",
        ),
        case(
            "ciphertext over 64 KiB plus tag",
            framed(key_id, b"1", wrapped_dek, nonce_and_ct[:12] + bytes(65536 + 17)),
            "malformed",
        ),
        case("empty provider name", b"\x01\x00" + raw[header:], "malformed"),
        case("provider name not ASCII", b"\x01\x05loc\xe1l" + raw[header:], "malformed"),
        case("empty input", b"", "malformed"),
        case("unknown format version 2", bytes((2,)) + raw[1:], "unsupported-format"),
        case("format byte zero", bytes((0,)) + raw[1:], "unsupported-format"),
        case("truncated inside the header", raw[:4], "malformed"),
        case("truncated before the nonce", raw[:nonce_at], "malformed"),
        case("truncated inside the tag", raw[:-1], "authentication-failed"),
        case("ciphertext shorter than a tag", raw[: nonce_at + 12 + 15], "malformed"),
        case("one byte appended", raw + b"\x00", "authentication-failed"),
        case("last tag bit flipped", _flip(raw, len(raw) - 1, 7), "authentication-failed"),
        case("first ciphertext bit flipped", _flip(raw, nonce_at + 12), "authentication-failed"),
        case("nonce bit flipped", _flip(raw, nonce_at + 5, 3), "authentication-failed"),
        case("wrapped DEK bit flipped", _flip(raw, wrapped_at + 30, 1), "unwrap-refused"),
        case(
            "KEK version changed", raw[:version_at] + b"2" + raw[version_at + 1 :], "unwrap-refused"
        ),
        case("key id changed", _flip(raw, key_id_at, 0), "wrong-key"),
        case("provider name changed", _flip(raw, 2, 0), "wrong-key"),
        case("wrapped-key length inflated", _flip(raw, wrapped_len_at, 4), "malformed"),
        case("wrapped DEK lifted from another envelope", spliced, "unwrap-refused"),
        case("another ApiKey's envelope from another keyring", other_keyring, "wrong-key"),
        case("another ApiKey's envelope under the same key id", same_key_id, "unwrap-refused"),
        case("replayed onto another namespace", raw, "unwrap-refused", {**b, "namespace": "other"}),
        case("replayed onto another name", raw, "unwrap-refused", {**b, "name": "github-token2"}),
        case("replayed onto another version", raw, "unwrap-refused", {**b, "version": 2}),
    ]


def hierarchy_cases() -> list[dict[str, Any]]:
    def hkdf_expand(prk: bytes, info: bytes) -> bytes:
        return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()

    cases = []
    for desc, password, iterations in (
        ("ASCII password at the floor", "correct horse battery staple", 100_000),
        ("NFC-normalised text password", "pässwörd-ключ", 120_000),
    ):
        salt = bytes.fromhex(seeded(desc, 32))
        master = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
        auth = hkdf_expand(master, b"securekeys.io/v1/authentication")
        cases.append(
            {
                "description": desc,
                "password": password,
                "kdf": {
                    "algorithm": "pbkdf2-hmac-sha256",
                    "iterations": iterations,
                    "salt": base64.b64encode(salt).decode(),
                },
                "kek": hkdf_expand(master, b"securekeys.io/v1/key-encryption").hex(),
                "integrityKey": hkdf_expand(master, b"securekeys.io/v1/integrity").hex(),
                "authenticationKey": auth.hex(),
                "verifier": hmac.new(
                    auth, b"securekeys.io/v1/password-verifier", hashlib.sha256
                ).hexdigest(),
            }
        )
    return cases


def fingerprint_cases() -> list[dict[str, Any]]:
    cases = []
    bindings = (
        ("payments", "stripe-live", "0b7c2d1e-5f4a-4c3b-9a8d-7e6f5a4b3c2d"),
        ("default", "x", "u"),
        ("ns-" + "a" * 60, "k" * 253, "ffffffff-ffff-ffff-ffff-ffffffffffff"),
    )
    for i, plaintext in enumerate((b"ghp_example", b"x", bytes(range(256)))):
        key = bytes.fromhex(seeded(f"integrity{i}", 32))
        namespace, name, uid = bindings[i]
        message = b"securekeys.io/v2/fingerprint\x00"
        for part in (namespace.encode(), name.encode(), uid.encode()):
            message += len(part).to_bytes(2, "big") + part
        mac = hmac.new(key, message + plaintext, hashlib.sha256)
        cases.append(
            {
                "integrityKey": key.hex(),
                "namespace": namespace,
                "name": name,
                "uid": uid,
                "plaintext": plaintext.hex(),
                "fingerprint": "hs256:" + mac.digest()[:16].hex(),
            }
        )
    return cases


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def recipient_key_id_digest(public: bytes) -> bytes:
    return hashlib.sha256(b"securekeys.io/v1/recipient-key-id\x00" + public).digest()[:8]


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    # RFC 5869 with one output block: extract, then expand.
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def sealed_source(case: dict[str, Any]) -> bytes:
    recipient_private = bytes.fromhex(case["recipientPrivateKey"])
    ephemeral_private = bytes.fromhex(case["ephemeralPrivateKey"])
    recipient_public = x25519_public(recipient_private)
    ephemeral_public = x25519_public(ephemeral_private)
    shared = X25519PrivateKey.from_private_bytes(ephemeral_private).exchange(
        X25519PublicKey.from_public_bytes(recipient_public)
    )
    key = hkdf_sha256(
        shared, ephemeral_public + recipient_public, b"securekeys.io/v1/sealed-source"
    )
    key_id = recipient_key_id_digest(recipient_public)
    aad = (
        b"securekeys.io/sealed-source\x00"
        + bytes((FORMAT,))
        + key_id
        + lp(case["namespace"])
        + lp(case["name"])
    )
    nonce = bytes.fromhex(case["nonce"])
    ciphertext = AESGCM(key).encrypt(nonce, bytes.fromhex(case["plaintext"]), aad)
    return bytes((FORMAT,)) + key_id + ephemeral_public + nonce + ciphertext


def sealing_valid_cases() -> list[dict[str, Any]]:
    inputs = [
        (
            "a 40-byte token",
            "default",
            "github-token",
            b"ghp_" + b"Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3",
        ),
        ("a single byte", "a", "b", b"k"),
        ("non-ASCII UTF-8", "payments", "stripe.live", "clé-ключ-🔑".encode()),
        ("1000 bytes of binary", "team-x", "svc-key", bytes.fromhex(seeded("sealed-pt", 1000))),
    ]
    cases = []
    for i, (desc, namespace, name, plaintext) in enumerate(inputs):
        recipient_private = seeded(f"recipient{i % 2}", 32)  # two cases per recipient
        public = x25519_public(bytes.fromhex(recipient_private))
        key_id = "x25519:" + recipient_key_id_digest(public).hex()
        case: dict[str, Any] = {
            "description": desc,
            "namespace": namespace,
            "name": name,
            "recipientPrivateKey": recipient_private,
            "recipientDocument": json.dumps(
                {"keyId": key_id, "publicKey": base64.b64encode(public).decode()}
            ),
            "keyId": key_id,
            "plaintext": plaintext.hex(),
            "ephemeralPrivateKey": seeded(f"ephemeral{i}", 32),
            "nonce": seeded(f"sealed-nonce{i}", 12),
        }
        case["sealed"] = base64.b64encode(sealed_source(case)).decode()
        cases.append(case)
    return cases


def sealing_invalid_cases(valid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = valid[0]
    text = base["sealed"]
    raw = base64.b64decode(text)
    assert len(raw) % 3 == 2, "the base case needs one '=' of padding"
    header = 1 + 8 + 32 + 12

    def case(
        desc: str,
        sealed: str | bytes,
        reason: str,
        namespace: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        return {
            "description": desc,
            "namespace": namespace or base["namespace"],
            "name": name or base["name"],
            "recipientPrivateKey": base["recipientPrivateKey"],
            "sealed": sealed if isinstance(sealed, str) else base64.b64encode(sealed).decode(),
            "reason": reason,
        }

    # The last character before '=' carries 2 bits nobody reads: flip one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(text[-2]) ^ 1]
    same_recipient = next(c for c in valid[1:] if c["keyId"] == base["keyId"])
    other_recipient = next(c for c in valid if c["keyId"] != base["keyId"])
    # u = 0 and u = 1 are low-order points: every shared secret with them is zero.
    low_order = [bytes(32), (1).to_bytes(32, "little")]
    url_safe = text.replace("+", "-").replace("/", "_")
    assert url_safe != text, "the base case needs a '+' or '/' in its base64"
    return [
        case("empty text", "", "malformed"),
        case("not base64", "!" * len(text), "malformed"),
        case("padding missing", text.rstrip("="), "malformed"),
        case("a line break inside", text[:40] + "\n" + text[40:], "malformed"),
        case("a trailing newline", text + "\n", "malformed"),
        case("URL-safe alphabet", url_safe, "malformed"),
        case("non-canonical final base64 character", text[:-2] + last + "=", "malformed"),
        case("format version 2", bytes((2,)) + raw[1:], "unsupported-format"),
        case("format byte zero", bytes((0,)) + raw[1:], "unsupported-format"),
        case("only the format byte", raw[:1], "malformed"),
        case("truncated to the header", raw[:header], "malformed"),
        case("header and a bare tag, no ciphertext", raw[: header + 16], "malformed"),
        case("truncated inside the tag", raw[:-1], "authentication-failed"),
        case("one byte appended", raw + b"\x00", "authentication-failed"),
        case("key id bit flipped", _flip(raw, 1), "wrong-recipient"),
        case("sealed to another recipient", other_recipient["sealed"], "wrong-recipient"),
        case("ephemeral key bit flipped", _flip(raw, 9 + 5, 2), "authentication-failed"),
        case("ephemeral key zero", raw[:9] + low_order[0] + raw[41:], "malformed"),
        case("ephemeral key u = 1", raw[:9] + low_order[1] + raw[41:], "malformed"),
        case("nonce bit flipped", _flip(raw, 41 + 11, 7), "authentication-failed"),
        case("first ciphertext bit flipped", _flip(raw, header), "authentication-failed"),
        case("last tag bit flipped", _flip(raw, len(raw) - 1, 7), "authentication-failed"),
        case(
            "another ApiKey's value for the same recipient",
            same_recipient["sealed"],
            "authentication-failed",
        ),
        case("replayed onto another namespace", text, "authentication-failed", namespace="other"),
        case("replayed onto another name", text, "authentication-failed", name="github-token2"),
        case(
            "namespace and name boundary moved",
            text,
            "authentication-failed",
            namespace=base["namespace"] + base["name"][0],
            name=base["name"][1:],
        ),
    ]


def build() -> dict[str, str]:
    valid = seal_cases()
    sealed = sealing_valid_cases()
    files = {
        "envelope/seal.json": valid,
        "envelope/invalid.json": invalid_cases(valid),
        "hierarchy/derive.json": hierarchy_cases(),
        "fingerprint/fingerprint.json": fingerprint_cases(),
        "sealing/sealed.json": {"valid": sealed, "invalid": sealing_invalid_cases(sealed)},
    }
    return {
        path: json.dumps(data, indent=2, ensure_ascii=False) + "\n" for path, data in files.items()
    }


def main() -> None:
    for path, text in build().items():
        target = HERE / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
