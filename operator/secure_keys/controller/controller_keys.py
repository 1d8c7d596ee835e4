"""The controller's own keys: the sealed-source recipient key and the fingerprint key.

Both are created once per cluster, sealed as envelopes under the default KMS and kept in
one Secret in the controller's namespace; every replica opens them at startup.

* The X25519 **recipient key** opens ``spec.source.sealed`` values made by
  ``secure-keys seal``. Its public half is published in a ConfigMap that any
  authenticated user may read, so the CLI can seal without other access. The leader
  watches that ConfigMap and publishes it again when it is deleted or its data replaced
  (``publish_recipient``, called from ``operator.py``), with a Warning Event saying so.
* The **fingerprint key** (32 random bytes) keys the HMAC fingerprints written to status
  and Events. It is independent of any KMS provider, so fingerprints stay comparable
  across providers and KMS key rotations.

The Secret's format (type, labels, entries, envelope bindings) is
``secure_keys.kube.keysformat``'s, shared with the gateway; this module creates, opens
and publishes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Literal

from secure_keys.controller.events import build_event
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.memory import random_secret, zero
from secure_keys.core.sealing import Recipient, RecipientPrivateKey
from secure_keys.kube.client import CONFIGMAPS, SECRETS, ApiError, JsonObject, KubeApi
from secure_keys.kube.keysformat import (
    FINGERPRINT_KEY_SIZE,
    FINGERPRINT_SLOT,
    LABELS,
    RECIPIENT_SLOT,
    keys_secret,
    open_fingerprint_key,
    open_slot,
    seal_slot,
)
from secure_keys.kube.names import KEYS_SECRET, RECIPIENT_CONFIGMAP, RECIPIENT_CONFIGMAP_KEY

RecipientChange = Literal["unchanged", "created", "replaced"]


@dataclass
class ControllerKeys:
    """The opened keys. ``close()`` zeroes the fingerprint key."""

    recipient: RecipientPrivateKey
    fingerprint_key: bytearray

    @property
    def public(self) -> Recipient:
        return self.recipient.public()

    def close(self) -> None:
        zero(self.fingerprint_key)

    def __repr__(self) -> str:
        return f"ControllerKeys(recipient={self.public.key_id})"


def new_keys_secret(namespace: str, kms: KmsProvider) -> dict[str, object]:
    """A fresh Secret body holding newly generated keys, sealed (pure but for the CSPRNG)."""
    recipient = RecipientPrivateKey.generate()
    raw = recipient.raw_bytes()
    fingerprint_key = random_secret(FINGERPRINT_KEY_SIZE)
    try:
        data = {
            RECIPIENT_SLOT: seal_slot(kms, namespace, RECIPIENT_SLOT, raw),
            FINGERPRINT_SLOT: seal_slot(kms, namespace, FINGERPRINT_SLOT, fingerprint_key),
        }
    finally:
        zero(raw)
        zero(fingerprint_key)
    return keys_secret(namespace, data)


def open_keys(namespace: str, data: dict[str, str], kms: KmsProvider) -> ControllerKeys:
    raw = open_slot(kms, namespace, RECIPIENT_SLOT, data)
    try:
        recipient = RecipientPrivateKey.from_raw(raw)
    finally:
        zero(raw)
    return ControllerKeys(recipient, open_fingerprint_key(kms, namespace, data))


def recipient_configmap(namespace: str, recipient: Recipient) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": RECIPIENT_CONFIGMAP,
            "namespace": namespace,
            "labels": dict(LABELS),
        },
        "data": {RECIPIENT_CONFIGMAP_KEY: recipient.to_json()},
    }


async def load_or_create(api: KubeApi, namespace: str, kms: KmsProvider) -> ControllerKeys:
    """Open the controller's keys, creating them on first start; publish the recipient."""
    try:
        secret = await api.get(SECRETS, namespace, KEYS_SECRET)
    except ApiError as exc:
        if not exc.not_found:
            raise
        try:
            secret = await api.create(SECRETS, namespace, new_keys_secret(namespace, kms))
        except ApiError as race:
            if not race.conflict:
                raise
            secret = await api.get(SECRETS, namespace, KEYS_SECRET)  # another replica won
    keys = open_keys(namespace, secret.get("data") or {}, kms)
    await publish_recipient(api, namespace, keys.public)
    return keys


async def publish_recipient(
    api: KubeApi, namespace: str, recipient: Recipient
) -> tuple[RecipientChange, JsonObject]:
    """Make the recipient ConfigMap hold exactly our recipient; say what that took.

    Returns what was done and the ConfigMap as stored. A replacement removes any other
    key, so the data ends up equal to ours, and names the resourceVersion it read.
    """
    body = recipient_configmap(namespace, recipient)
    wanted: dict[str, Any] = dict(body["data"])
    try:
        current = await api.get(CONFIGMAPS, namespace, RECIPIENT_CONFIGMAP)
    except ApiError as exc:
        if not exc.not_found:
            raise
        return "created", await api.create(CONFIGMAPS, namespace, body)
    data = current.get("data") or {}
    if data == wanted:
        return "unchanged", current
    patch = {
        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
        "data": {**dict.fromkeys(data), **wanted},  # other keys: null, i.e. removed
    }
    return "replaced", await api.patch(CONFIGMAPS, namespace, RECIPIENT_CONFIGMAP, patch)


def recipient_restored_event(
    configmap: JsonObject,
    change: RecipientChange,
    recipient: Recipient,
    *,
    instance: str,
    now: datetime.datetime,
) -> JsonObject:
    """The Warning Event on a recipient ConfigMap the controller had to put back (pure).

    It names the recipient's key id (public), so whoever replaced it can compare.
    """
    what = "was deleted" if change == "created" else "held other data"
    event = build_event(
        configmap,
        "ConfigMap",
        "Warning",
        "RecipientRestored",
        f"ConfigMap {RECIPIENT_CONFIGMAP} {what}; restored the controller's recipient "
        f"{recipient.key_id}. Values sealed for another recipient do not open here.",
        instance=instance,
        now=now,
    )
    event["involvedObject"]["apiVersion"] = "v1"  # a core object, not one of ours
    return event
