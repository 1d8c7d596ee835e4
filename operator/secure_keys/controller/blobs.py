"""The blob Secret: where an ApiKey's sealed versions live, and who may write it.

Each ApiKey keeps its sealed envelopes in one Secret, ``<name>.sealed``, one ``v<N>``
entry per version. This module owns that Secret: its name, labels and owner reference,
the ownership check, and every read and write of it.

The controller writes only a Secret it created for this very ApiKey: one whose
controller owner reference names the ApiKey's uid and which carries our type and labels.
Anything else under that name (an admin's own ``payments.sealed``, say) is foreign:
reading it raises ``ForeignBlobSecret``, and nothing here ever patches, erases or
deletes it. Writes carry the resourceVersion they were computed from, so a concurrent
change fails with 409 rather than being overwritten.

Labels never hold the ApiKey's name (names may be 253 characters, label values 63): the
``securekeys.io/apikey-uid`` label holds the uid, and the owner reference the name.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from secure_keys.controller.models import ApiKey
from secure_keys.controller.own_writes import OwnWrites
from secure_keys.kube.blobformat import (
    BLOB_SECRET_TYPE,
    LABEL_APIKEY,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    TAGS_ANNOTATION,
    blob_bytes,
    blob_key,
    blob_secret_name,
    blob_tags,
    blob_versions,
    foreign_reason,
)
from secure_keys.kube.client import SECRETS, ApiError, KubeApi
from secure_keys.kube.names import GROUP, VERSION

__all__ = [
    "BLOB_SECRET_TYPE",
    "INTENT_ANNOTATION",
    "LABEL_APIKEY",
    "LABEL_MANAGED_BY",
    "MANAGED_BY",
    "TAGS_ANNOTATION",
    "BlobStore",
    "ForeignBlobSecret",
    "Intent",
    "blob_bytes",
    "blob_key",
    "blob_secret_name",
    "blob_tags",
    "blob_versions",
    "foreign_reason",
    "labels",
    "owner_reference",
]

INTENT_ANNOTATION = "securekeys.io/pending-intent"
"""Written with a new version's blob, in the same write: what status should record for
it (source digest, rotation request, consumed source). If the controller dies before the
Pending record, the next pass adopts the blob with exactly that intent."""


class ForeignBlobSecret(Exception):
    """A Secret with the blob Secret's name exists and this ApiKey does not own it."""

    def __init__(self, namespace: str, name: str, why: str) -> None:
        super().__init__(
            f"Secret {namespace}/{name} exists and was not created by the controller for "
            f"this ApiKey ({why}); it is left untouched. Rename the ApiKey, or move that "
            "Secret out of the way"
        )


def _tags_annotation(secret: dict[str, Any] | None, changes: dict[int, str | None]) -> str:
    tags = blob_tags(secret)
    for version, tag in changes.items():
        if tag is None:
            tags.pop(blob_key(version), None)
        else:
            tags[blob_key(version)] = tag
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"))


def owner_reference(key: ApiKey) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ApiKey",
        "name": key.metadata.name,
        "uid": key.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(key: ApiKey) -> dict[str, str]:
    return {LABEL_APIKEY: key.metadata.uid, LABEL_MANAGED_BY: MANAGED_BY}


@dataclass(frozen=True)
class Intent:
    """What status should record for a new version: see ``INTENT_ANNOTATION``."""

    version: int
    extra: dict[str, Any]

    def to_annotation(self) -> str:
        return json.dumps({"version": self.version, "extra": self.extra}, sort_keys=True)

    @classmethod
    def of(cls, secret: dict[str, Any] | None) -> Intent | None:
        text = ((secret or {}).get("metadata") or {}).get("annotations", {}).get(INTENT_ANNOTATION)
        if not text:
            return None
        try:
            document = json.loads(text)
            version, extra = document["version"], document["extra"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(version, int) or not isinstance(extra, dict):
            return None
        allowed = {"sourceDigest", "lastRotationRequest", "consumedSource"}
        return cls(version, {k: v for k, v in extra.items() if k in allowed})


class BlobStore:
    """Reads and writes of blob Secrets, limited to the ones this controller owns."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._written = OwnWrites()

    async def read(self, key: ApiKey) -> dict[str, Any] | None:
        """This ApiKey's blob Secret, None if absent; ``ForeignBlobSecret`` if not ours."""
        namespace, name = key.metadata.namespace, blob_secret_name(key.metadata.name)
        try:
            secret = await self.api.get(SECRETS, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        why = foreign_reason(secret, key.metadata.uid)
        if why is not None:
            raise ForeignBlobSecret(namespace, name, why)
        return secret

    async def write_version(
        self,
        key: ApiKey,
        secret: dict[str, Any] | None,
        version: int,
        blob: bytes,
        tag: str,
        intent: Intent,
    ) -> dict[str, Any]:
        """Add ``v<version>`` (never replacing an entry) with its tag and intent."""
        encoded = base64.b64encode(blob).decode()
        annotations = {
            INTENT_ANNOTATION: intent.to_annotation(),
            TAGS_ANNOTATION: _tags_annotation(secret, {version: tag}),
        }
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": BLOB_SECRET_TYPE,
                "metadata": {
                    "name": blob_secret_name(key.metadata.name),
                    "namespace": key.metadata.namespace,
                    "labels": labels(key),
                    "annotations": annotations,
                    "ownerReferences": [owner_reference(key)],
                },
                "data": {blob_key(version): encoded},
            }
            created = await self.api.create(SECRETS, key.metadata.namespace, body)
            return self._own(created, key)
        if version in blob_versions(secret):
            raise ValueError(f"version {version} already has a blob; versions never repeat")
        return await self._patch(
            key, secret, {blob_key(version): encoded}, {"annotations": annotations}
        )

    async def replace_versions(
        self, key: ApiKey, secret: dict[str, Any], blobs: dict[int, tuple[bytes, str]]
    ) -> dict[str, Any]:
        """Replace existing entries and their tags (a rewrap changes the wrapped DEK, not
        the ciphertext)."""
        data: dict[str, str | None] = {
            blob_key(v): base64.b64encode(b).decode() for v, (b, _) in blobs.items()
        }
        tags: dict[int, str | None] = {v: t for v, (_, t) in blobs.items()}
        annotations = {TAGS_ANNOTATION: _tags_annotation(secret, tags)}
        return await self._patch(key, secret, data, {"annotations": annotations})

    async def delete_versions(
        self, key: ApiKey, secret: dict[str, Any], versions: tuple[int, ...]
    ) -> dict[str, Any]:
        annotations = {TAGS_ANNOTATION: _tags_annotation(secret, dict.fromkeys(versions))}
        return await self._patch(
            key, secret, {blob_key(v): None for v in versions}, {"annotations": annotations}
        )

    async def shred(self, namespace: str, apikey: str, uid: str) -> list[int] | None:
        """Erase every blob, then delete the Secret (crypto-shredding on ApiKey deletion).

        Returns the erased versions, or None when there was no Secret of ours: a foreign
        Secret under the name is left alone.
        """
        name = blob_secret_name(apikey)
        try:
            secret = await self.api.get(SECRETS, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        if foreign_reason(secret, uid) is not None:
            return None
        versions = sorted(blob_versions(secret))
        metadata = secret["metadata"]
        try:
            if secret.get("data"):
                patch = {
                    "metadata": {"resourceVersion": metadata["resourceVersion"]},
                    "data": dict.fromkeys(secret["data"]),
                }
                erased = await self.api.patch(SECRETS, namespace, name, patch)
                metadata = erased["metadata"]
            await self.api.delete(
                SECRETS,
                namespace,
                name,
                preconditions={
                    "uid": metadata["uid"],
                    "resourceVersion": metadata["resourceVersion"],
                },
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
        return versions

    async def _patch(
        self,
        key: ApiKey,
        secret: dict[str, Any],
        data: dict[str, str | None],
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        patch = {
            "metadata": {
                "resourceVersion": secret["metadata"]["resourceVersion"],
                **(metadata or {}),
            },
            "data": data,
        }
        written = await self.api.patch(
            SECRETS, key.metadata.namespace, secret["metadata"]["name"], patch
        )
        return self._own(written, key)

    # -- our own writes -------------------------------------------------------------------
    def _own(self, secret: dict[str, Any], key: ApiKey) -> dict[str, Any]:
        self._written.remember(
            key.metadata.namespace, key.metadata.name, secret["metadata"]["resourceVersion"]
        )
        return secret

    def written(self, namespace: str, apikey: str) -> tuple[str, ...]:
        """The versions of this ApiKey's blob Secret this store wrote last, oldest first."""
        return self._written.written(namespace, apikey)

    def wrote(self, namespace: str, apikey: str, resource_version: str) -> bool:
        return self._written.wrote(namespace, apikey, resource_version)

    def forget(self, namespace: str, apikey: str) -> None:
        self._written.forget(namespace, apikey)
