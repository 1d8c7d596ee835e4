"""``kube.keysformat``: the controller keys Secret, spelled once for the controller and
the gateway. Its entries open only under their own name and namespace, the fingerprint
key only at its size, and the controller's own Secrets are recognised.

Real envelopes under the real local provider.
"""

from __future__ import annotations

import os

import pytest

from secure_keys.core.errors import InvalidEnvelope
from secure_keys.core.kms.local import LocalKms
from secure_keys.kube.blobformat import BLOB_SECRET_TYPE
from secure_keys.kube.keysformat import (
    CONTROLLER_KEYS_TYPE,
    FINGERPRINT_SLOT,
    RECIPIENT_SLOT,
    keys_secret,
    open_fingerprint_key,
    open_slot,
    owned_by_controller,
    seal_slot,
)
from secure_keys.kube.names import KEYS_SECRET

KMS = LocalKms._from_keks("k", {1: os.urandom(32)})
NS = "secure-keys-system"


def test_a_sealed_entry_opens_under_its_name_and_namespace_only() -> None:
    key = bytearray(os.urandom(32))
    data = {FINGERPRINT_SLOT: seal_slot(KMS, NS, FINGERPRINT_SLOT, key)}
    assert open_fingerprint_key(KMS, NS, data) == key
    with pytest.raises(InvalidEnvelope):  # moved to the other entry
        open_slot(KMS, NS, RECIPIENT_SLOT, {RECIPIENT_SLOT: data[FINGERPRINT_SLOT]})
    with pytest.raises(InvalidEnvelope):  # copied to another namespace
        open_slot(KMS, "elsewhere", FINGERPRINT_SLOT, data)
    with pytest.raises(ValueError, match="has no 'recipient' entry"):
        open_slot(KMS, NS, RECIPIENT_SLOT, data)


def test_a_fingerprint_key_of_the_wrong_size_is_refused() -> None:
    data = {FINGERPRINT_SLOT: seal_slot(KMS, NS, FINGERPRINT_SLOT, bytearray(16))}
    with pytest.raises(ValueError, match="wrong size"):
        open_fingerprint_key(KMS, NS, data)


def test_the_keys_secret_is_one_of_the_controllers_own() -> None:
    body = keys_secret(NS, {FINGERPRINT_SLOT: "x"})
    assert body["type"] == CONTROLLER_KEYS_TYPE
    assert body["metadata"]["name"] == KEYS_SECRET
    assert owned_by_controller(body)
    assert owned_by_controller({"type": BLOB_SECRET_TYPE, "metadata": {}})
    labelled = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "secure-keys"}}}
    assert owned_by_controller(labelled)
    assert not owned_by_controller({"type": "Opaque", "metadata": {"labels": {}}})
