"""The audit chain (``core.auditchain``) and the broker's copies of the controller's names
(``gateway.broker.material`` may not import the controller)."""

from __future__ import annotations

import copy

from secure_keys.controller import blobs
from secure_keys.core.auditchain import AuditChain, derive_audit_key, verify
from secure_keys.gateway.broker import material
from secure_keys.kube import names

KEY = derive_audit_key(bytes(range(32)))


def _log(n: int = 5) -> list[dict[str, object]]:
    chain = AuditChain(KEY, "run1")
    return [chain.link({"event_type": "key.delivered", "key_id": f"ns/k@{i}"}) for i in range(n)]


def test_an_intact_log_verifies_even_interleaved_with_another_run() -> None:
    other = AuditChain(KEY, "run2")
    log = _log()
    mixed = [log[0], other.link({"a": 1}), *log[1:3], other.link({"a": 2}), *log[3:]]
    assert verify(mixed, KEY) is None


def test_deleting_editing_or_reordering_a_record_names_it() -> None:
    log = _log()
    deleted = log[:2] + log[3:]
    broken = verify(deleted, KEY)
    assert broken is not None
    assert broken.index == 2
    edited = copy.deepcopy(log)
    edited[3]["key_id"] = "ns/k@99"
    broken = verify(edited, KEY)
    assert broken is not None
    assert broken.index == 3
    swapped = [log[0], log[2], log[1], *log[3:]]
    broken = verify(swapped, KEY)
    assert broken is not None
    assert broken.index == 1
    # Re-numbering after a deletion does not help: the mac chains to the deleted one.
    renumbered = copy.deepcopy(deleted)
    for i, record in enumerate(renumbered):
        record["chain"] = f"run1:{i + 1}"
    broken = verify(renumbered, KEY)
    assert broken is not None
    assert broken.index == 2
    assert verify(log, derive_audit_key(bytes(32))) is not None  # another key


def test_the_audit_key_is_not_the_fingerprint_key() -> None:
    assert bytes(KEY) != bytes(range(32))


def test_material_mirrors_the_controller_names() -> None:
    assert material.BLOB_SECRET_TYPE == blobs.BLOB_SECRET_TYPE
    assert material.LABEL_APIKEY == blobs.LABEL_APIKEY
    assert material.LABEL_MANAGED_BY == blobs.LABEL_MANAGED_BY
    assert material.MANAGED_BY == blobs.MANAGED_BY
    assert material.TAGS_ANNOTATION == blobs.TAGS_ANNOTATION
    assert material.KEYS_SECRET == names.KEYS_SECRET
    for name in ("short", "x" * 250):
        assert material.blob_secret_name(name) == blobs.blob_secret_name(name)
