"""secure-keys: Kubernetes-native storage and delivery of API keys.

The package is layered. ``secure_keys.core`` is the dependency-light base (envelope
encryption, key hierarchy, KMS providers) shared with the sidecar; the controller,
gateway and CLI sit above it and may import it, never the other way round.
"""

__version__ = "0.1.0"
