"""``kube.blobcheck``: a blob entry is opened only if the controller tagged it for this
ApiKey's uid and this version, and only as that namespace, ApiKey and version.

Real envelopes under the real local provider; the blob Secret is a plain dict, as the
API server returns it.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope
from secure_keys.core.integrity import blob_tag
from secure_keys.core.kms.local import LocalKms
from secure_keys.kube.blobcheck import BlobRefused, checked_blob, open_blob
from secure_keys.kube.blobformat import TAGS_ANNOTATION

UID = "0b7c5e2a-uid"
TAG_KEY = bytes(range(32))
KMS = LocalKms._from_keks("k", {1: os.urandom(32)})
BINDING = KeyBinding("payments", "stripe-live", 3)


def _secret(entries: dict[str, bytes], tags: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"annotations": {TAGS_ANNOTATION: json.dumps(tags)}},
        "data": {k: base64.b64encode(v).decode() for k, v in entries.items()},
    }


def _sealed(binding: KeyBinding = BINDING) -> bytes:
    return envelope.seal(b"sk_live_value", binding, KMS).to_bytes()


def test_a_tagged_entry_is_returned_and_opens_for_its_binding() -> None:
    sealed = _sealed()
    secret = _secret({"v3": sealed}, {"v3": blob_tag(TAG_KEY, UID, 3, sealed)})
    assert checked_blob(secret, UID, 3, TAG_KEY) == sealed
    assert open_blob(sealed, BINDING, lambda wrapped: KMS) == bytearray(b"sk_live_value")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("absent", "missing"),
        ("not base64", "garbled"),
        ("no tag", "untagged"),
        ("another uid's tag", "untagged"),
        ("another version's tag", "untagged"),
    ],
)
def test_an_entry_that_is_not_the_controllers_for_this_key_is_refused(
    case: str, reason: str
) -> None:
    sealed = _sealed()
    entries: dict[str, bytes] = {"v3": sealed}
    tags = {"v3": blob_tag(TAG_KEY, UID, 3, sealed)}
    if case == "absent":
        entries = {}
    elif case == "no tag":
        tags = {}
    elif case == "another uid's tag":
        tags = {"v3": blob_tag(TAG_KEY, "an-earlier-apikey", 3, sealed)}
    elif case == "another version's tag":
        tags = {"v3": blob_tag(TAG_KEY, UID, 2, sealed)}
    secret = _secret(entries, tags)
    if case == "not base64":
        secret["data"] = {"v3": "not base64 !"}
    with pytest.raises(BlobRefused) as refused:
        checked_blob(secret, UID, 3, TAG_KEY)
    assert refused.value.reason == reason
    assert "sk_live" not in str(refused.value)


def test_a_blob_opens_only_as_the_version_it_was_sealed_for() -> None:
    sealed = _sealed(KeyBinding("payments", "stripe-live", 2))
    with pytest.raises(InvalidEnvelope):
        open_blob(sealed, BINDING, lambda wrapped: KMS)
    with pytest.raises(InvalidEnvelope):
        open_blob(b"\x00not an envelope", BINDING, lambda wrapped: KMS)
