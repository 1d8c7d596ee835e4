"""The controller keys Secret's format, and which Secrets are the controller's own.

The one place the keys Secret's type, labels, entries and envelope bindings are spelled,
read by the controller (which creates the Secret and opens both keys) and the gateway
(which opens the fingerprint key). Pure but for the KMS calls the envelopes make; no
Kubernetes I/O.

Secret ``secure-keys-controller-keys`` (``names.KEYS_SECRET``, type
``securekeys.io/controller-keys``) in the controller's namespace holds two entries, each
a base64 sealed envelope (``core.envelope``) under the default KMS key, bound to the
namespace and the entry (``controller-<entry>``, version 1):

* ``recipient``: the X25519 private key that opens ``spec.source.sealed`` values;
* ``fingerprint``: the 32-byte key of the HMAC fingerprints and integrity tags.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.memory import zero
from secure_keys.kube.blobformat import BLOB_SECRET_TYPE, LABEL_MANAGED_BY, MANAGED_BY
from secure_keys.kube.names import KEYS_SECRET

CONTROLLER_KEYS_TYPE = "securekeys.io/controller-keys"
RECIPIENT_SLOT = "recipient"
FINGERPRINT_SLOT = "fingerprint"
FINGERPRINT_KEY_SIZE = 32
LABELS = {LABEL_MANAGED_BY: MANAGED_BY, "app.kubernetes.io/part-of": "secure-keys"}
"""The labels of the objects the controller keeps in its namespace (this Secret, the
recipient ConfigMap)."""


def slot_binding(namespace: str, slot: str) -> KeyBinding:
    """What an entry's envelope is bound to: moved to another entry or namespace, it fails."""
    return KeyBinding(namespace, f"controller-{slot}", 1)


def seal_slot(kms: KmsProvider, namespace: str, slot: str, plaintext: bytearray) -> str:
    """The entry's value: ``plaintext`` sealed under ``kms``, base64."""
    sealed = envelope.seal(plaintext, slot_binding(namespace, slot), kms).to_bytes()
    return base64.b64encode(sealed).decode()


def open_slot(kms: KmsProvider, namespace: str, slot: str, data: Mapping[str, Any]) -> bytearray:
    """The entry's plaintext, in a fresh buffer the caller zeroes.

    Raises ``ValueError`` if the entry is missing or not base64, ``InvalidEnvelope`` or a
    ``KmsError`` if it does not open.
    """
    value = data.get(slot)
    if not isinstance(value, str):
        raise ValueError(f"Secret {namespace}/{KEYS_SECRET} has no {slot!r} entry")
    return envelope.open(base64.b64decode(value, validate=True), slot_binding(namespace, slot), kms)


def open_fingerprint_key(kms: KmsProvider, namespace: str, data: Mapping[str, Any]) -> bytearray:
    """The fingerprint key, checked for size (``ValueError`` otherwise); caller zeroes it."""
    key = open_slot(kms, namespace, FINGERPRINT_SLOT, data)
    if len(key) != FINGERPRINT_KEY_SIZE:
        zero(key)
        raise ValueError("the stored fingerprint key has the wrong size")
    return key


def keys_secret(namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The keys Secret's body, holding entries already sealed by ``seal_slot``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": CONTROLLER_KEYS_TYPE,
        "metadata": {"name": KEYS_SECRET, "namespace": namespace, "labels": dict(LABELS)},
        "data": dict(data),
    }


def owned_by_controller(secret: Mapping[str, Any]) -> bool:
    """Whether a Secret is one of the controller's own (blobs, its keys, anything it labels).

    A ``secretRef`` may never name one: sealing the controller's own material under a
    user's ApiKey would hand it to whoever the user binds to that key.
    """
    metadata = secret.get("metadata") or {}
    return (
        secret.get("type") in (BLOB_SECRET_TYPE, CONTROLLER_KEYS_TYPE)
        or (metadata.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
    )
