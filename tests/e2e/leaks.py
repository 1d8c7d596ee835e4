"""Searching output for a canary in every encoding it could leak in."""

from __future__ import annotations

import base64


def canary_forms(secret: str) -> list[bytes]:
    """The canary raw, hex, and base64 at every alignment inside a longer base64 string."""
    raw = secret.encode()
    forms = [raw, raw.hex().encode(), raw[4:20]]
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + raw)
            # Drop the characters that depend on the neighbouring bytes.
            start = (shift * 4 + 2) // 3 + 1
            forms.append(encoded[start : len(encoded) - 4])
    return forms


def leaked(haystack: bytes, secret: str) -> list[bytes]:
    return [form for form in canary_forms(secret) if form in haystack]
