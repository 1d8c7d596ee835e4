"""The controller's own keys: the sealed-source recipient key and the fingerprint key.

Both are created once per cluster, sealed as envelopes under the default KMS and kept in
one Secret in the controller's namespace; every replica opens them at startup.

* The X25519 **recipient key** opens ``spec.source.sealed`` values made by
  ``secure-keys seal``. Its public half is published in a ConfigMap that any
  authenticated user may read, so the CLI can seal without other access. The leader
  watches that ConfigMap and publishes it again when it is deleted or its data replaced
  (``guard_recipient``, started by ``operator.py``), with a Warning Event saying so.
* The **fingerprint key** (32 random bytes) keys the HMAC fingerprints written to status
  and Events. It is independent of any KMS provider, so fingerprints stay comparable
  across providers and KMS key rotations.

The Secret's format (type, labels, entries, envelope bindings) is
``secure_keys.kube.keysformat``'s, shared with the gateway; this module creates, opens
and publishes.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from secure_keys.controller import metrics
from secure_keys.controller.events import build_event
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.memory import random_secret, zero
from secure_keys.core.sealing import Recipient, RecipientPrivateKey
from secure_keys.kube.client import CONFIGMAPS, EVENTS, SECRETS, ApiError, JsonObject, KubeApi
from secure_keys.kube.informer import Backoff, informer
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

_log = structlog.get_logger("secure_keys.controller")
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


RECIPIENT_SELECTOR = f"metadata.name={RECIPIENT_CONFIGMAP}"
BACKOFF = Backoff()
"""How a failed restore is retried: as the informers retry."""


async def guard_recipient(
    api: KubeApi, namespace: str, recipient: Recipient, *, instance: str
) -> None:
    """Put the recipient ConfigMap back whenever it is deleted or its data replaced, with
    a Warning Event each time; runs until cancelled (the leader runs it).

    The ConfigMap is watched by name only (a field selector), so no other ConfigMap
    reaches the process.
    """
    expected = recipient_configmap(namespace, recipient)["data"]
    intact: bool | None = None
    async for event in informer(api, CONFIGMAPS, namespace, field_selector=RECIPIENT_SELECTOR):
        if event.type != "LISTED":
            metrics.OBJECTS_RECEIVED.labels("configmaps", "recipient").inc()
        if event.type in ("ADDED", "MODIFIED"):
            intact = event.object.get("data") == expected
        elif event.type == "DELETED":
            intact = False
        if intact is not True:
            # LISTED with nothing listed (intact None) also lands here: it is missing.
            await restore_recipient(api, namespace, recipient, instance=instance)
            intact = None if event.type == "LISTED" else intact


async def restore_recipient(
    api: KubeApi, namespace: str, recipient: Recipient, *, instance: str
) -> None:
    """Publish the recipient (retrying with backoff); say so if it had to be put back."""
    failures = 0
    while True:
        try:
            change, body = await publish_recipient(api, namespace, recipient)
            break
        except ApiError as exc:
            delay = BACKOFF.after(failures, exc)
            failures += 1
            _log.warning(
                "recipient.restore.failed",
                status=exc.status,
                error=str(exc),
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)
    if change == "unchanged":
        return
    _log.warning(
        "recipient.restored",
        namespace=namespace,
        configmap=RECIPIENT_CONFIGMAP,
        was="deleted" if change == "created" else "replaced",
        recipient=recipient.key_id,
    )
    event = recipient_restored_event(
        body, change, recipient, instance=instance, now=datetime.datetime.now(datetime.UTC)
    )
    try:
        await api.create(EVENTS, namespace, event)
    except ApiError as exc:
        _log.warning("event.failed", reason=event["reason"], status=exc.status)
