"""``python -m secure_keys.controller.keyring``: the local keyring the chart's pods derive.

Specified: the same kept inputs always give the same keyring (so every replica and every
reinstall opens the same keys), it opens with the password, another salt gives another
KEK, and bad inputs fail naming the file, never the password.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from secure_keys.controller.keyring import derive, main
from secure_keys.core.binding import WrapContext
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.kms.local import LocalKeyring, LocalKms

PASSWORD = "correct-horse-battery-staple-canary"


def inputs(directory: Path, salt: bytes = b"s" * 32) -> tuple[Path, Path, Path]:
    password, salt_file, created = (directory / n for n in ("password", "salt", "created"))
    password.write_text(PASSWORD)
    salt_file.write_text(base64.b64encode(salt).decode())
    created.write_text("2026-12-07T02:00:00Z")
    return password, salt_file, created


def test_the_same_inputs_give_the_same_keyring_and_it_opens(tmp_path: Path) -> None:
    files = inputs(tmp_path)
    first = derive("default", *files, MIN_ITERATIONS)
    second = derive("default", *files, MIN_ITERATIONS)
    assert first.to_json() == second.to_json()
    kms = LocalKms.unlock(first, [PASSWORD])
    context = WrapContext(pairs=(("securekeys.io/name", "b"),))
    wrapped = kms.wrap(b"k" * 32, context)
    assert LocalKms.unlock(second, [PASSWORD]).unwrap(wrapped, context) == b"k" * 32


def test_another_salt_gives_another_keyring(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    one = derive("default", *inputs(tmp_path), MIN_ITERATIONS)
    two = derive("default", *inputs(tmp_path / "b", b"t" * 32), MIN_ITERATIONS)
    assert one.newest.verifier != two.newest.verifier


def test_a_bad_salt_names_the_file_not_the_password(tmp_path: Path) -> None:
    password, salt, created = inputs(tmp_path)
    salt.write_text("not base64!")
    with pytest.raises(ValueError, match="salt") as caught:
        derive("default", password, salt, created, MIN_ITERATIONS)
    assert PASSWORD not in str(caught.value)


def test_main_writes_the_keyring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password, salt, created = inputs(tmp_path)
    out = tmp_path / "keyring.json"
    argv = [
        "--key-id=default",
        f"--password-file={password}",
        f"--salt-file={salt}",
        f"--created-file={created}",
        f"--iterations={MIN_ITERATIONS}",
        f"--out={out}",
    ]
    assert main(argv) == 0
    assert LocalKeyring.from_json(out.read_text()).key_id == "default"
    assert PASSWORD not in capsys.readouterr().err
    password.write_text("")
    assert main(argv) == 2
