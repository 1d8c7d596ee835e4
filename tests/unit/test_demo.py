"""The demo behind `make demo` runs end to end and prints no key material."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_keys import demo
from secure_keys.core.hierarchy import MIN_ITERATIONS


def test_demo_succeeds_and_keeps_secrets_out_of_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.run(tmp_path, MIN_ITERATIONS) == 0
    out = capsys.readouterr().out
    assert "plaintext matches the sealed key: True" in out
    assert "ciphertext unchanged: True" in out
    assert "tampered envelope refused" in out
    assert "replay onto another key refused" in out
    password = (tmp_path / "password").read_text().strip()
    assert password not in out
    assert "ghp_" not in out
