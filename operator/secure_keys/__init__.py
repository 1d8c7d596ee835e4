"""secure-keys: Kubernetes-native storage and delivery of API keys.

The package is layered. ``secure_keys.core`` is the dependency-light base (envelope
encryption, key hierarchy, KMS providers) shared with the sidecar; the controller,
gateway and CLI sit above it and may import it, never the other way round. The local
store for developers (``secure_keys.store``) sits on the core too. ``KeyManager``
(``secure_keys.cli.manager``: a pod's injected files, the cluster, or the local store) is
importable from here, loaded on first use so that importing the core stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secure_keys.cli.manager import KeyManager

__all__ = ["KeyManager", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "KeyManager":
        from secure_keys.cli.manager import KeyManager

        return KeyManager
    raise AttributeError(f"module 'secure_keys' has no attribute {name!r}")
