"""Plaintext stays out of the store's files, logs and errors; TOTP; KeyManager."""

from __future__ import annotations

import base64
from pathlib import Path

import pyotp
import pytest
from structlog.testing import capture_logs

import secure_keys
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.store import AuthenticationFailed, KeyManager, LocalStore, StoreError
from secure_keys.store.errors import MfaRequired, TooManyAttempts
from tests.conftest import CANARY
from tests.unit.store.conftest import PASSWORD, Clock


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), secret.encode("utf-16-le")]


def _all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


def test_the_canary_never_reaches_the_files_logs_or_errors(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    with capture_logs() as logs:
        store.add("canary", CANARY.encode())
        store.rotate("canary", (CANARY + "-2").encode())
        assert store.get("canary") == (CANARY + "-2").encode()
        for wrong in ("Nope", "bad name", "x" * 300, "canary"):
            with pytest.raises(StoreError) as caught:
                store.add(wrong, CANARY.encode())
            assert CANARY not in str(caught.value)
        store.change_password(PASSWORD, CANARY, iterations=MIN_ITERATIONS)  # as a password too
        with pytest.raises(AuthenticationFailed) as refused:
            LocalStore.open(store_dir, password=CANARY + "?")
        assert CANARY not in str(refused.value)
    # While the store is still open (the WAL not yet checkpointed) and after closing it.
    for moment in ("open", "closed"):
        data = _all_bytes(store_dir)
        assert len(data) > 10_000
        for form in _forms(CANARY):
            assert form not in data, (moment, form[:8])
        store.close()
    assert CANARY not in repr(logs)
    assert CANARY not in repr(store)


def test_totp_is_asked_for_checked_and_not_replayed(store_dir: Path, clock: Clock) -> None:
    secret = pyotp.random_base32(32)
    LocalStore.init(
        store_dir, password=PASSWORD, iterations=MIN_ITERATIONS, totp_secret=secret, clock=clock
    ).close()
    code = pyotp.TOTP(secret).at(clock.now)
    with pytest.raises(MfaRequired):
        LocalStore.open(store_dir, password=PASSWORD, clock=clock)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    with pytest.raises(AuthenticationFailed, match="TOTP"):
        LocalStore.open(store_dir, password=PASSWORD, mfa_token=wrong, clock=clock)
    with LocalStore.open(store_dir, password=PASSWORD, mfa_token=code, clock=clock) as opened:
        opened.add("k", b"v")
    with pytest.raises(AuthenticationFailed, match="already used"):
        LocalStore.open(store_dir, password=PASSWORD, mfa_token=code, clock=clock)
    clock.advance(seconds=30)
    later = pyotp.TOTP(secret).at(clock.now)
    with LocalStore.open(store_dir, password=PASSWORD, mfa_token=later, clock=clock) as opened:
        assert opened.get("k") == b"v"
    # The TOTP secret is sealed like a key value: not in any file as it was given.
    assert secret.encode() not in _all_bytes(store_dir)


def test_wrong_totp_codes_are_throttled_like_wrong_passwords(store_dir: Path, clock: Clock) -> None:
    secret = pyotp.random_base32(32)
    LocalStore.init(
        store_dir, password=PASSWORD, iterations=MIN_ITERATIONS, totp_secret=secret, clock=clock
    ).close()
    code = pyotp.TOTP(secret).at(clock.now)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(3):  # the right password, a wrong code: still a failure
        with pytest.raises(AuthenticationFailed, match="TOTP"):
            LocalStore.open(store_dir, password=PASSWORD, mfa_token=wrong, clock=clock)
    with pytest.raises(TooManyAttempts):
        LocalStore.open(store_dir, password=PASSWORD, mfa_token=code, clock=clock)
    clock.advance(seconds=1)
    LocalStore.open(store_dir, password=PASSWORD, mfa_token=code, clock=clock).close()


def test_key_manager_authenticates_and_hands_out_zeroable_values(
    store: LocalStore, store_dir: Path
) -> None:
    store.add("github-token", b"ghp_x")
    with KeyManager(store="local", path=store_dir) as km:
        with pytest.raises(StoreError, match="authenticate"):
            km.get_key("github-token")
        with pytest.raises(AuthenticationFailed):
            km.authenticate(password="wrong")
        km.authenticate(password=PASSWORD)
        with km.key("github-token") as value:
            assert value == b"ghp_x"
        assert value == bytearray(5)
        assert km.rotate_key("github-token", b"ghp_y") == 2
        assert km.get_key("github-token", previous=True) == b"ghp_x"
        assert [k.name for k in km.list_keys()] == ["github-token"]


def test_key_manager_is_importable_as_the_design_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_keys.cli.manager import KeyManager as PublicKeyManager

    assert secure_keys.KeyManager is PublicKeyManager
    with pytest.raises(NotImplementedError, match=r"secure_keys\.KeyManager\(store='cluster'\)"):
        KeyManager(store="cluster")
    with pytest.raises(ValueError, match="unknown store"):
        KeyManager(store="elsewhere")  # type: ignore[arg-type]


def test_key_manager_defaults_to_the_xdg_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    LocalStore.init(tmp_path / "secure-keys", password=PASSWORD, iterations=MIN_ITERATIONS).close()
    km = KeyManager()
    km.authenticate(password=PASSWORD, mfa_token=None)
    assert km.list_keys() == []
    km.close()


def test_values_are_bounded(store: LocalStore) -> None:
    with pytest.raises(StoreError, match="1 to 65536 bytes"):
        store.add("k", b"")
    with pytest.raises(StoreError, match="1 to 65536 bytes"):
        store.add("k", b"x" * 65537)
