"""``secure-keys pkcs11``: create, rotate, disable and enable a KEK in a PKCS#11 token.

An administrator's command, not the provider's: it parses the arguments and prints the
result, while what it does to the token (``generate_key_version``, ``set_key_enabled``)
is the provider's own code in ``secure_keys.core.kms.pkcs11``, so a key it makes is one
the provider accepts. python-pkcs11 (the ``pkcs11`` extra) is imported only when the
command runs. The PIN is read from a file, never from the arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from secure_keys.core.errors import KmsDenied, KmsUnavailable

COMMANDS = ("generate-key", "disable-key", "enable-key")


def add_parser(commands: Any) -> None:
    """Add the ``pkcs11`` sub-command to ``secure-keys``' sub-parsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "pkcs11",
        help="manage secure-keys KEKs in a PKCS#11 token (the PIN is read from a file)",
        description="generate-key makes the next KEK version (a new key, or a rotation) and "
        "prints its number; disable-key and enable-key set CKA_ENCRYPT/CKA_DECRYPT on every "
        "version and print the versions changed.",
    )
    parser.add_argument("action", choices=COMMANDS)
    parser.add_argument("--library", required=True, help="path of the PKCS#11 module (.so)")
    parser.add_argument("--token", required=True, help="token label")
    parser.add_argument("--label", required=True, help="KEK label (the provider's key id)")
    parser.add_argument("--pin-file", required=True, help="file holding the user PIN")


def run(args: argparse.Namespace) -> int:
    """Do ``args.action``; the result goes to stdout, log lines to stderr."""
    from secure_keys.core import logs  # structlog: off every other command's start-up path
    from secure_keys.core.kms.pkcs11 import (
        Pkcs11Options,
        generate_key_version,
        set_key_enabled,
    )

    logs.configure()  # to stderr: stdout carries only the result
    options = Pkcs11Options.parse(
        args.label, {"library": args.library, "tokenLabel": args.token, "pinFile": args.pin_file}
    )
    try:
        if args.action == "generate-key":
            print(generate_key_version(options))
        else:
            versions = set_key_enabled(options, args.action == "enable-key")
            print(" ".join(map(str, versions)))
    except (KmsUnavailable, KmsDenied) as exc:
        print(f"secure-keys: error: {exc}", file=sys.stderr)
        return 1
    return 0
