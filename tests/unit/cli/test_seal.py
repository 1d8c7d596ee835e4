"""`secure-keys seal`: reading the plaintext, and the manifest it prints."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
import yaml

from secure_keys.cli.seal import SealError, read_plaintext, seal_command
from secure_keys.core.envelope import MAX_PLAINTEXT_SIZE
from secure_keys.core.sealing import RecipientPrivateKey, open_sealed
from tests.conftest import CANARY


@pytest.mark.parametrize(
    ("data", "keep", "expected"),
    [
        (b"key\n", False, b"key"),
        (b"key\r\n", False, b"key"),
        (b"key\n", True, b"key\n"),
        (b"key\n\n", False, b"key\n"),
        (b"key", False, b"key"),
    ],
)
def test_one_trailing_newline_is_stripped(data: bytes, keep: bool, expected: bytes) -> None:
    assert read_plaintext(io.BytesIO(data), None, keep_newline=keep) == expected


def test_the_limit_is_exact_and_nothing_is_truncated() -> None:
    exact = b"a" * MAX_PLAINTEXT_SIZE
    assert len(read_plaintext(io.BytesIO(exact + b"\r\n"), None, keep_newline=False)) == len(exact)
    for extra in (b"a", b"\r\nmore", b"a" * 5000):
        with pytest.raises(SealError, match="larger than"):
            read_plaintext(io.BytesIO(exact + extra), None, keep_newline=False)


def test_empty_input_is_refused() -> None:
    for data in (b"", b"\n"):
        with pytest.raises(SealError, match="empty"):
            read_plaintext(io.BytesIO(data), None, keep_newline=False)


def test_from_file_reads_a_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as handle:
            handle.write(b"piped-key\n")

    thread = threading.Thread(target=writer)
    thread.start()
    assert read_plaintext(None, fifo, keep_newline=False) == b"piped-key"
    thread.join()


def test_manifest_carries_no_plaintext_and_opens_for_its_name() -> None:
    private = RecipientPrivateKey.generate()
    text = seal_command(
        name="api",
        namespace="team",
        recipient=private.public(),
        plaintext=bytearray(CANARY.encode()),
        extra_spec={"rotation": {"interval": "720h"}},
    )
    assert CANARY not in text
    manifest = yaml.safe_load(text)
    assert manifest["metadata"] == {"name": "api", "namespace": "team"}
    sealed = manifest["spec"]["source"]["sealed"]
    assert sealed["recipient"] == private.public().key_id
    opened = open_sealed(private, sealed["ciphertext"], namespace="team", name="api")
    assert opened == CANARY.encode()
