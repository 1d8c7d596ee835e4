"""The secure-keys sidecar: delivers a pod's keys into its tmpfs volume.

It imports ``secure_keys.core`` and nothing else of secure-keys (an import-linter contract
enforces this), so its image carries only the base install: ``cryptography`` and
``structlog``. Authentication to the gateway, the watch and the atomic file writer arrive
with the delivery work; this package holds the layout they fill.
"""
