"""Runs the core end to end on the embedded default, the local KMS, and narrates it.

``make demo`` (or ``python -m secure_keys.demo``): creates a password-derived local
keyring in a scratch directory, seals a freshly minted API key for an ApiKey version,
opens it, rotates the KEK and rewraps the data key without touching the ciphertext, and
shows a tampered envelope and a replay onto another ApiKey being refused. It prints
fingerprints and sizes only, never key material. The local control plane joins this demo
when the controller lands; until then it exercises the core alone.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import tempfile
import time
from pathlib import Path

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.hierarchy import DEFAULT_ITERATIONS, KeyHierarchy
from secure_keys.core.kms.local import LocalKeyring, LocalKms
from secure_keys.core.kms.registry import KmsConfig, default_registry
from secure_keys.core.memory import random_secret, zero


def _say(step: str, detail: str) -> None:
    print(f"{step:<28} {detail}")


def run(workdir: Path, iterations: int) -> int:
    password = secrets.token_urlsafe(24)
    (workdir / "password").write_text(password + "\n")
    (workdir / "password").chmod(0o600)

    start = time.perf_counter()
    keyring = LocalKeyring.create("demo", password, iterations=iterations)
    (workdir / "keyring.json").write_text(keyring.to_json())
    _say(
        "keyring created",
        f"{workdir / 'keyring.json'} (PBKDF2 x{iterations}, "
        f"{(time.perf_counter() - start) * 1e3:.0f} ms)",
    )

    options = {
        "keyringPath": str(workdir / "keyring.json"),
        "passwordFile": str(workdir / "password"),
    }
    kms = default_registry().create(KmsConfig("local", "demo", options))
    hierarchy = KeyHierarchy.derive(password, keyring.newest.kdf)
    health = kms.health()
    _say(
        "local KMS unlocked",
        f"key {kms.key_id} version {kms.key_version()}, healthy={health.healthy}",
    )

    binding = KeyBinding("default", "github-token", 1)
    entropy = random_secret(20)
    # A demo token; base32 makes one short-lived immutable copy (docs/memory.md).
    api_key = bytearray(b"ghp_") + bytearray(base64.b32encode(entropy).lower())
    zero(entropy)
    try:
        print_fp = fingerprint(hierarchy.integrity_key, api_key)
        sealed = envelope.seal(api_key, binding, kms)
        blob = sealed.to_bytes()
        _say("sealed", f"{binding} -> {len(blob)}-byte envelope, fingerprint {print_fp}")

        with envelope.opened(blob, binding, kms) as plaintext:
            same = fingerprint(hierarchy.integrity_key, plaintext) == print_fp
        _say("opened", f"plaintext matches the sealed key: {same}")

        rotated = keyring.with_new_version(password, iterations=iterations)
        (workdir / "keyring.json").write_text(rotated.to_json())
        kms2 = LocalKms.unlock(rotated, [password])
        moved = envelope.rewrap(sealed, binding, kms2)
        unchanged = moved.ciphertext == sealed.ciphertext
        _say(
            "KEK rotated and rewrapped",
            f"KEK version {sealed.wrapped.key_version} -> {moved.wrapped.key_version}, "
            f"ciphertext unchanged: {unchanged}",
        )
        with envelope.opened(moved.to_bytes(), binding, kms2) as plaintext:
            same = fingerprint(hierarchy.integrity_key, plaintext) == print_fp
        _say("opened after rewrap", f"plaintext matches: {same}")

        tampered = bytearray(moved.to_bytes())
        tampered[-1] ^= 0x01
        for label, data, target in (
            ("tampered envelope", bytes(tampered), binding),
            ("replay onto another key", moved.to_bytes(), KeyBinding("default", "other", 1)),
        ):
            try:
                envelope.open(data, target, kms2)
            except InvalidEnvelope as exc:
                _say(f"{label} refused", str(exc))
            else:  # pragma: no cover - would be a security bug
                print(f"{label} OPENED: this is a bug", file=sys.stderr)
                return 1
    finally:
        zero(api_key)
        hierarchy.wipe()
    return 0 if same and unchanged and health.healthy else 1


def main() -> None:
    parser = argparse.ArgumentParser(description="secure-keys core demo on the local KMS")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="secure-keys-demo-") as workdir:
        sys.exit(run(Path(workdir), args.iterations))


if __name__ == "__main__":
    main()
