"""Fuzz: generated and mutated AdmissionReview bodies against the handler, in-process.

Hypothesis generates review bodies around realistic pods (known and unknown
annotations with odd values, containers, init containers, volumes, namespaces,
operations); each generated body is then mutated many times with a seeded PRNG (a value
replaced by one of another type, a key deleted, bytes truncated or flipped), so that
more than 100,000 bodies reach ``server.handle_body``, the handler without its
catch-all (an exception in the pipeline fails the test instead of becoming a denial).

Properties, for every body:
* the handler returns (no exception) with HTTP 200 or 400, never 5xx;
* 400 exactly when the body is not an AdmissionReview with a request uid (checked
  against an oracle written separately from ``review.decode``);
* a 200 is a well-formed AdmissionReview echoing the request's apiVersion and uid; a
  denial carries a code >= 400 and a message; a patch decodes to ``add`` operations
  that apply (RFC 6902, strictly) to the pod that was sent;
* the handler reuses answers between pods of the same shape (``webhook.answers``), and every
  answer, reused or not, is byte for byte what the pipeline gives that body afresh.
"""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_keys.gateway.server import handle_body
from secure_keys.gateway.webhook.answers import AnswerCache
from secure_keys.gateway.webhook.caches import CacheSnapshot, GatewayCaches
from secure_keys.gateway.webhook.injection import GatewaySettings
from secure_keys.gateway.webhook.mutate import admit
from secure_keys.gateway.webhook.review import decode, encode
from secure_keys.kube import annotations as ann
from secure_keys.kube.informer import LISTED, InformerEvent
from tests.unit.gateway.helpers import NS, apply_patch

EXAMPLES = 1_000
MUTANTS = 100
SETTINGS = GatewaySettings()

ODD_STRINGS = [
    "",
    ",",
    " , ",
    "a,,b",
    "stripe-live,stripe-live",
    "/",
    "/etc/../x",
    "//x",
    "/x/",
    "\x00",
    "ä",
    "\ud7ff",
    "1e3",
    "-1",
    "0",
    "0.0001m",
    "99999999999Gi",
    "64Mi",
    "65Mi",
    "1.5",
    "true",
    "TRUE",
    "native",
    "classic",
    "init-only",
    "app",
    "app,sidecar",
    "securekeys-sidecar",
    "x" * 300,
    "stripe-live",
    "stripe-live,internal-billing",
    "no-such-key",
]
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**70, 1.5, "", "x", [], {}, [1], {"a": 1}]


def _caches() -> GatewayCaches:
    caches = GatewayCaches()
    for name in ("stripe-live", "internal-billing"):
        caches.apikeys.apply(InformerEvent("ADDED", {"metadata": {"name": name, "namespace": NS}}))
    for account in ("app", "default"):
        caches.service_accounts.apply(
            InformerEvent("ADDED", {"metadata": {"name": account, "namespace": NS}})
        )
    caches.keyroles.apply(
        InformerEvent(
            "ADDED",
            {
                "metadata": {"name": "r", "namespace": NS},
                "spec": {
                    "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                    "keys": {"names": ["stripe-live", "internal-billing"]},
                    "permissions": ["read"],
                },
            },
        )
    )
    for cache in caches.all:
        cache.apply(LISTED)
    return caches


CACHES = _caches()
DECISIONS = AnswerCache(CACHES, SETTINGS)

GOOD_VALUES = {
    ann.KEYS: ["stripe-live", "stripe-live,internal-billing", "internal-billing"],
    ann.MODE: ["native", "classic", "init-only"],
    ann.CONTAINERS: ["app", "app,migrate"],
    ann.MOUNT_PATH: ["/etc/keys", "/var/run/secrets/securekeys"],
    ann.VOLUME_SIZE: ["1Mi", "256Ki"],
    ann.INIT_FIRST: ["true", "false"],
    ann.SIDECAR_CPU_REQUEST: ["5m"],
    ann.SIDECAR_CPU_LIMIT: ["1", "500m"],
    ann.SIDECAR_MEMORY_REQUEST: ["16Mi"],
    ann.SIDECAR_MEMORY_LIMIT: ["128Mi"],
    ann.INJECTED: ["native"],
}


def _value(key: str) -> st.SearchStrategy[str]:
    good = st.sampled_from(GOOD_VALUES.get(key, ["x"]))
    return good | good | st.sampled_from(ODD_STRINGS) | st.text(max_size=40)


names = st.sampled_from(["app", "app", "app", "migrate", "metrics", "x", "securekeys-sidecar"])
mounts = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["data", "securekeys-keys"]),
            "mountPath": st.sampled_from(["/data"] * 4 + ["/var/run/secrets/securekeys"]),
        }
    ),
    max_size=2,
)
container = st.fixed_dictionaries(
    {"name": names, "image": st.just("example.invalid/x")},
    optional={"volumeMounts": mounts, "restartPolicy": st.sampled_from(["Always", "Never"])},
)
clean_annotations = st.fixed_dictionaries(
    {ann.KEYS: st.sampled_from(GOOD_VALUES[ann.KEYS])},
    optional={
        key: st.sampled_from(GOOD_VALUES[key])
        for key in (ann.MODE, ann.INIT_FIRST, ann.VOLUME_SIZE, ann.MOUNT_PATH, ann.INJECTED)
    },
)
messy_annotations = st.fixed_dictionaries(
    {ann.KEYS: _value(ann.KEYS)},
    optional={
        **{key: _value(key) for key in sorted(ann.POD_ANNOTATIONS - {ann.KEYS})},
        "securekeys.io/key": _value("securekeys.io/key"),
        "other/x": st.text(max_size=10),
    },
)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {
                "name": st.sampled_from(["web", ""]),
                "labels": st.fixed_dictionaries(
                    {ann.INJECT_LABEL: st.sampled_from(["true"] * 6 + ["false", "TRUE"])},
                    optional={"app": st.just("web")},
                ),
                "annotations": clean_annotations | messy_annotations,
            }
        ),
        "spec": st.fixed_dictionaries(
            {
                "containers": st.lists(container, min_size=1, max_size=3),
                "serviceAccountName": st.sampled_from(["app"] * 6 + ["default", "ghost"]),
            },
            optional={
                "initContainers": st.lists(container, max_size=2),
                "volumes": st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["data", "data", "data", "securekeys-keys"])}
                    ),
                    max_size=2,
                ),
                "securityContext": st.fixed_dictionaries(
                    {}, optional={"runAsUser": st.sampled_from([0, 1000, 65532])}
                ),
            },
        ),
    }
)
reviews = st.builds(
    lambda pod, namespace, operation, kind, version, uid: {
        "apiVersion": version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "operation": operation,
            "namespace": namespace,
            "object": pod,
        },
    },
    pods,
    st.sampled_from([NS] * 6 + ["kube-system", "secure-keys-system", "other"]),
    st.sampled_from(["CREATE"] * 6 + ["UPDATE", "DELETE"]),
    st.sampled_from(["Pod"] * 6 + ["ConfigMap"]),
    st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
    st.uuids().map(str),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutate(document: dict[str, Any], rng: random.Random) -> bytes:
    """One mutant of ``document`` (a fresh copy), as bytes."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    for _ in range(rng.randint(1, 3)):
        paths = _paths(copy)
        path = rng.choice(paths[1:]) if len(paths) > 1 else ()
        if not path:
            continue
        parent: Any = copy
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        choice = rng.random()
        if choice < 0.3 and isinstance(parent, dict):
            del parent[last]
        elif choice < 0.6:
            parent[last] = json.loads(json.dumps(rng.choice(ODD_VALUES)))
        elif choice < 0.85:
            parent[last] = rng.choice(ODD_STRINGS)
        else:
            parent[last] = [parent[last]]
    raw = json.dumps(copy).encode()
    roll = rng.random()
    if roll < 0.05:
        raw = raw[: rng.randrange(len(raw))]
    elif roll < 0.1:
        position = rng.randrange(len(raw))
        raw = raw[:position] + bytes([rng.randrange(256)]) + raw[position + 1 :]
    return raw


def _is_review(raw: bytes) -> dict[str, Any] | None:
    """The oracle: a JSON object, kind AdmissionReview, a known apiVersion, a request
    object with a non-empty string uid (at most 128 characters)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        return None
    if document.get("apiVersion") not in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1"):
        return None
    request = document.get("request")
    if not isinstance(request, dict):
        return None
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 128:
        return None
    return document


class Tally:
    bodies = 0
    by_status: dict[int, int] = {}  # noqa: RUF012 - a counter for the report
    outcomes: dict[str, int] = {}  # noqa: RUF012


def check(raw: bytes) -> None:
    handled = handle_body(raw, DECISIONS)
    Tally.bodies += 1
    Tally.by_status[handled.status] = Tally.by_status.get(handled.status, 0) + 1
    review = _is_review(raw)
    if review is None:
        assert handled.status == 400, raw[:200]
        return
    assert handled.status == 200, raw[:200]
    request = decode(raw)
    fresh = admit(request, CacheSnapshot(CACHES), SETTINGS, synced=True)
    assert handled.body == encode(fresh.response, request.api_version), raw[:200]
    answer = json.loads(handled.body)
    assert answer["apiVersion"] == review["apiVersion"]
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    outcome = handled.outcome.outcome if handled.outcome is not None else "?"
    Tally.outcomes[outcome] = Tally.outcomes.get(outcome, 0) + 1
    if not response["allowed"]:
        assert response["status"]["code"] >= 400
        assert isinstance(response["status"]["message"], str)
        assert "patch" not in response
        return
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"]))
        assert ops
        assert all(op["op"] == "add" for op in ops)
        patched = apply_patch(review["request"]["object"], ops)
        assert patched["metadata"]["annotations"][ann.INJECTED] in (
            "native",
            "classic",
            "init-only",
        )


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(review=reviews, seed=st.integers(0, 2**32 - 1))
def _generated_and_mutated(review: dict[str, Any], seed: int) -> None:
    check(json.dumps(review).encode())
    rng = random.Random(seed)
    for _ in range(MUTANTS - 1):
        check(_mutate(review, rng))


def test_fuzz_generated_and_mutated_admission_reviews() -> None:
    started = time.perf_counter()
    _generated_and_mutated()
    elapsed = time.perf_counter() - started
    print(
        f"\n{Tally.bodies} bodies in {elapsed:.1f} s; statuses {Tally.by_status}; "
        f"outcomes {Tally.outcomes}; answers reused {DECISIONS.hits}, "
        f"computed {DECISIONS.misses}"
    )
    assert Tally.bodies >= 100_000
    # The corpus reaches every branch worth reaching, not only the 400 path.
    for outcome in ("injected", "denied", "skipped", "ignored", "unchanged"):
        assert Tally.outcomes.get(outcome, 0) > 100, Tally.outcomes
    assert Tally.by_status.get(400, 0) > 1000
    # Reuse was exercised, and so was computing afresh.
    assert DECISIONS.hits > 1000, DECISIONS.hits
    assert DECISIONS.misses > 1000, DECISIONS.misses


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_garbage_that_is_not_a_review_gets_400(raw: bytes) -> None:
    assert handle_body(raw, DECISIONS).status == 400


def test_deeply_nested_body_gets_400_not_a_crash() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    assert handle_body(raw, DECISIONS).status == 400
