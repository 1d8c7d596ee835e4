"""Names of the API objects secure-keys defines or relies on: the one place they are spelled.

Constants only, no I/O: the CLI, the controller and the gateway import them from here.
"""

from __future__ import annotations

GROUP = "securekeys.io"
VERSION = "v1alpha1"

ROTATE_ANNOTATION = "securekeys.io/rotate-requested-at"
"""Set by ``secure-keys rotate``: any new value asks for one rotation now."""
MAX_ROTATE_REQUEST = 128
"""Longer rotate-now values are recorded in ``status.lastRotationRequest`` as a digest
(the field is capped); the gateway compares only shorter ones."""
GRACE_ENDED_ANNOTATION = "securekeys.io/grace-ended-through"
"""Set by ``secure-keys revoke --version N``: the broker no longer offers versions up to
N as ``.previous`` (their grace ends early; the files go from every pod by push)."""
FINALIZER = "securekeys.io/shred-blobs"

DEFAULT_CONTROLLER_NAMESPACE = "secure-keys-system"
"""The namespace the chart installs the controller into, by default (the CLI's default for
``--controller-namespace`` and ``$SECUREKEYS_CONTROLLER_NAMESPACE``)."""

RECIPIENT_CONFIGMAP = "secure-keys-recipient"
RECIPIENT_CONFIGMAP_KEY = "recipient.json"

KEYS_SECRET = "secure-keys-controller-keys"  # noqa: S105 - a Secret name
"""The controller's own keys (recipient, fingerprint), sealed, in its namespace."""
