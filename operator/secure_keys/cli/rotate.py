"""``secure-keys rotate``: ask the controller for one rotation now.

Two ways, in this order. Whoever may patch the ApiKey (Kubernetes RBAC) sets its
``securekeys.io/rotate-requested-at`` annotation to a fresh value. Whoever may not (the
API server answers 403) but is granted ``rotate`` by a KeyRole asks the gateway with a
KeyAccessReview of operation ``rotate``; the gateway checks the role (subjects, keys,
``requireMFA``, ``timeWindows``), sets the annotation itself and answers with the value
(docs/access.md). Either way the controller seals a new version, records the value it
honoured in ``status.lastRotationRequest`` and archives the previous version.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from secure_keys.cli import access
from secure_keys.cli.kubeapi import Target, request_rotation
from secure_keys.core.accessreview import ReviewInvalid
from secure_keys.core.stamps import rotation_request
from secure_keys.kube.client import ApiError


@dataclass(frozen=True)
class Requested:
    """The annotation value asked for, and how (``""``: RBAC; else the role's answer)."""

    value: str
    granted_by: str = ""
    through_role: bool = False
    """Asked of the gateway for a KeyRole's grantee (RBAC refused the patch): such a
    caller may not read the ApiKey, so ``--wait`` follows it through list reviews."""


def rotate(name: str, namespace: str, target: Target) -> Requested:
    """Ask for one rotation of ApiKey ``namespace/name``. Raises ``access.AccessRefused``
    (saying what would grant it) when neither RBAC nor a KeyRole allows it."""
    value = rotation_request(datetime.datetime.now(datetime.UTC))
    try:
        request_rotation(target, namespace, name, value)
        return Requested(value)
    except ApiError as exc:
        if exc.status != 403:
            raise
    answer = access.request_rotation(target, namespace, name)
    if not answer.rotation_request:
        raise ReviewInvalid("the gateway's answer names no rotation request")
    return Requested(answer.rotation_request, answer.message, through_role=True)
