"""The pod label and annotations the gateway reads and writes: each spelled once, here.

Both of the gateway's apps read them (the webhook parses and writes them, the broker
checks what a pod asked for at admission), and they may not import each other, so the
names live in ``kube``, below both.

Every key is documented in ``docs/gateway.md``. A ``securekeys.io/`` annotation on an
opted-in pod that is not listed in ``POD_ANNOTATIONS`` is refused (a typo such as
``securekeys.io/key`` must not silently do nothing).
"""

from __future__ import annotations

PREFIX = "securekeys.io/"

INJECT_LABEL = "securekeys.io/inject"
"""Label, value ``"true"``: the pod opts in. The webhook's objectSelector matches it, so
no other pod is ever sent to the gateway."""

KEYS = "securekeys.io/keys"
"""Required. Comma-separated ApiKey names in the pod's namespace, e.g. ``a,b``."""

MODE = "securekeys.io/mode"
"""``native`` (default: an init container with restartPolicy Always and a startupProbe),
``classic`` (an init container that fetches once plus a regular sidecar container) or
``init-only`` (fetch once, no refresh)."""

CONTAINERS = "securekeys.io/containers"
"""Comma-separated names of the containers that get the keys mounted (default: every
regular container). Init containers may be named when the keys start first."""

MOUNT_PATH = "securekeys.io/mount-path"
"""Where the keys appear in the app containers (default ``/var/run/secrets/securekeys``)."""

VOLUME_SIZE = "securekeys.io/volume-size"
"""Size limit of the memory-backed keys volume (default ``1Mi``, at most ``64Mi``)."""

INIT_FIRST = "securekeys.io/init-first"
"""``true`` (default): the key container goes before the pod's own init containers, so
they can read the keys. ``false``: after them (say, behind a mesh's own init container)."""

SIDECAR_CPU_REQUEST = "securekeys.io/sidecar-cpu-request"
SIDECAR_CPU_LIMIT = "securekeys.io/sidecar-cpu-limit"
SIDECAR_MEMORY_REQUEST = "securekeys.io/sidecar-memory-request"
SIDECAR_MEMORY_LIMIT = "securekeys.io/sidecar-memory-limit"
"""Override the key container's resources (Kubernetes quantities)."""

RELOAD_URL = "securekeys.io/reload-url"
"""Optional. An ``http://`` URL on ``127.0.0.1``, ``localhost`` or ``[::1]`` that the
sidecar POSTs after each rotation or revocation (given to it as
``SECUREKEYS_RELOAD_URL``). The pod's containers share its network namespace, so the
app listens there; anything off the loopback is refused at admission."""

SHARED_PROCESSES = "securekeys.io/all-containers-may-read-keys"
"""``"true"``: the pod accepts that every one of its containers may read its keys. Needed
for a pod with ``shareProcessNamespace: true``, where any container can reach another's
files through ``/proc/<pid>/root`` whatever ``securekeys.io/containers`` names; such a
pod is refused without it (at admission, and by the broker)."""

GATEWAY_CA = "securekeys.io/gateway-ca"
"""Written by the gateway when it has a broker CA (``--broker-ca-file``): the PEM of the
CA that signed its serving certificate, public. A downward API volume turns it into the
key container's ``SECUREKEYS_CA_FILE``, so no Secret or ConfigMap is needed in the pod's
namespace. A value the pod's author wrote is overwritten at injection."""

INJECTED = "securekeys.io/injected"
"""Written by the gateway (value: the mode): the pod was injected. A pod carrying it is
authorized again but never patched twice. Anyone who writes pods can write it too, so it
is a marker and proves nothing: the broker does not ask for it (docs/gateway.md,
"What the broker trusts")."""

POD_ANNOTATIONS = frozenset(
    {
        KEYS,
        MODE,
        CONTAINERS,
        MOUNT_PATH,
        VOLUME_SIZE,
        INIT_FIRST,
        SIDECAR_CPU_REQUEST,
        SIDECAR_CPU_LIMIT,
        SIDECAR_MEMORY_REQUEST,
        SIDECAR_MEMORY_LIMIT,
        RELOAD_URL,
        SHARED_PROCESSES,
        GATEWAY_CA,
        INJECTED,
    }
)
"""Every ``securekeys.io/`` annotation a pod may carry."""

MAX_KEYS = 64
"""The most ApiKeys one pod may name in ``KEYS``."""
MAX_NAME = 253
"""The longest ApiKey name (a Kubernetes object name)."""
MAX_KEYS_TEXT = MAX_KEYS * (MAX_NAME + 8)
"""The longest ``KEYS`` value read item by item, with some room for blanks: the webhook
refuses a longer one, and the broker reads it as naming nothing."""


def split_names(text: str) -> list[str]:
    """A comma-separated annotation value's names, stripped, blanks dropped (``KEYS`` and
    ``CONTAINERS``). Callers bound the text's length first."""
    return [name for name in map(str.strip, text.split(",")) if name]
