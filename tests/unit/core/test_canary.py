"""No plaintext or password escapes through exceptions, reprs, logs or output.

Every operation of the core is run with a recognisable canary as the plaintext (and
another as the master password), failures included; then every string those operations
produced is searched for the canaries and their common encodings.
"""

from __future__ import annotations

import base64
import logging
import traceback
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope, KmsDenied
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.hierarchy import MIN_ITERATIONS, KdfParams, KeyHierarchy
from secure_keys.core.kms.cache import DekCache
from secure_keys.core.kms.local import LocalKeyring, LocalKms, from_config
from tests.conftest import CANARY

PASSWORD_CANARY = "pw-canary-5d1c7a0e-never-print-me"


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        repr(raw),
        secret[8:24],  # a fragment, in case something truncates
    ]


def _describe(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def test_canaries_never_escape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    binding = KeyBinding("payments", "stripe-live", 1)
    plaintext = bytearray(CANARY.encode())

    with capture_logs() as events:
        keyring = LocalKeyring.create("default", PASSWORD_CANARY, iterations=MIN_ITERATIONS)
        kms = LocalKms.unlock(keyring, [PASSWORD_CANARY])
        sealed = envelope.seal(plaintext, binding, kms)
        raw = sealed.to_bytes()
        seen += [repr(keyring), keyring.to_json(), repr(kms), repr(sealed), repr(sealed.wrapped)]

        with envelope.opened(raw, binding, kms) as opened:
            assert opened == plaintext

        failures: list[BaseException] = []
        for bad in (
            raw[:-1],
            raw[:20],
            bytes((2,)) + raw[1:],
            raw[:-1] + bytes((raw[-1] ^ 1,)),
        ):
            try:
                envelope.open(bad, binding, kms)
            except InvalidEnvelope as exc:
                failures.append(exc)
        try:
            envelope.open(raw, KeyBinding("payments", "stripe-live", 2), kms)
        except InvalidEnvelope as exc:
            failures.append(exc)
        try:
            LocalKms.unlock(keyring, ["wrong-" + PASSWORD_CANARY[::-1]])
        except KmsDenied as exc:
            failures.append(exc)
        try:
            envelope.seal(bytes(envelope.MAX_PLAINTEXT_SIZE + 1), binding, kms)
        except ValueError as exc:
            failures.append(exc)
        assert len(failures) == 7
        for failure in failures:
            seen += _describe(failure)

        rotated = keyring.with_new_version(PASSWORD_CANARY, iterations=MIN_ITERATIONS)
        kms2 = LocalKms.unlock(rotated, [PASSWORD_CANARY])
        moved = envelope.rewrap(sealed, binding, kms2)
        seen += [repr(moved), repr(rotated), repr(kms2)]

        (tmp_path / "ring.json").write_text(rotated.to_json())
        (tmp_path / "pw").write_text(PASSWORD_CANARY + "\n")
        configured = from_config(
            "default",
            {"keyringPath": str(tmp_path / "ring.json"), "passwordFile": str(tmp_path / "pw")},
        )
        seen.append(repr(configured))

        hierarchy = KeyHierarchy.derive(PASSWORD_CANARY, KdfParams.generate(MIN_ITERATIONS))
        seen += [
            repr(hierarchy),
            repr(hierarchy.params),
            fingerprint(hierarchy.integrity_key, plaintext, namespace="n", name="k", uid="u"),
        ]

        cache = DekCache()
        context = binding.wrap_context(envelope.FORMAT_V1)
        dek = kms2.unwrap(moved.wrapped, context)
        cache.put(moved.wrapped, context, dek)
        seen += [repr(cache), repr(cache.stats()), repr(context), repr(binding)]

    output = capsys.readouterr()
    seen += [repr(event) for event in events]
    seen += [record.getMessage() for record in caplog.records]
    seen += [output.out, output.err]

    assert any(e.get("event") == "kms.local.unlocked" for e in events), "logging was exercised"
    haystack = "\n".join(seen)
    for secret in (CANARY, PASSWORD_CANARY):
        for form in _forms(secret):
            assert form not in haystack, f"a form of a canary leaked: {form!r}"
    assert CANARY.encode() not in raw
