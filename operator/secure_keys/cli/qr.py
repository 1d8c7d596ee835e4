"""Owns the terminal QR code of ``secure-keys mfa enroll`` (``segno``, the ``totp`` extra).

Optional: without segno the URI alone is printed, with a hint on stderr.
"""

from __future__ import annotations

import sys


def print_qr(text: str) -> None:
    """Draw ``text`` as a QR code on stdout (compact, for a terminal)."""
    try:
        import segno
    except ImportError:
        print("(install secure-keys[totp] for a QR code)", file=sys.stderr)
        return
    segno.make(text, error="m").terminal(compact=True)
