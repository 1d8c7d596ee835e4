"""KMS providers: the interface every provider implements, the registry, the DEK cache.

Each provider lives in its own module and is the only module that imports its SDK
(``local`` needs none). Everything else talks to a provider through ``KmsProvider``.
"""

from secure_keys.core.kms.base import HealthStatus, KmsProvider, WrappedKey, rewrap

__all__ = ["HealthStatus", "KmsProvider", "WrappedKey", "rewrap"]
