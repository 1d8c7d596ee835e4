"""Tests of the sidecar's tmpfs writer (``secure_keys_sidecar.files``).

Each layout test runs twice: on a real tmpfs (``/dev/shm``, what an ``emptyDir`` with
``medium: Memory`` is) and on an ordinary directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from secure_keys_sidecar.files import (
    DATA_LINK,
    FileLayoutError,
    KeyDirectory,
    KeyUpdate,
    MissingMaterial,
    VersionUpdate,
    check_file_name,
    render,
)

FP1 = "hs256:" + "11" * 16
FP2 = "hs256:" + "22" * 16
FP3 = "hs256:" + "33" * 16
LEASE = datetime(2030, 1, 1, tzinfo=UTC)
GRACE = datetime(2029, 6, 1, tzinfo=UTC)


@pytest.fixture(params=["tmpfs", "disk"])
def keys_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "tmpfs":
        if not os.path.isdir("/dev/shm"):  # noqa: S108 - the tmpfs is the point
            pytest.skip("no /dev/shm on this machine")
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
            yield Path(shm) / "keys"
    else:
        yield tmp_path / "keys"


def _update(
    current: tuple[int, str, bytes | None] | None,
    previous: tuple[int, str, bytes | None] | None = None,
    *,
    apikey: str = "stripe-live",
    file_name: str = "stripe-live",
    fmt: str = "raw",
    mode: str = "0400",
    env_name: str | None = None,
) -> KeyUpdate:
    def version(spec: tuple[int, str, bytes | None] | None, expires: datetime | None):  # type: ignore[no-untyped-def]
        if spec is None:
            return None
        number, fingerprint, plaintext = spec
        material = None if plaintext is None else bytearray(plaintext)
        return VersionUpdate(number, fingerprint, expires, material)

    return KeyUpdate(
        apikey=apikey,
        file_name=file_name,
        format=fmt,  # type: ignore[arg-type]
        env_name=env_name,
        mode=mode,  # type: ignore[arg-type]
        current=version(current, None),
        previous=version(previous, GRACE),
        lease_expires_at=LEASE,
    )


def _stamps(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("..2"))


def test_first_delivery_lays_out_files_like_the_kubelet(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    assert writer.apply([_update((1, FP1, b"sk_live_one"))]) is True

    data = os.readlink(keys_dir / DATA_LINK)
    assert _stamps(keys_dir) == [data]
    assert os.readlink(keys_dir / "stripe-live") == "..data/stripe-live"
    assert os.readlink(keys_dir / "stripe-live.meta.json") == "..data/stripe-live.meta.json"
    assert not (keys_dir / "stripe-live.previous").exists()
    assert (keys_dir / "stripe-live").read_bytes() == b"sk_live_one"
    assert stat.S_IMODE(os.stat(keys_dir / "stripe-live").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(keys_dir / "stripe-live.meta.json").st_mode) == 0o444
    meta = json.loads((keys_dir / "stripe-live.meta.json").read_text())
    assert meta["version"] == 1
    assert meta["fingerprint"] == FP1
    assert meta["previousVersion"] is None
    assert meta["leaseExpiresAt"] == "2030-01-01T00:00:00Z"
    assert "sk_live" not in json.dumps(meta)


def test_rotation_keeps_the_old_version_as_previous_without_resending_it(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    writer.apply([_update((1, FP1, b"first"), mode="0440")])
    first_dir = os.readlink(keys_dir / DATA_LINK)

    # v1 comes back as previous without material: it must be linked from the old set.
    writer.apply([_update((2, FP2, b"second"), (1, FP1, None), mode="0440")])
    assert (keys_dir / "stripe-live").read_bytes() == b"second"
    assert (keys_dir / "stripe-live.previous").read_bytes() == b"first"
    assert stat.S_IMODE(os.stat(keys_dir / "stripe-live.previous").st_mode) == 0o440
    meta = json.loads((keys_dir / "stripe-live.meta.json").read_text())
    assert (meta["version"], meta["previousVersion"]) == (2, 1)
    assert meta["previousExpiresAt"] == "2029-06-01T00:00:00Z"
    assert _stamps(keys_dir) == [os.readlink(keys_dir / DATA_LINK)]
    assert first_dir not in _stamps(keys_dir)

    # Grace over: .previous disappears, current stays.
    writer.apply([_update((2, FP2, None), mode="0440")])
    assert not os.path.lexists(keys_dir / "stripe-live.previous")
    assert (keys_dir / "stripe-live").read_bytes() == b"second"


def test_revocation_removes_every_file_of_the_key_only(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    writer.apply(
        [
            _update((1, FP1, b"a-key")),
            _update((4, FP3, b"b-key"), apikey="billing", file_name="billing.key"),
        ]
    )
    writer.apply([], removed=["stripe-live"])
    assert sorted(p.name for p in keys_dir.iterdir() if not p.name.startswith("..")) == [
        "billing.key",
        "billing.key.meta.json",
    ]
    assert (keys_dir / "billing.key").read_bytes() == b"b-key"
    assert writer.remove_all() is True
    assert [p.name for p in keys_dir.iterdir() if not p.name.startswith("..")] == []
    assert list(Path(os.path.realpath(keys_dir / DATA_LINK)).iterdir()) == []


def test_plaintext_buffers_are_zeroed_after_writing_and_after_failure(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    update = _update((1, FP1, b"sk_live_secret"))
    assert update.current is not None
    assert update.current.plaintext is not None
    buffer = update.current.plaintext
    writer.apply([update])
    assert buffer == bytearray(len(buffer))

    failing = _update((3, FP3, b"another-secret"), (2, FP2, None))  # v2 is not on disk
    assert failing.current is not None
    assert failing.current.plaintext is not None
    buffer = failing.current.plaintext
    with pytest.raises(MissingMaterial):
        writer.apply([failing])
    assert buffer == bytearray(len(buffer))


def test_a_refused_update_changes_nothing_visible(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    writer.apply([_update((1, FP1, b"first"))])
    before = os.readlink(keys_dir / DATA_LINK)
    with pytest.raises(MissingMaterial):
        writer.apply([_update((3, FP3, b"third"), (2, FP2, None))])
    assert os.readlink(keys_dir / DATA_LINK) == before
    assert _stamps(keys_dir) == [before]
    assert (keys_dir / "stripe-live").read_bytes() == b"first"
    assert writer.held["stripe-live"].current is not None
    assert writer.held["stripe-live"].current.version == 1


def test_a_changed_format_is_not_satisfied_by_a_file_in_the_old_format(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    writer.apply([_update((1, FP1, b"first"))])
    with pytest.raises(MissingMaterial):
        writer.apply([_update((1, FP1, None), fmt="env")])


@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "a/b",
        "/etc/passwd",
        ".hidden",
        "..data",
        "x..y",
        "key.previous",
        "key.meta.json",
        "",
        "a" * 129,
        "new\nline",
    ],
)
def test_traversal_and_reserved_names_are_refused(keys_dir: Path, name: str) -> None:
    writer = KeyDirectory(keys_dir)
    with pytest.raises(FileLayoutError):
        check_file_name(name)
    with pytest.raises(FileLayoutError):
        writer.apply([_update((1, FP1, b"secret"), file_name=name)])
    outside = keys_dir.parent
    assert not (outside / "escape").exists()
    assert not keys_dir.exists() or _stamps(keys_dir) == []


def test_two_keys_cannot_share_a_file_name(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir)
    with pytest.raises(FileLayoutError):
        writer.apply(
            [_update((1, FP1, b"a")), _update((1, FP2, b"b"), apikey="other")],
        )


def test_a_restarted_sidecar_adopts_what_is_on_disk(keys_dir: Path) -> None:
    KeyDirectory(keys_dir).apply([_update((2, FP2, b"second"), (1, FP1, b"first"), fmt="env")])
    (keys_dir / "..2020_01_01_00_00_00.deadbeef").mkdir()  # an interrupted update's leftover

    restarted = KeyDirectory(keys_dir)
    held = restarted.load()["stripe-live"]
    assert held.current is not None
    assert held.current.version == 2
    assert held.previous is not None
    assert held.previous.version == 1
    assert held.format == "env"
    assert len(_stamps(keys_dir)) == 1
    # It can rotate using the files it adopted.
    restarted.apply([_update((3, FP3, b"third"), (2, FP2, None), fmt="env")])
    assert (keys_dir / "stripe-live.previous").read_bytes() == b"STRIPE_LIVE=second\n"


def test_render_raw_env_and_json() -> None:
    def rendered(fmt: str, value: bytes, env: str | None = None) -> bytes:
        return bytes(render(fmt, bytearray(value), apikey="stripe-live", env_name=env, version=7))  # type: ignore[arg-type]

    assert rendered("raw", b"\x00\xffbinary") == b"\x00\xffbinary"
    assert rendered("env", b"sk_live_abc") == b"STRIPE_LIVE=sk_live_abc\n"
    assert rendered("env", b"sk live", "STRIPE_KEY") == b"STRIPE_KEY='sk live'\n"
    assert rendered("env", b"it's") == b"STRIPE_LIVE='it'\\''s'\n"
    out = subprocess.run(
        ["/bin/sh", "-c", '. "$0"; printf %s "$STRIPE_LIVE"', "/dev/stdin"],
        input=rendered("env", b"a'b $HOME `x` \\"),
        capture_output=True,
        check=True,
    )
    assert out.stdout == b"a'b $HOME `x` \\"
    document = json.loads(rendered("json", 'q"\\\n\x7fé'.encode()))
    assert document == {"apiKey": "stripe-live", "version": 7, "value": 'q"\\\n\x7fé'}
    for bad in (b"a\nb", b"a\x00b"):
        with pytest.raises(FileLayoutError):
            rendered("env", bad)
    for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\x80"):
        with pytest.raises(FileLayoutError):
            rendered("json", bad)


READER = textwrap.dedent(
    """
    import json, os, sys, time
    root, size = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + float(sys.argv[3])
    reads = bad = 0
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(root, "big.bin"), "rb") as f:
                content = f.read()
            data = os.path.realpath(os.path.join(root, "..data"))
            with open(os.path.join(data, "big.bin"), "rb") as f:
                pinned = f.read()
            with open(os.path.join(data, "big.bin.meta.json"), "rb") as f:
                meta = json.load(f)
        except FileNotFoundError:
            continue  # the set was swapped between realpath and open: retry, as apps do
        except ValueError:  # a half-written meta file
            bad += 1
            continue
        reads += 1
        for blob in (content, pinned):
            if len(blob) != size or blob.count(blob[:1]) != size:
                bad += 1
        if not pinned or pinned[0] != meta["version"] % 256:
            bad += 1
    print(reads, bad)
    """
)


def test_a_concurrent_reader_never_sees_a_partial_or_mixed_set(keys_dir: Path) -> None:
    size = 256 * 1024
    writer = KeyDirectory(keys_dir)
    writer.apply([_update((1, FP1, bytes([1]) * size), apikey="big", file_name="big.bin")])
    reader = subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", READER, str(keys_dir), str(size), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    version = 1
    while reader.poll() is None:
        version += 1
        writer.apply(
            [
                _update(
                    (version, FP2, bytes([version % 256]) * size),
                    (version - 1, FP1, None),
                    apikey="big",
                    file_name="big.bin",
                )
            ]
        )
    out, _ = reader.communicate()
    reads, bad = (int(n) for n in out.split())
    assert version > 50, "too few swaps to mean anything"
    assert reads > 50
    assert bad == 0
    assert len(_stamps(keys_dir)) == 1


def test_unchanged_state_does_not_swap(keys_dir: Path) -> None:
    writer = KeyDirectory(keys_dir, now=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    writer.apply([_update((1, FP1, b"first"))])
    before = os.readlink(keys_dir / DATA_LINK)
    assert writer.apply([_update((1, FP1, None))]) is False
    assert os.readlink(keys_dir / DATA_LINK) == before
    assert before.startswith("..2026_01_01_00_00_00.")
