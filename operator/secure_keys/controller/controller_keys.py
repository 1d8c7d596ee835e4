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
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any, Literal

from secure_keys.controller.events import build_event
from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.memory import random_secret, zero
from secure_keys.core.sealing import Recipient, RecipientPrivateKey
from secure_keys.kube.client import CONFIGMAPS, SECRETS, ApiError, JsonObject, KubeApi
from secure_keys.kube.names import KEYS_SECRET, RECIPIENT_CONFIGMAP, RECIPIENT_CONFIGMAP_KEY

_RECIPIENT_SLOT = "recipient"
_FINGERPRINT_SLOT = "fingerprint"
FINGERPRINT_KEY_SIZE = 32
RecipientChange = Literal["unchanged", "created", "replaced"]
_LABELS = {
    "app.kubernetes.io/managed-by": "secure-keys",
    "app.kubernetes.io/part-of": "secure-keys",
}


def _binding(namespace: str, slot: str) -> KeyBinding:
    return KeyBinding(namespace, f"controller-{slot}", 1)


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


def _seal(kms: KmsProvider, namespace: str, slot: str, plaintext: bytearray) -> str:
    sealed = envelope.seal(plaintext, _binding(namespace, slot), kms).to_bytes()
    return base64.b64encode(sealed).decode()


def _open(kms: KmsProvider, namespace: str, slot: str, data: dict[str, str]) -> bytearray:
    if slot not in data:
        raise ValueError(f"Secret {namespace}/{KEYS_SECRET} has no {slot!r} entry")
    return envelope.open(base64.b64decode(data[slot]), _binding(namespace, slot), kms)


def new_keys_secret(namespace: str, kms: KmsProvider) -> dict[str, object]:
    """A fresh Secret body holding newly generated keys, sealed (pure but for the CSPRNG)."""
    recipient = RecipientPrivateKey.generate()
    raw = recipient.raw_bytes()
    fingerprint_key = random_secret(FINGERPRINT_KEY_SIZE)
    try:
        data = {
            _RECIPIENT_SLOT: _seal(kms, namespace, _RECIPIENT_SLOT, raw),
            _FINGERPRINT_SLOT: _seal(kms, namespace, _FINGERPRINT_SLOT, fingerprint_key),
        }
    finally:
        zero(raw)
        zero(fingerprint_key)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "securekeys.io/controller-keys",
        "metadata": {"name": KEYS_SECRET, "namespace": namespace, "labels": _LABELS},
        "data": data,
    }


def open_keys(namespace: str, data: dict[str, str], kms: KmsProvider) -> ControllerKeys:
    raw = _open(kms, namespace, _RECIPIENT_SLOT, data)
    try:
        recipient = RecipientPrivateKey.from_raw(raw)
    finally:
        zero(raw)
    fingerprint_key = _open(kms, namespace, _FINGERPRINT_SLOT, data)
    if len(fingerprint_key) != FINGERPRINT_KEY_SIZE:
        zero(fingerprint_key)
        raise ValueError("the stored fingerprint key has the wrong size")
    return ControllerKeys(recipient, fingerprint_key)


def recipient_configmap(namespace: str, recipient: Recipient) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": RECIPIENT_CONFIGMAP, "namespace": namespace, "labels": _LABELS},
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
