"""``secure-keys rotate``: ask the controller for one rotation now.

Sets the ``securekeys.io/rotate-requested-at`` annotation to a fresh timestamp; the
controller seals a new version, records the value it honoured in
``status.lastRotationRequest`` and archives the previous version.
"""

from __future__ import annotations

import datetime
import secrets
from pathlib import Path

from secure_keys.kube.names import GROUP, ROTATE_ANNOTATION, VERSION


def request_value(now: datetime.datetime) -> str:
    """A value no earlier request can have had (timestamp plus a random suffix)."""
    return f"{now.astimezone(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}-{secrets.token_hex(3)}"


def rotate(name: str, namespace: str, kubeconfig: Path | None) -> str:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)
    value = request_value(datetime.datetime.now(datetime.UTC))
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "apikeys",
        name,
        {"metadata": {"annotations": {ROTATE_ANNOTATION: value}}},
    )
    return value
