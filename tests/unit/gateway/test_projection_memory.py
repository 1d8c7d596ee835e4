"""What the broker keeps of an ApiKey: small, and the same when read back.

A gateway keeps a projection of every ApiKey of the cluster (issue 23: 10,000 of them
within 150 MiB). ``status.conditions`` is kept as compact JSON text, read back only for
a rollout write; an ApiKey without labels or rollout shares one empty value.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

from secure_keys.gateway.broker.policy import DeliveryKeyView, project_delivery_key
from secure_keys.kube.informer import NO_LABELS
from secure_keys.kube.rollout import NO_ROLLOUT

CONDITIONS = [
    {
        "lastTransitionTime": "2026-12-07T16:57:01Z",
        "message": "version 1 is active (hs256:4751491949621f4a81b82a429fcb7da2)",
        "observedGeneration": 1,
        "reason": "Active",
        "status": "True",
        "type": "Ready",
    },
    {
        "lastTransitionTime": "2026-12-07T16:57:01Z",
        "message": "version 1 sealed with local/default",
        "observedGeneration": 1,
        "reason": "Sealed",
        "status": "True",
        "type": "Sealed",
    },
]


def _apikey(index: int) -> dict[str, Any]:
    """An ApiKey as the scale bench stores it (bench/scale.py), managedFields and all."""
    managed = {"manager": "secure-keys-controller", "operation": "Update", "fieldsV1": {}}
    return {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": {
            "name": f"key-{index}",
            "namespace": "scale",
            "uid": f"4e407403-01bc-42f5-a8a7-{index:012d}",
            "resourceVersion": str(1000 + index),
            "finalizers": ["securekeys.io/shred-blobs"],
            "managedFields": [managed, managed | {"subresource": "status"}],
        },
        "spec": {
            "rotation": {"interval": "720h", "retain": 3},
            "source": {"generate": {"alphabet": "base62", "length": 32, "prefix": ""}},
        },
        "status": {
            "conditions": CONDITIONS,
            "currentVersion": 1,
            "versions": [
                {
                    "activatedAt": "2026-12-07T16:57:01Z",
                    "fingerprint": "hs256:4751491949621f4a81b82a429fcb7da2",
                    "kmsKeyId": "default",
                    "kmsProvider": "local",
                    "state": "Active",
                    "version": 1,
                }
            ],
        },
    }


def test_conditions_read_back_as_stored() -> None:
    view = project_delivery_key(_apikey(1))
    assert view is not None
    assert view.conditions == tuple(CONDITIONS)
    assert project_delivery_key(_apikey(1)) == view  # a status write that changes nothing


def test_no_labels_and_no_rollout_are_shared_values() -> None:
    first, second = project_delivery_key(_apikey(1)), project_delivery_key(_apikey(2))
    assert first is not None
    assert second is not None
    assert first.labels is second.labels is NO_LABELS
    assert first.rollout is second.rollout is NO_ROLLOUT


def test_an_apikey_costs_the_broker_under_1_5_kib() -> None:
    """Measured with tracemalloc: every byte the kept views hold, strings taken from the
    parsed objects included (2.6 KiB when the conditions were kept as parsed dicts)."""
    texts = [json.dumps(_apikey(i)) for i in range(500)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept: list[DeliveryKeyView | None] = [project_delivery_key(json.loads(t)) for t in texts]
        gc.collect()
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert all(view is not None for view in kept)
    assert per_key < 1536, per_key
