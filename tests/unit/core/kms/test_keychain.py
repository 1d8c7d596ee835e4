"""The ``keychain`` provider: a KEK in the OS keychain, through the ``keyring`` library.

No OS keychain runs on this machine (a headless Linux: no Secret Service on a session
bus), so the wrap/unwrap/rotation tests install an in-memory ``keyring`` backend: the
one stand-in here, for a component nothing local can provide. The headless behaviour is
tested with the backend ``keyring`` itself picks when it finds none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import pytest

from secure_keys.core.binding import KeyBinding
from secure_keys.core.envelope import open as open_envelope
from secure_keys.core.envelope import rewrap, seal
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsUnavailable
from secure_keys.core.kms import keychain
from secure_keys.core.kms.registry import KmsConfig, default_registry
from secure_keys.store import LocalStore, StoreError
from tests.conftest import CANARY


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.entries[(service, username)]


@pytest.fixture
def memory() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def test_wraps_unwraps_and_survives_a_kek_rotation(memory: MemoryKeyring) -> None:
    kms = default_registry().create(KmsConfig("keychain", "laptop", {"create": "true"}))
    binding = KeyBinding("team", "api", 1)
    sealed = seal(CANARY.encode(), binding, kms)
    assert sealed.wrapped.key_version == "1"
    assert set(memory.entries) == {("secure-keys", "laptop"), ("secure-keys", "laptop@1")}
    assert keychain.rotate_kek("laptop") == 2
    rotated = keychain.from_config("laptop", {})
    assert rotated.key_version() == "2"
    assert open_envelope(sealed, binding, rotated) == CANARY.encode()
    moved = rewrap(sealed, binding, rotated)
    assert moved.wrapped.key_version == "2"
    assert moved.ciphertext == sealed.ciphertext
    assert open_envelope(moved, binding, rotated) == CANARY.encode()
    assert rotated.health().healthy


def test_a_missing_or_damaged_keychain_entry_is_refused(memory: MemoryKeyring) -> None:
    with pytest.raises(KmsDenied, match="no key"):
        keychain.from_config("absent", {})
    kms = keychain.from_config("laptop", {"create": "true"})
    binding = KeyBinding("team", "api", 1)
    sealed = seal(b"v", binding, kms)
    memory.entries[("secure-keys", "laptop@1")] = "not base64!"
    with pytest.raises(KmsCorrupt):
        keychain.from_config("laptop", {}).unwrap(sealed.wrapped, binding.wrap_context(1))


def test_headless_linux_without_a_keychain_refuses_clearly() -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    try:
        with pytest.raises(KmsUnavailable, match=r"no OS keychain.*Secret Service.*'local'"):
            keychain.from_config("laptop", {"create": "true"})
    finally:
        keyring.set_keyring(previous)


def test_a_local_store_on_the_keychain_needs_no_password(
    memory: MemoryKeyring, tmp_path: Path
) -> None:
    directory = tmp_path / "store"
    LocalStore.init(
        directory, kms_provider="keychain", kms_key_id="dev", kms_options={"create": "true"}
    ).close()
    with LocalStore.open(directory) as store:
        store.add("k", CANARY.encode())
        keychain.rotate_kek("dev")
    with LocalStore.open(directory) as store:
        assert store.rewrap() == 1
        assert store.get("k") == CANARY.encode()
        assert {v.kms_key_version for v in store.list_keys()[0].versions} == {"2"}
    assert CANARY not in repr(memory.entries)
    keyring.set_keyring(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]
    with pytest.raises(StoreError, match="no OS keychain"):
        LocalStore.open(directory)
