"""Helpers of the reconciler's unit tests: one ApiKey in an in-memory API, reconciled.

``FakeApi`` (tests/unit/controller/fakeapi.py) stands in for the API server only where a
real one cannot stage an interleaving on demand; the reconciler, the local KMS (a PBKDF2
keyring at the iteration floor, from the ``kms_config`` fixture), envelopes and keys are
real. The clock stands still at ``NOW``.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from pathlib import Path
from typing import Any, cast

from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.models import ROTATE_ANNOTATION
from secure_keys.controller.reconciler import Reconciler, blob_secret_name
from secure_keys.core.kms.registry import KmsRegistry
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.core.stamps import format_stamp
from secure_keys.kube.client import APIKEYS, EVENTS, SECRETS, KubeApi, Resource
from tests.unit.controller.fakeapi import FakeApi

NS = "team"
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def reconciler(api: FakeApi, kms_config: Path, registry: KmsRegistry | None = None) -> Reconciler:
    keys = ControllerKeys(RecipientPrivateKey.generate(), bytearray(os.urandom(32)))
    kms = KmsDirectory(KmsSettings.load(kms_config), registry)
    return Reconciler(cast(KubeApi, api), kms, keys, clock=lambda: NOW)


def add_apikey(api: FakeApi, name: str, spec: dict[str, Any]) -> None:
    api.put(
        APIKEYS,
        NS,
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


def reconcile(rec: Reconciler, name: str) -> None:
    asyncio.run(rec.reconcile(NS, name))


def status(api: FakeApi, name: str) -> dict[str, Any]:
    return dict(api.stored(APIKEYS, NS, name).get("status") or {})


def states(api: FakeApi, name: str) -> dict[int, str]:
    return {v["version"]: v["state"] for v in status(api, name).get("versions") or []}


def recorded(api: FakeApi) -> list[dict[int, str]]:
    """The version states each status write sent, in order (writes without versions, such
    as a conditions-only update, left out)."""
    return [
        {r["version"]: r["state"] for r in call[4]["status"]["versions"]}
        for call in api.calls
        if call[:2] == ("patch", APIKEYS.plural) and "versions" in (call[4].get("status") or {})
    ]


def blobs(api: FakeApi, name: str) -> set[str]:
    return set(api.stored(SECRETS, NS, blob_secret_name(name)).get("data") or {})


def request_rotation(api: FakeApi, name: str, value: str = "r1") -> None:
    """Ask for a rotation now, as `secure-keys rotate` does.

    The test clock stands still, and on-demand rotations are spaced
    (``rotation.REQUEST_SPACING``), so the Active version is staged as activated a
    minute ago: the request is due at once.
    """
    stored = api.stored(APIKEYS, NS, name)
    stored["metadata"].setdefault("annotations", {})[ROTATE_ANNOTATION] = value
    earlier = format_stamp(NOW - datetime.timedelta(minutes=1))
    for record in (stored.get("status") or {}).get("versions") or []:
        if record.get("state") == "Active":
            record["activatedAt"] = earlier
    api._bump(stored)


def bump(resource: Resource, name: str) -> Any:
    """A hook: another client changes the object just before our call."""

    def hook(fake: FakeApi, *_: Any) -> None:
        fake._bump(fake.stored(resource, NS, name))

    return hook


def ready_reason(api: FakeApi, name: str) -> str:
    for condition in status(api, name).get("conditions") or []:
        if condition["type"] == "Ready":
            return str(condition["reason"])
    return ""


def events(api: FakeApi, reason: str | None = None) -> list[dict[str, Any]]:
    return [
        obj
        for (plural, _, _), obj in api.objects.items()
        if plural == EVENTS.plural and (reason is None or obj.get("reason") == reason)
    ]
