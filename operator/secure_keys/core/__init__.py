"""Shared core of secure-keys: envelope encryption, key hierarchy and KMS providers.

This layer imports no Kubernetes, kopf or aiohttp code, so the sidecar can carry it alone.
Each dangerous primitive has exactly one owner here:

- ``aead``: AES-256-GCM;
- ``memory``: secret buffers (allocation from the OS CSPRNG, zeroing);
- ``hierarchy``: password-based key derivation (PBKDF2, HKDF) and the password verifier;
- ``fingerprint``: keyed fingerprints (HMAC-SHA256);
- ``sealing``: X25519 sealing of sources to the cluster's recipient key;
- ``logs``: logging configuration (structlog, JSON off a terminal).

``schedule`` (cron, intervals, rotation policy) and ``binding`` are pure and hold no keys.
"""
