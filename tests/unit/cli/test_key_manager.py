"""``secure_keys.KeyManager`` in a pod: it reads the files the sidecar writes (made here by
the sidecar's own ``render`` and ``meta_document``), follows a rotation, and refuses a
key whose lease is over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import secure_keys
from secure_keys.cli.manager import KeyManager, KeyUnavailable
from secure_keys_sidecar.files import HeldKey, HeldVersion, meta_document, render


def _write(
    directory: Path,
    name: str,
    value: bytes,
    *,
    fmt: str = "raw",
    version: int = 1,
    lease: timedelta = timedelta(hours=1),
) -> None:
    now = datetime.now(UTC)
    held = HeldKey(
        apikey=name,
        file_name=name,
        format=fmt,  # type: ignore[arg-type]
        env_name="API_KEY" if fmt == "env" else None,
        mode="0400",
        current=HeldVersion(version, f"fp{version}"),
        previous=None,
        lease_expires_at=now + lease,
    )
    content = render(
        held.format, bytearray(value), apikey=name, env_name=held.env_name, version=version
    )
    (directory / name).write_bytes(bytes(content))
    (directory / f"{name}.meta.json").write_bytes(meta_document(held, now))


@pytest.mark.parametrize("fmt", ["raw", "env", "json"])
def test_a_pod_reads_its_injected_key_in_any_format(tmp_path: Path, fmt: str) -> None:
    _write(tmp_path, "stripe", b"sk it's-live", fmt=fmt)
    km = KeyManager("pod", path=tmp_path)
    with km.key("stripe") as value:
        assert value == b"sk it's-live"
    assert value == bytearray(len(value))  # zeroed when the block ended


def test_auto_picks_the_pod_and_a_rotation_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREKEYS_DIR", str(tmp_path))
    _write(tmp_path, "stripe", b"v1-value")
    km = secure_keys.KeyManager()
    assert km.store == "pod"
    assert km.get_key("stripe") == b"v1-value"
    _write(tmp_path, "stripe", b"v2-value", version=2)
    assert km.get_key("stripe") == b"v2-value"
    assert km.list_keys() == ["stripe"]


def test_a_key_whose_lease_is_over_or_absent_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "stripe", b"v1-value", lease=timedelta(seconds=-1))
    km = KeyManager("pod", path=tmp_path)
    with pytest.raises(KeyUnavailable, match="lease"):
        km.get_key("stripe")
    with pytest.raises(KeyUnavailable, match="no key 'github'"):
        km.get_key("github")
    _write(tmp_path, "stripe", b"v1-value")
    with pytest.raises(KeyUnavailable, match="no previous version"):
        km.get_key("stripe", previous=True)
