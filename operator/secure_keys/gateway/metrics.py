"""Prometheus metrics of the gateway, in their own registry, served on their own port.

Labels carry outcomes, reasons, modes and resource kinds: never pod names, ApiKey names
or namespaces (unbounded cardinality), never anything secret.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

ADMISSIONS = Counter(
    "securekeys_gateway_admissions_total",
    "AdmissionReview requests answered, by outcome (injected, unchanged, skipped, ignored, "
    "denied, bad-request, error) and reason.",
    ["outcome", "reason"],
    registry=REGISTRY,
)
ADMISSION_SECONDS = Histogram(
    "securekeys_gateway_admission_seconds",
    "Time from a complete request body to the response, by outcome.",
    ["outcome"],
    registry=REGISTRY,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
ADMISSION_ANSWERS = Counter(
    "securekeys_gateway_admission_answers_total",
    "Pod CREATE answers, by source: computed by the pipeline, or reused from an earlier "
    "pod of the same shape while the caches were unchanged.",
    ["source"],
    registry=REGISTRY,
)
CACHE_OBJECTS = Gauge(
    "securekeys_gateway_cache_objects",
    "Objects held in the gateway's watch-fed caches, by resource.",
    ["resource"],
    registry=REGISTRY,
)
CACHES_SYNCED = Gauge(
    "securekeys_gateway_caches_synced",
    "1 once every cache has completed its first list (the gateway is ready), else 0.",
    registry=REGISTRY,
)
TLS_RELOADS = Counter(
    "securekeys_gateway_tls_reloads_total",
    "Serving certificate reloads after the files changed, by result (ok, failed).",
    ["result"],
    registry=REGISTRY,
)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics port
    start_http_server(port, addr=address, registry=REGISTRY)


# -- the key broker -----------------------------------------------------------------------
BROKER_DELIVERIES = Counter(
    "securekeys_gateway_deliveries_total",
    "Key versions sealed and sent to a sidecar.",
    registry=REGISTRY,
)
BROKER_REFUSALS = Counter(
    "securekeys_gateway_refusals_total",
    "Stream requests and keys refused or revoked, by reason.",
    ["reason"],
    registry=REGISTRY,
)
BROKER_STREAMS = Gauge(
    "securekeys_gateway_connected_sidecars",
    "Open sidecar streams on this replica.",
    registry=REGISTRY,
)
PUSH_SECONDS = Histogram(
    "securekeys_gateway_push_seconds",
    "From a watched change reaching this replica to the state line written to a stream.",
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
TOKEN_REVIEWS = Counter(
    "securekeys_gateway_token_reviews_total",
    "Token lookups, by result: hit (answered from the cache), review (a TokenReview "
    "call), error (the call failed).",
    ["result"],
    registry=REGISTRY,
)
DEK_CACHE = Counter(
    "securekeys_gateway_dek_cache_total",
    "Data-key unwraps, by result: hit (from the DEK cache) or miss (a KMS call).",
    ["result"],
    registry=REGISTRY,
)
KMS_CALLS = Counter(
    "securekeys_gateway_kms_calls_total",
    "Unwrap calls that reached the KMS (DEK cache misses).",
    registry=REGISTRY,
)


def observe_dek(hit: bool) -> None:
    DEK_CACHE.labels("hit" if hit else "miss").inc()
    if not hit:
        KMS_CALLS.inc()


# -- rollout (broker/rollout.py) --------------------------------------------------------------
ROLLOUT_PODS = Gauge(
    "securekeys_gateway_rollout_pods",
    "Pods with a stream on this replica, per ApiKey and the version they hold "
    "(summed over replicas: pods per ApiKey and version).",
    ["namespace", "apikey", "version"],
    registry=REGISTRY,
)
ROLLOUT_SECONDS = Histogram(
    "securekeys_gateway_rollout_seconds",
    "From this replica seeing a new current version to the rollout status it wrote "
    "saying every consuming pod holds it.",
    registry=REGISTRY,
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
ROLLOUT_WRITES = Counter(
    "securekeys_gateway_rollout_writes_total",
    "Rollout status patches this replica sent to the API server.",
    registry=REGISTRY,
)
_rollout_series: dict[tuple[str, str], set[str]] = {}


def set_rollout_pods(namespace: str, apikey: str, by_version: dict[int, int]) -> None:
    """This replica's pods per version of one ApiKey; series of versions no longer held
    are removed, so a rotation does not leave a series behind."""
    labels = {str(v) for v, n in by_version.items() if n}
    for gone in _rollout_series.get((namespace, apikey), set()) - labels:
        ROLLOUT_PODS.remove(namespace, apikey, gone)
    for version, count in by_version.items():
        if count:
            ROLLOUT_PODS.labels(namespace, apikey, str(version)).set(count)
    if labels:
        _rollout_series[(namespace, apikey)] = labels
    else:
        _rollout_series.pop((namespace, apikey), None)
