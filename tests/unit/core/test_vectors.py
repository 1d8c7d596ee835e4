"""Known-answer vectors (tests/data/): the package must match an independent implementation."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding, WrapContext
from secure_keys.core.errors import InvalidEnvelope
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.hierarchy import KdfParams, KeyHierarchy
from secure_keys.core.kms.base import WrappedKey
from secure_keys.core.kms.local import LocalKms

DATA = Path(__file__).parents[2] / "data"


def _load(path: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((DATA / path).read_text(encoding="utf-8"))
    return cases


class FixedNonceKms:
    """The real local provider, with its wrap nonce pinned by the vector (its private seam)."""

    def __init__(self, inner: LocalKms, nonce: bytes) -> None:
        self.inner = inner
        self.nonce = nonce
        self.name = inner.name
        self.key_id = inner.key_id

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        return self.inner._wrap_with_nonce(dek, context, self.nonce)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        return self.inner.unwrap(wrapped, context)

    def key_version(self) -> str:
        return self.inner.key_version()

    def health(self) -> Any:
        return self.inner.health()


def _kms(case: dict[str, Any]) -> LocalKms:
    kek = case["kek"]
    return LocalKms._from_keks(kek["keyId"], {kek["version"]: bytes.fromhex(kek["key"])})


def _binding(case: dict[str, Any]) -> KeyBinding:
    b = case["binding"]
    return KeyBinding(b["namespace"], b["name"], b["version"])


SEAL = _load("envelope/seal.json")
INVALID = _load("envelope/invalid.json")


@pytest.mark.parametrize("case", SEAL, ids=lambda c: c["description"])
def test_seal_matches_vector(case: dict[str, Any]) -> None:
    kms = FixedNonceKms(_kms(case), bytes.fromhex(case["wrapNonce"]))
    sealed = envelope._seal_with(
        bytes.fromhex(case["plaintext"]),
        _binding(case),
        kms,
        dek=bytes.fromhex(case["dek"]),
        nonce=bytes.fromhex(case["nonce"]),
    )
    assert base64.b64encode(sealed.to_bytes()).decode() == case["envelope"]


@pytest.mark.parametrize("case", SEAL, ids=lambda c: c["description"])
def test_open_vector(case: dict[str, Any]) -> None:
    plaintext = envelope.open(base64.b64decode(case["envelope"]), _binding(case), _kms(case))
    assert plaintext.hex() == case["plaintext"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["description"])
def test_invalid_vector_raises_the_one_error(case: dict[str, Any]) -> None:
    binding = _binding(case)
    with pytest.raises(InvalidEnvelope) as info:
        envelope.open(base64.b64decode(case["envelope"]), binding, _kms(case))
    assert info.value.reason == case["reason"]
    assert str(info.value).startswith(
        f"cannot open ApiKey {binding.namespace}/{binding.name} version {binding.version}: "
    )


@pytest.mark.parametrize("case", _load("hierarchy/derive.json"), ids=lambda c: c["description"])
def test_hierarchy_vector(case: dict[str, Any]) -> None:
    hierarchy = KeyHierarchy.derive(case["password"], KdfParams.from_json(case["kdf"]))
    assert hierarchy.kek.hex() == case["kek"]
    assert hierarchy.integrity_key.hex() == case["integrityKey"]
    assert hierarchy.authentication_key.hex() == case["authenticationKey"]
    assert hierarchy.verifier().hex() == case["verifier"]
    assert hierarchy.verify(bytes.fromhex(case["verifier"]))


@pytest.mark.parametrize("case", _load("fingerprint/fingerprint.json"))
def test_fingerprint_vector(case: dict[str, Any]) -> None:
    key = bytes.fromhex(case["integrityKey"])
    plaintext = bytes.fromhex(case["plaintext"])
    assert (
        fingerprint(key, plaintext, namespace=case["namespace"], name=case["name"], uid=case["uid"])
        == case["fingerprint"]
    )


def test_generator_reproduces_the_committed_vectors() -> None:
    spec = importlib.util.spec_from_file_location("generate_vectors", DATA / "generate_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, text in module.build().items():
        assert (DATA / path).read_text(encoding="utf-8") == text, path


def test_vector_sets_are_not_empty() -> None:
    assert len(SEAL) >= 5
    assert len(INVALID) >= 20
    reasons = {case["reason"] for case in INVALID}
    assert reasons == {
        "malformed",
        "unsupported-format",
        "wrong-key",
        "unwrap-refused",
        "authentication-failed",
    }
