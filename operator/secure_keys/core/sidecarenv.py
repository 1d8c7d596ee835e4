"""The contract between the webhook and the key container: environment and paths.

The webhook (``gateway/webhook/patch.py``) writes these variables into the key
container it injects, and mounts the keys volume, the projected token and the gateway's
CA at these paths; the sidecar (``secure_keys_sidecar/settings.py``) parses the same
names, with the same paths as its defaults. Both import this module, the one place they
are spelled (the sidecar may import only ``secure_keys.core``); a test checks that the
patch's environment is exactly what the sidecar parses.
"""

from __future__ import annotations

KEYS = "SECUREKEYS_KEYS"
"""Comma-separated ApiKey names, in the pod's order."""
FILES = "SECUREKEYS_FILES"
"""Comma-separated file names, one per key in ``KEYS``."""
DIR = "SECUREKEYS_DIR"
"""Where the key container writes the keys (``KEYS_DIR``)."""
TOKEN_FILE = "SECUREKEYS_TOKEN_FILE"  # noqa: S105 - a variable's name
"""The projected ServiceAccount token with audience ``securekeys.io``."""
MODE = "SECUREKEYS_MODE"
"""``native``, ``classic`` or ``init-only``."""
GATEWAY_URL = "SECUREKEYS_GATEWAY_URL"
"""The key broker's https:// URL (set when the gateway runs with ``--broker-url``)."""
CA_FILE = "SECUREKEYS_CA_FILE"
"""The gateway's serving CA (set when the gateway has one to hand out)."""
RELOAD_URL = "SECUREKEYS_RELOAD_URL"
"""A localhost http:// URL to POST to after each change (when the pod names one)."""
POD_NAME = "POD_NAME"
POD_NAMESPACE = "POD_NAMESPACE"
POD_UID = "POD_UID"
"""The pod's name, namespace and uid, from the downward API."""

WEBHOOK_SETS = (KEYS, FILES, DIR, TOKEN_FILE, MODE, POD_NAME, POD_NAMESPACE, POD_UID)
"""Set in every injected key container."""
WEBHOOK_MAY_SET = (GATEWAY_URL, CA_FILE, RELOAD_URL)
"""Set when the gateway's settings or the pod ask for them."""

KEYS_DIR = "/var/run/secrets/securekeys"
"""Where the key container writes the keys, and app containers see them by default."""
TOKEN_DIR = "/var/run/secrets/securekeys.io/serviceaccount"  # noqa: S105 - a path
TOKEN_PATH = f"{TOKEN_DIR}/token"
CA_DIR = "/var/run/secrets/securekeys.io/ca"
CA_FILE_NAME = "ca.crt"
CA_PATH = f"{CA_DIR}/{CA_FILE_NAME}"


KEYS_VOLUME = "securekeys-keys"
"""The pod's tmpfs (emptyDir, medium Memory) the key container writes the keys into."""
TOKEN_VOLUME = "securekeys-token"  # noqa: S105 - a volume's name
"""The projected ServiceAccount token (audience securekeys.io) of the key container."""
CA_VOLUME = "securekeys-ca"
"""The gateway's serving CA, for the key container."""
RESERVED_VOLUMES = frozenset({KEYS_VOLUME, TOKEN_VOLUME, CA_VOLUME})
"""A container that mounts one of these reads the pod's keys or the key container's
credentials: the webhook refuses ephemeral containers that mount or target one, and the
broker delivers nothing to a pod whose ephemeral containers target one."""
