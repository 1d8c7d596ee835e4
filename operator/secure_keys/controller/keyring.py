"""``python -m secure_keys.controller.keyring``: the local keyring derived from kept inputs.

The Helm chart, when the user brings no keyring of their own, keeps a password, a salt
and a creation date in a Secret (made once, never deleted by Helm) and runs this in an
init container of the controller and of the gateway: it writes the keyring
(``LocalKeyring.from_params``, PBKDF2 with the default iterations) where the KMS
configuration's ``keyringPath`` points. The same Secret always gives the same keyring,
so every replica, and every reinstall that finds the Secret, opens the same keys. The
keyring is not secret; the password is read into a buffer that is zeroed, and appears
in no message. Adding KEK versions (rotating the local KEK) needs a keyring of one's own
(``kms.local.existingSecret``).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

from secure_keys.core.hierarchy import DEFAULT_ITERATIONS, KdfParams
from secure_keys.core.kms.local import LocalKeyring
from secure_keys.core.memory import read_secret_file, zero


def derive(
    key_id: str, password_file: Path, salt_file: Path, created_file: Path, iterations: int
) -> LocalKeyring:
    """The keyring the files describe; ValueError names the file that is wrong."""
    try:
        salt = base64.b64decode(salt_file.read_text().strip(), validate=True)
    except ValueError:
        raise ValueError(f"{salt_file}: not base64") from None
    created = created_file.read_text().strip()
    if not created:
        raise ValueError(f"{created_file}: empty")
    raw = read_secret_file(password_file)
    try:
        password = bytearray(raw.split(b"\n", 1)[0])  # the newest KEK's line
        if not password:
            raise ValueError(f"{password_file}: empty")
        try:
            return LocalKeyring.from_params(key_id, password, KdfParams(iterations, salt), created)
        finally:
            zero(password)
    finally:
        zero(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secure_keys.controller.keyring")
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--salt-file", type=Path, required=True, help="the salt, base64")
    parser.add_argument("--created-file", type=Path, required=True, help="an RFC 3339 date")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        keyring = derive(
            args.key_id, args.password_file, args.salt_file, args.created_file, args.iterations
        )
    except (OSError, ValueError) as exc:
        print(f"keyring: error: {exc}", file=sys.stderr)
        return 2
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(keyring.to_json())
    os.replace(tmp, args.out)
    print(f"keyring: wrote {args.out} (key {keyring.key_id})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
