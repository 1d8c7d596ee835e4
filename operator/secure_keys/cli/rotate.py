"""``secure-keys rotate``: ask the controller for one rotation now.

Sets the ``securekeys.io/rotate-requested-at`` annotation to a fresh timestamp; the
controller seals a new version, records the value it honoured in
``status.lastRotationRequest`` and archives the previous version.
"""

from __future__ import annotations

import datetime
import secrets

from secure_keys.cli.kubeapi import Target, request_rotation


def request_value(now: datetime.datetime) -> str:
    """A value no earlier request can have had (timestamp plus a random suffix)."""
    return f"{now.astimezone(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}-{secrets.token_hex(3)}"


def rotate(name: str, namespace: str, target: Target) -> str:
    """Ask for one rotation of ApiKey ``namespace/name``; return the value requested."""
    value = request_value(datetime.datetime.now(datetime.UTC))
    request_rotation(target, namespace, name, value)
    return value
