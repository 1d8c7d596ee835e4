"""Prometheus metrics of the controller, in their own registry.

Served on ``--metrics-port`` (``/metrics``) when given. Labels carry reasons and kinds,
never ApiKey names (unbounded cardinality) and never key material.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "securekeys_reconciles_total",
    "Reconcile passes, by resource kind and outcome (idle, retry, error).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "securekeys_reconcile_seconds",
    "Time to reconcile one resource to a fixed point (or a failure).",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
VERSIONS_SEALED = Counter(
    "securekeys_versions_sealed_total",
    "New ApiKey versions sealed, by reason (initial, scheduled, requested, source-changed).",
    ["reason"],
    registry=REGISTRY,
)
VERSIONS_PROMOTED = Counter(
    "securekeys_versions_promoted_total",
    "Versions made Active; with_previous=true counts rotations.",
    ["with_previous"],
    registry=REGISTRY,
)
VERSIONS_DESTROYED = Counter(
    "securekeys_versions_destroyed_total",
    "Versions destroyed (blobs deleted) after retention.",
    registry=REGISTRY,
)
VERSIONS_REWRAPPED = Counter(
    "securekeys_versions_rewrapped_total",
    "Versions whose DEK was rewrapped to a newer KMS key version (KEK rotation).",
    registry=REGISTRY,
)
FAILURES = Counter(
    "securekeys_failures_total",
    "Reconcile failures reported in a Ready=False condition, by reason.",
    ["reason"],
    registry=REGISTRY,
)
OBJECTS_RECEIVED = Counter(
    "securekeys_watch_objects_received_total",
    "Objects received from our own watches and lists (not kopf's), by resource and kind: "
    "secrets blob|other, configmaps recipient. Selectors are applied by the API server, "
    "so Secrets that are not ours never arrive and never count.",
    ["resource", "kind"],
    registry=REGISTRY,
)
CONTROLLER_KEYS_OPEN = Gauge(
    "securekeys_controller_keys_open",
    "1 once the controller's own keys (recipient, fingerprint) are open under the default "
    "KMS key; 0 while that key is unavailable.",
    registry=REGISTRY,
)
DEK_CACHE_LOOKUPS = Counter(
    "securekeys_dek_cache_lookups_total",
    "Unwraps of a data key asked of the per-provider DEK cache, by KMS provider and "
    "result (hit: no KMS call; miss: the KMS was asked).",
    ["provider", "result"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "securekeys_queue_depth",
    "Keys waiting in the work queue (not counting delayed ones).",
    registry=REGISTRY,
)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics port
    start_http_server(port, addr=address, registry=REGISTRY)
