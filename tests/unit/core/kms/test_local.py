"""The local KMS provider: keyrings, unlocking, KEK versions and rewrap, with real PBKDF2."""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

import pytest

from secure_keys.core import envelope, memory
from secure_keys.core.binding import KeyBinding, WrapContext
from secure_keys.core.errors import KmsCorrupt, KmsDenied
from secure_keys.core.hierarchy import DEFAULT_ITERATIONS, MIN_ITERATIONS
from secure_keys.core.kms.base import KmsProvider, WrappedKey, rewrap
from secure_keys.core.kms.local import LocalKeyring, LocalKms, from_config

CONTEXT = KeyBinding("default", "token", 1).wrap_context(1)


def test_local_kms_satisfies_the_protocol(kms: LocalKms) -> None:
    assert isinstance(kms, KmsProvider)


def test_unlock_with_the_right_password(keyring: LocalKeyring, keyring_password: str) -> None:
    kms = LocalKms.unlock(keyring, [keyring_password])
    dek = os.urandom(32)
    wrapped = kms.wrap(dek, CONTEXT)
    assert (wrapped.provider, wrapped.key_id, wrapped.key_version) == ("local", "default", "1")
    assert kms.unwrap(wrapped, CONTEXT) == dek
    # A second unlock derives the same KEK from the stored salt and iterations.
    assert LocalKms.unlock(keyring, [keyring_password]).unwrap(wrapped, CONTEXT) == dek


def test_wrong_password_is_denied(keyring: LocalKeyring) -> None:
    with pytest.raises(KmsDenied, match="newest KEK version 1"):
        LocalKms.unlock(keyring, ["not the password"])


def test_unlock_checks_the_verifier_in_constant_time(
    keyring: LocalKeyring, keyring_password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    LocalKms.unlock(keyring, [keyring_password])
    assert calls
    assert calls[0][1] == keyring.newest.verifier


def test_context_is_authenticated(kms: LocalKms) -> None:
    wrapped = kms.wrap(os.urandom(32), CONTEXT)
    for other in (
        KeyBinding("default", "token", 2).wrap_context(1),
        KeyBinding("other", "token", 1).wrap_context(1),
        KeyBinding("default", "token", 1).wrap_context(2),
    ):
        with pytest.raises(KmsCorrupt, match="did not authenticate"):
            kms.unwrap(wrapped, other)


def test_kek_version_is_authenticated() -> None:
    kek = os.urandom(32)
    kms = LocalKms._from_keks("default", {1: kek, 2: kek})  # same KEK under two versions
    wrapped = kms.wrap(os.urandom(32), CONTEXT)
    relabelled = WrappedKey("local", "default", "1", wrapped.ciphertext)
    with pytest.raises(KmsCorrupt):
        kms.unwrap(relabelled, CONTEXT)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("key_version", "01", KmsCorrupt),
        ("key_version", "x", KmsCorrupt),
        ("key_version", "9", KmsDenied),
        ("key_id", "other", KmsCorrupt),
        ("ciphertext", b"\x02" + bytes(60), KmsCorrupt),
        ("ciphertext", b"\x01" + bytes(59), KmsCorrupt),
    ],
)
def test_unwrap_rejects_bad_wrapped_keys(
    kms: LocalKms, field: str, value: str | bytes, error: type[Exception]
) -> None:
    wrapped = kms.wrap(os.urandom(32), CONTEXT)
    fields = {
        "provider": wrapped.provider,
        "key_id": wrapped.key_id,
        "key_version": wrapped.key_version,
        "ciphertext": wrapped.ciphertext,
    }
    fields[field] = value
    with pytest.raises(error):
        kms.unwrap(WrappedKey(**fields), CONTEXT)  # type: ignore[arg-type]


def test_rotation_new_wraps_use_newest_old_still_unwrap(
    keyring: LocalKeyring, keyring_password: str
) -> None:
    kms1 = LocalKms.unlock(keyring, [keyring_password])
    dek = os.urandom(32)
    old = kms1.wrap(dek, CONTEXT)

    rotated = keyring.with_new_version(keyring_password, iterations=MIN_ITERATIONS)
    assert [v.version for v in rotated.versions] == [1, 2]
    assert rotated.versions[0] == keyring.versions[0]
    assert rotated.versions[1].kdf.salt != keyring.versions[0].kdf.salt
    kms2 = LocalKms.unlock(rotated, [keyring_password])
    assert kms2.key_version() == "2"
    assert kms2.unwrap(old, CONTEXT) == dek
    moved = rewrap(kms2, old, CONTEXT)
    assert moved.key_version == "2"
    assert kms2.unwrap(moved, CONTEXT) == dek
    assert rewrap(kms2, moved, CONTEXT) is moved


def test_rotation_never_lowers_iterations(keyring: LocalKeyring, keyring_password: str) -> None:
    raised = keyring.with_new_version(keyring_password, iterations=MIN_ITERATIONS + 10_000)
    again = raised.with_new_version(keyring_password, iterations=MIN_ITERATIONS)
    assert again.newest.kdf.iterations == MIN_ITERATIONS + 10_000
    # Old versions keep their own parameters, so they still derive the same KEK.
    assert LocalKms.unlock(again, [keyring_password]).key_version() == "3"


def test_password_change_leaves_old_versions_locked_until_rewrapped(
    keyring: LocalKeyring, keyring_password: str
) -> None:
    dek = os.urandom(32)
    old_wrap = LocalKms.unlock(keyring, [keyring_password]).wrap(dek, CONTEXT)
    changed = keyring.with_new_version("a brand new password", iterations=MIN_ITERATIONS)

    only_new = LocalKms.unlock(changed, ["a brand new password"])
    with pytest.raises(KmsDenied, match="KEK version 1 is locked"):
        only_new.unwrap(old_wrap, CONTEXT)

    both = LocalKms.unlock(changed, ["a brand new password", keyring_password])
    moved = rewrap(both, old_wrap, CONTEXT)
    assert only_new.unwrap(moved, CONTEXT) == dek

    with pytest.raises(KmsDenied):
        LocalKms.unlock(changed, [keyring_password])


def test_keyring_json_round_trip(keyring: LocalKeyring) -> None:
    text = keyring.to_json()
    assert LocalKeyring.from_json(text) == keyring
    data = json.loads(text)
    assert data["versions"][0]["kdf"]["iterations"] == MIN_ITERATIONS
    assert len(bytes.fromhex(data["versions"][0]["verifier"])) == 32


def test_new_keyrings_use_the_default_iterations() -> None:
    ring = LocalKeyring.create("default", "pw")
    assert ring.newest.kdf.iterations == DEFAULT_ITERATIONS
    assert len(ring.newest.kdf.salt) == 32


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(kind="other"),
        lambda d: d.update(format=2),
        lambda d: d.update(versions="x"),
        lambda d: d.update(versions=[]),
        lambda d: d.update(keyId="Bad/Id"),
        lambda d: d["versions"][0].update(version="1"),
        lambda d: d["versions"][0].pop("verifier"),
        lambda d: d["versions"][0]["kdf"].update(iterations=1000),
        lambda d: d["versions"][0]["kdf"].update(salt="!!"),
        lambda d: d["versions"][0]["kdf"].update(algorithm="md5"),
        lambda d: d["versions"].append(dict(d["versions"][0])),
        lambda d: d.update(keyId=123),
        lambda d: d["versions"][0].update(created=None),
        lambda d: d["versions"][0].update(verifier=""),
        lambda d: d["versions"][0].update(verifier="00" * 31),
        lambda d: d["versions"][0]["kdf"].update(salt="A" * 1000),
        lambda d: d["versions"][0]["kdf"].update(salt=123),
        lambda d: d.update(versions=[dict(d["versions"][0], version=i) for i in range(1, 66)]),
    ],
)
def test_malformed_keyrings_are_refused(keyring: LocalKeyring, mutate: object) -> None:
    data = json.loads(keyring.to_json())
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        LocalKeyring.from_json(json.dumps(data))


def test_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        LocalKeyring.from_json("{")


def test_from_config_reads_keyring_and_password_files(
    tmp_path: Path, keyring: LocalKeyring, keyring_password: str
) -> None:
    (tmp_path / "keyring.json").write_text(keyring.to_json())
    (tmp_path / "password").write_text(keyring_password + "\n")
    options = {
        "keyringPath": str(tmp_path / "keyring.json"),
        "passwordFile": str(tmp_path / "password"),
    }
    kms = from_config("default", options)
    assert kms.health().healthy
    with pytest.raises(ValueError, match="holds key 'default', not 'other'"):
        from_config("other", options)
    with pytest.raises(ValueError, match="passwordFile"):
        from_config("default", {"keyringPath": options["keyringPath"]})
    (tmp_path / "password").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        from_config("default", options)


def test_health_reports_a_working_key(kms: LocalKms) -> None:
    status = kms.health()
    assert status.healthy
    assert (status.provider, status.key_id, status.key_version) == ("local", "default", "1")


def test_wrap_refuses_wrong_sized_deks(kms: LocalKms) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        kms.wrap(bytes(16), CONTEXT)


def test_envelope_sealed_under_password_keyring(
    keyring: LocalKeyring, keyring_password: str
) -> None:
    binding = KeyBinding("default", "token", 1)
    sealed = envelope.seal(b"value", binding, LocalKms.unlock(keyring, [keyring_password]))
    reopened = LocalKms.unlock(LocalKeyring.from_json(keyring.to_json()), [keyring_password])
    assert envelope.open(sealed.to_bytes(), binding, reopened) == b"value"


def test_wrap_context_rejects_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="unique"):
        WrapContext((("a", "1"), ("a", "2")))


def test_unlock_wipes_every_derived_hierarchy(
    keyring: LocalKeyring, keyring_password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secure_keys.core.hierarchy import KeyHierarchy

    made: list[KeyHierarchy] = []
    real = KeyHierarchy.derive.__func__  # type: ignore[attr-defined]

    def recording(cls: type[KeyHierarchy], *args: object) -> KeyHierarchy:
        made.append(real(cls, *args))
        return made[-1]

    monkeypatch.setattr(KeyHierarchy, "derive", classmethod(recording))
    LocalKms.unlock(keyring, ["wrong password", keyring_password])
    assert len(made) == 2
    for hierarchy in made:
        assert hierarchy.kek == hierarchy.integrity_key == bytearray(32)


def test_from_config_zeroes_the_password_buffers(
    tmp_path: Path, keyring: LocalKeyring, keyring_password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ring.json").write_text(keyring.to_json())
    (tmp_path / "pw").write_text(keyring_password + "\nold password\n")
    read: list[bytearray] = []
    real = memory.read_secret_file

    def recording(path: str | os.PathLike[str]) -> bytearray:
        read.append(real(path))
        return read[-1]

    monkeypatch.setattr("secure_keys.core.kms.local.read_secret_file", recording)
    seen: list[list[bytearray]] = []
    real_unlock = LocalKms.unlock.__func__  # type: ignore[attr-defined]

    def spy_unlock(cls: type[LocalKms], ring: LocalKeyring, passwords: list[bytearray]) -> LocalKms:
        seen.append(passwords)
        return real_unlock(cls, ring, passwords)  # type: ignore[no-any-return]

    monkeypatch.setattr(LocalKms, "unlock", classmethod(spy_unlock))
    from_config(
        "default",
        {"keyringPath": str(tmp_path / "ring.json"), "passwordFile": str(tmp_path / "pw")},
    )
    assert read[0] == bytearray(len(read[0]))
    assert [len(p) for p in seen[0]] == [len(keyring_password), len("old password")]
    assert all(p == bytearray(len(p)) for p in seen[0])


def test_health_reports_a_broken_key() -> None:
    class Broken(LocalKms):
        def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
            raise KmsCorrupt("local", "default", "tag mismatch")

    status = Broken("default", LocalKms._from_keks("default", {1: os.urandom(32)})._keks).health()
    assert not status.healthy
    assert status.detail == "tag mismatch"

    class Wrong(LocalKms):
        def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
            return bytearray(32)

    status = Wrong("default", LocalKms._from_keks("default", {1: os.urandom(32)})._keks).health()
    assert not status.healthy
    assert "different key" in status.detail


def test_base_rewrap_does_not_skip_another_keys_wrap() -> None:
    mine = LocalKms._from_keks("default", {1: os.urandom(32)})
    theirs = LocalKms._from_keks("other", {1: os.urandom(32)}).wrap(os.urandom(32), CONTEXT)
    with pytest.raises(KmsCorrupt, match="wrapped by local key 'other'"):
        rewrap(mine, theirs, CONTEXT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 60_000, "not valid JSON"),
        ('{"kind": "secure-keys/local-keyring"' + " " * 70_000 + "}", "larger than"),
    ],
)
def test_hostile_keyring_text_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalKeyring.from_json(text)
