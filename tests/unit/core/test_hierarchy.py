"""The key hierarchy: PBKDF2 parameters, HKDF separation, the verifier, calibration."""

from __future__ import annotations

import pytest

from secure_keys.core import memory
from secure_keys.core.hierarchy import (
    DEFAULT_ITERATIONS,
    MIN_ITERATIONS,
    KdfParams,
    KeyHierarchy,
    calibrate_iterations,
    normalize_password,
)


@pytest.fixture(scope="module")
def params() -> KdfParams:
    return KdfParams.generate(MIN_ITERATIONS)


@pytest.fixture(scope="module")
def hierarchy(params: KdfParams) -> KeyHierarchy:
    return KeyHierarchy.derive("hunter2-but-longer", params)


def test_three_distinct_keys(hierarchy: KeyHierarchy) -> None:
    keys = {
        bytes(hierarchy.kek),
        bytes(hierarchy.integrity_key),
        bytes(hierarchy.authentication_key),
    }
    assert len(keys) == 3
    assert all(len(k) == 32 for k in keys)


def test_same_password_and_params_derive_the_same_keys(
    params: KdfParams, hierarchy: KeyHierarchy
) -> None:
    again = KeyHierarchy.derive(b"hunter2-but-longer", params)
    assert again.kek == hierarchy.kek
    assert again.verify(hierarchy.verifier())


def test_salt_and_iterations_change_the_keys(params: KdfParams, hierarchy: KeyHierarchy) -> None:
    other_salt = KeyHierarchy.derive("hunter2-but-longer", KdfParams.generate(MIN_ITERATIONS))
    more_iterations = KeyHierarchy.derive(
        "hunter2-but-longer", KdfParams(MIN_ITERATIONS + 1, params.salt)
    )
    assert other_salt.kek != hierarchy.kek
    assert more_iterations.kek != hierarchy.kek


def test_verifier_rejects_other_passwords(params: KdfParams, hierarchy: KeyHierarchy) -> None:
    assert not KeyHierarchy.derive("hunter3-but-longer", params).verify(hierarchy.verifier())
    assert not hierarchy.verify(b"")
    assert not hierarchy.verify(hierarchy.verifier()[:-1])


def test_text_passwords_are_nfc_normalised(params: KdfParams) -> None:
    composed = KeyHierarchy.derive("caf\u00e9", params)
    decomposed = KeyHierarchy.derive("cafe\u0301", params)
    assert composed.kek == decomposed.kek


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_password("")


def test_wipe_zeroes_every_key(params: KdfParams) -> None:
    h = KeyHierarchy.derive("pw", params)
    h.wipe()
    assert h.kek == h.integrity_key == h.authentication_key == bytearray(32)


def test_repr_hides_keys(hierarchy: KeyHierarchy) -> None:
    text = repr(hierarchy)
    for key in (hierarchy.kek, hierarchy.integrity_key, hierarchy.authentication_key):
        assert key.hex() not in text
    assert "redacted" in text


@pytest.mark.parametrize(
    ("iterations", "salt", "algorithm"),
    [
        (MIN_ITERATIONS - 1, bytes(32), "pbkdf2-hmac-sha256"),
        (10**9, bytes(32), "pbkdf2-hmac-sha256"),
        (MIN_ITERATIONS, bytes(15), "pbkdf2-hmac-sha256"),
        (MIN_ITERATIONS, bytes(32), "scrypt"),
    ],
)
def test_params_outside_policy_are_refused(iterations: int, salt: bytes, algorithm: str) -> None:
    with pytest.raises(ValueError, match=r"iterations|salt|KDF"):
        KdfParams(iterations, salt, algorithm)


def test_params_json_round_trip(params: KdfParams) -> None:
    assert KdfParams.from_json(params.to_json()) == params
    with pytest.raises(ValueError, match="invalid kdf parameters"):
        KdfParams.from_json({"iterations": MIN_ITERATIONS})
    with pytest.raises(ValueError, match="must be an object"):
        KdfParams.from_json([])


def test_default_is_at_least_owasp() -> None:
    assert DEFAULT_ITERATIONS >= 600_000
    assert KdfParams.generate().iterations == DEFAULT_ITERATIONS


def test_calibration_scales_with_the_target() -> None:
    # A target of one minute needs far more than the floor on any machine.
    slow = calibrate_iterations(60.0, sample_iterations=20_000, rounds=1)
    assert slow > DEFAULT_ITERATIONS
    assert slow % 10_000 == 0


def test_calibration_never_goes_below_the_floor() -> None:
    assert calibrate_iterations(0.000_001, sample_iterations=1_000, rounds=1) == DEFAULT_ITERATIONS
    assert (
        calibrate_iterations(0.000_001, minimum=1, sample_iterations=1_000, rounds=1)
        == MIN_ITERATIONS
    )
    with pytest.raises(ValueError, match="positive"):
        calibrate_iterations(0)


def test_derive_zeroes_the_password_and_master_key(
    params: KdfParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    zeroed: list[bytearray] = []
    real = memory.zero

    def recording(buf: bytearray) -> None:
        real(buf)
        zeroed.append(buf)

    monkeypatch.setattr("secure_keys.core.hierarchy.zero", recording)
    KeyHierarchy.derive("hunter2-but-longer", params)
    sizes = sorted(len(b) for b in zeroed)
    assert sizes == sorted([len("hunter2-but-longer"), 32])
    assert all(b == bytearray(len(b)) for b in zeroed)
