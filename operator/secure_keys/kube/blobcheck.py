"""Checking and opening one entry of a blob Secret: the one sequence every reader follows.

The controller (re-sealing, adopting, rewrapping, promoting) and the gateway's broker
(serving) read what the controller wrote and trust none of it blindly. ``checked_blob``
is the check both make before anything else: the entry ``v<N>`` is there, is base64, and
carries the controller's integrity tag for this ApiKey's uid and this version
(``core.integrity.blob_tag``), so a blob copied in or swapped by someone who may write
Secrets is refused before any KMS call. ``open_blob`` then opens the envelope as exactly
that namespace, ApiKey and version, with the KMS key the caller picks for it.

Whether the blob Secret is the controller's for this ApiKey (``blobformat.foreign_reason``)
is checked when the Secret is read; what a refusal means (a condition, an HTTP answer) is
the caller's.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from typing import Any, Literal

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope
from secure_keys.core.integrity import blob_tag, tag_valid
from secure_keys.core.kms.base import KmsProvider, WrappedKey
from secure_keys.kube.blobformat import blob_bytes, blob_key, blob_tags

Refusal = Literal["missing", "garbled", "untagged"]


class BlobRefused(Exception):
    """Entry ``v<version>`` is not one to open: ``missing``, ``garbled`` (not base64) or
    ``untagged`` (no valid integrity tag of the controller's for this uid and version).
    The message names the version only, never the entry's bytes."""

    def __init__(self, version: int, reason: Refusal) -> None:
        super().__init__(f"blob entry v{version}: {reason}")
        self.version = version
        self.reason: Refusal = reason


def checked_blob(
    secret: Mapping[str, Any] | None, uid: str, version: int, tag_key: bytes | bytearray
) -> bytes:
    """The sealed bytes of entry ``v<version>``, if the controller wrote them for the
    ApiKey with this ``uid`` and for this very version; else ``BlobRefused``. Pure."""
    try:
        sealed = blob_bytes(secret, version)
    except KeyError:
        raise BlobRefused(version, "missing") from None
    except (ValueError, binascii.Error, TypeError):
        raise BlobRefused(version, "garbled") from None
    expected = blob_tag(tag_key, uid, version, sealed)
    if not tag_valid(expected, blob_tags(secret).get(blob_key(version))):
        raise BlobRefused(version, "untagged")
    return sealed


def open_blob(
    sealed: bytes, binding: KeyBinding, kms_for: Callable[[WrappedKey], KmsProvider]
) -> bytearray:
    """The plaintext of a checked blob, in a fresh buffer the caller zeroes.

    ``kms_for`` picks the provider for the envelope's wrapped key (the one status records,
    or the one the envelope names). Raises ``InvalidEnvelope`` (malformed, or not for this
    ``binding``) or ``KmsUnavailable``; blocking (KMS calls): run it off the event loop.
    """
    try:
        parsed = envelope.Envelope.from_bytes(sealed)
    except envelope.EnvelopeFormatError as exc:
        raise InvalidEnvelope(
            binding.namespace, binding.name, binding.version, exc.reason
        ) from None
    return envelope.open(parsed, binding, kms_for(parsed.wrapped))
