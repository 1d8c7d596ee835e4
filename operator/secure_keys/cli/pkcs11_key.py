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

from secure_keys.core.errors import KmsDenied, KmsUnavailable


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
