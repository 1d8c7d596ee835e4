"""``KubeApi.list(..., metadata_only=True)`` against a real kube-apiserver and our CRD.

ApiKeys carrying a large sealed source are listed two at a time as metadata only: the
API server answers ``PartialObjectMetadataList`` pages whose items keep their names,
namespaces and labels and have neither spec nor status, and the continue token of such a
page brings the next. The same list without the option brings the sealed sources, so
the comparison shows what the controller no longer receives. The namespace is a
``crash-*`` one, which the session's controller (if running) leaves alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any

import pytest
from kubernetes import client

from secure_keys.kube.client import APIKEYS, Credentials, KubeApi
from secure_keys_dev.stack import GROUP, VERSION
from tests.e2e.conftest import Target

pytestmark = pytest.mark.usefixtures("crds")

NAMES = ["alpha", "beta", "gamma"]


def _sealed_apikey(name: str, ciphertext: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ApiKey",
        "metadata": {"name": name, "labels": {"team": "pay", "which": name}},
        "spec": {
            "source": {"sealed": {"recipient": "x25519:0123456789abcdef", "ciphertext": ciphertext}}
        },
    }


async def _pages(kube: Target, namespace: str, *, metadata_only: bool) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    token: str | None = None
    async with KubeApi(Credentials.from_kubeconfig(kube.kubeconfig)) as api:
        while True:
            page = await api.list(
                APIKEYS, namespace, limit=2, continue_=token, metadata_only=metadata_only
            )
            pages.append(page)
            token = page["metadata"].get("continue") or None
            if token is None:
                return pages


def test_metadata_only_list_of_apikeys_has_names_and_labels_and_no_spec(
    kube: Target, admin_api: client.ApiClient, private_namespace: str
) -> None:
    # About 117 KiB of base64 per key, under the CRD's 128 KiB limit on the ciphertext.
    ciphertexts = {name: base64.b64encode(secrets.token_bytes(88_000)).decode() for name in NAMES}
    custom = client.CustomObjectsApi(admin_api)
    for name in NAMES:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, private_namespace, "apikeys", _sealed_apikey(name, ciphertexts[name])
        )

    partial = asyncio.run(_pages(kube, private_namespace, metadata_only=True))
    whole = asyncio.run(_pages(kube, private_namespace, metadata_only=False))

    # Two pages of at most two: the continue token of a metadata-only page works.
    assert [len(page["items"]) for page in partial] == [2, 1]
    assert {page["kind"] for page in partial} == {"PartialObjectMetadataList"}
    items = [item for page in partial for item in page["items"]]
    assert sorted(item["metadata"]["name"] for item in items) == NAMES
    for item in items:
        assert item["kind"] == "PartialObjectMetadata"
        assert "spec" not in item
        assert "status" not in item
        metadata = item["metadata"]
        assert metadata["namespace"] == private_namespace
        assert metadata["labels"] == {"team": "pay", "which": metadata["name"]}
    partial_text = json.dumps(partial)
    assert not any(ciphertext[:64] in partial_text for ciphertext in ciphertexts.values())

    # Without the option the same list carries every sealed source.
    assert {page["kind"] for page in whole} == {"ApiKeyList"}
    whole_text = json.dumps(whole)
    assert all(ciphertext in whole_text for ciphertext in ciphertexts.values())
    print(
        f"\n{len(NAMES)} ApiKeys, JSON re-encoded: whole {len(whole_text)} B, "
        f"metadata only {len(partial_text)} B"
    )
