"""Hostile inputs against the answer-reuse cache (``gateway.webhook.answers``).

Each test plays a user of the cluster (or a peer that reaches the gateway's port) who
tries to get an answer out of ``AnswerCache`` that the pipeline, computed afresh on the
same body over the same caches, would not give: another pod's patch, another request's
uid, a stale verdict after a cache change, a shape that hashes and compares equal
while meaning something else, or a gateway that runs out of memory. The safe behaviour
is asserted, so a failing test is a finding. Two were found when this file was written
(a hostile review of the cache) and are fixed: see ``FOUND:`` below.
"""

from __future__ import annotations

import base64
import copy
import gc
import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from secure_keys.gateway.webhook.answers import DEFAULT_CAPACITY, AnswerCache
from secure_keys.gateway.webhook.caches import CacheSnapshot, GatewayCaches
from secure_keys.gateway.webhook.injection import (
    CA_VOLUME,
    KEYS_VOLUME,
    TOKEN_VOLUME,
    GatewaySettings,
)
from secure_keys.gateway.webhook.mutate import Outcome, admit
from secure_keys.gateway.webhook.review import decode, encode, read_json
from secure_keys.kube.cache import WatchCache
from secure_keys.kube.informer import LISTED, InformerEvent
from tests.unit.gateway.helpers import NS, apply_patch, body, pod, review

SETTINGS = GatewaySettings()
CA_SETTINGS = GatewaySettings(broker_ca_pem="-----BEGIN CERTIFICATE-----\nx\n")
OTHER_NS = "ledger"

Objects = dict[str, list[dict[str, Any]]]
"""The objects of each cache (``apikeys``, ``keyroles``, ``serviceaccounts``)."""


def _apikey(name: str = "stripe-live", namespace: str = NS, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "labels": {"tier": "live"}},
        "spec": {"delivery": {"fileName": "stripe.key"}},
    }
    for part, values in extra.items():
        obj[part] = {**obj.get(part, {}), **values}
    return obj


def _role(
    name: str = "app-keys",
    namespace: str = NS,
    *,
    subjects: list[dict[str, Any]] | None = None,
    keys: dict[str, Any] | None = None,
    permissions: list[str] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, **metadata},
        "spec": {
            "subjects": subjects or [{"kind": "ServiceAccount", "name": "app"}],
            "keys": keys or {"names": ["stripe-live"]},
            "permissions": permissions or ["read"],
        },
    }


def _account(name: str = "app", namespace: str = NS) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}}


def _objects() -> Objects:
    return {
        "apikeys": [_apikey(), _apikey(namespace=OTHER_NS)],
        "keyroles": [_role()],
        "serviceaccounts": [_account(), _account(namespace=OTHER_NS)],
    }


def _build(objects: Objects) -> GatewayCaches:
    """Caches that saw only these objects, then listed: what the truth is."""
    caches = GatewayCaches()
    for cache, plural in (
        (caches.apikeys, "apikeys"),
        (caches.keyroles, "keyroles"),
        (caches.service_accounts, "serviceaccounts"),
    ):
        for obj in objects[plural]:
            cache.apply(InformerEvent("ADDED", copy.deepcopy(obj)))
        cache.apply(LISTED)
    return caches


def _fresh(raw: bytes, caches: GatewayCaches, settings: GatewaySettings) -> tuple[Outcome, bytes]:
    request = decode(raw)
    outcome = admit(request, CacheSnapshot(caches), settings, synced=caches.synced)
    return outcome, encode(outcome.response, request.api_version)


def _check(decisions: AnswerCache, raw: bytes, *truths: GatewayCaches) -> tuple[Outcome, bytes]:
    """Answer ``raw`` through ``decisions``; it must equal the fresh answer over each of
    ``truths`` (and over the decisions' own caches), outcome and bytes alike."""
    got = decisions.answer(decode(raw))
    for caches in (decisions.caches, *truths):
        want = _fresh(raw, caches, decisions.settings)
        assert got[1] == want[1], json.loads(raw)["request"].get("object")
        assert got[0] == want[0]
    return got


_uids = iter(f"uid-{n:06d}" for n in range(1_000_000))


def _raw(obj: dict[str, Any] | None, **kwargs: Any) -> bytes:
    kwargs.setdefault("uid", next(_uids))
    return body(review(obj, **kwargs))


def _with_api_version(raw: bytes, api_version: str) -> bytes:
    document = json.loads(raw)
    document["apiVersion"] = api_version
    return json.dumps(document).encode()


# -- pods that look alike -------------------------------------------------------------


def _variants() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(name, pod, namespace): pods close to one another in what a cache could miss."""
    base = pod()
    yield "base", base, NS
    yield "other-namespace", base, OTHER_NS
    yield "other-namespace-in-metadata", _set(base, ("metadata", "namespace"), OTHER_NS), NS
    yield "not-opted-in", _set(base, ("metadata", "labels"), {"securekeys.io/inject": "1"}), NS
    yield "labels-null", _set(base, ("metadata", "labels"), None), NS
    yield "annotations-null", _set(base, ("metadata", "annotations"), None), NS
    yield "annotations-empty", _set(base, ("metadata", "annotations"), {}), NS
    yield (
        "already-injected",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/injected": "native"}),
        NS,
    )
    yield "unknown-key", pod(annotations={"securekeys.io/keys": "stripe-test"}), NS
    yield (
        "classic",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/mode": "classic"}),
        NS,
    )
    yield "other-account", pod(service_account="batch"), NS
    yield "account-field", _account_field(base), NS
    yield "default-account", _set(base, ("spec", "serviceAccountName"), ""), NS
    yield "generate-name", _generate_name(base, "web-"), NS
    yield "generate-name-2", _generate_name(base, "web-7d4b9c-"), NS
    for name in (KEYS_VOLUME, TOKEN_VOLUME, CA_VOLUME):
        yield f"reserved-{name}", pod(volumes=[{"name": name, "emptyDir": {}}]), NS
    yield "volumes-empty", pod(volumes=[]), NS
    yield "volumes-one", pod(volumes=[{"name": "data", "emptyDir": {}}]), NS
    yield "volume-name-not-string", pod(volumes=[{"name": 7, "emptyDir": {}}]), NS
    yield "volumes-null", _set(base, ("spec", "volumes"), None), NS
    two = [{"name": "app", "image": "x"}, {"name": "web", "image": "y"}]
    yield "two-containers", pod(containers=two), NS
    yield "two-containers-swapped", pod(containers=two[::-1]), NS
    yield (
        "named-second",
        pod(
            containers=two,
            annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/containers": "web"},
        ),
        NS,
    )
    yield (
        "named-second-swapped",
        pod(
            containers=two[::-1],
            annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/containers": "web"},
        ),
        NS,
    )
    for mounts in (None, [], [{"name": "d", "mountPath": "/data"}]):
        container: dict[str, Any] = {"name": "app", "image": "x"}
        if mounts is not None:
            container["volumeMounts"] = mounts
        yield f"mounts-{mounts!r}", pod(containers=[container]), NS
    yield "mounts-null", pod(containers=[{"name": "app", "volumeMounts": None}]), NS
    yield (
        "mount-conflict",
        pod(
            containers=[
                {"name": "app", "volumeMounts": [{"mountPath": "/var/run/secrets/securekeys"}]}
            ]
        ),
        NS,
    )
    yield (
        "mount-path-not-string",
        pod(containers=[{"name": "app", "volumeMounts": [{"mountPath": 5}]}]),
        NS,
    )
    yield (
        "mount-elsewhere",
        pod(containers=[{"name": "app", "volumeMounts": [{"mountPath": "/var/run/secrets"}]}]),
        NS,
    )
    init = [{"name": "migrate"}]
    yield "init", pod(init_containers=init), NS
    yield "init-empty", pod(init_containers=[]), NS
    yield (
        "init-last",
        pod(
            init_containers=init,
            annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/init-first": "false"},
        ),
        NS,
    )
    yield (
        "init-named",
        pod(
            init_containers=init,
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/containers": "migrate",
            },
        ),
        NS,
    )
    yield (
        "init-named-absent",
        pod(
            init_containers=[{"name": "other"}],
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/containers": "migrate",
            },
        ),
        NS,
    )
    yield "init-reserved", pod(init_containers=[{"name": "securekeys-init"}]), NS
    yield "init-native", pod(init_containers=[{"name": "mesh", "restartPolicy": "Always"}]), NS
    yield "reserved-container", pod(containers=[{"name": "securekeys-sidecar"}]), NS
    yield "no-containers", pod(containers=[]), NS
    # run_as_user / run_as_group: True == 1 == 1.0 in Python; -1 and -2 hash alike, as do
    # n and n + 2**61 - 1. None of them may share an answer.
    for user in (None, 0, 1, True, 1.0, -1, -2, 1 + 2**61 - 1, 1000, "1000", 2**64):
        yield f"user-{user!r}", pod(security_context={"runAsUser": user}), NS
    for group in (None, 0, 1, True, 1.0, 2000):
        yield f"group-{group!r}", pod(security_context={"runAsUser": 1000, "runAsGroup": group}), NS
    # Malformed objects are never kept; whatever they are answered must match.
    yield "labels-int", _set(base, ("metadata", "labels"), {"securekeys.io/inject": 1}), NS
    yield "name-list", _set(base, ("metadata", "name"), ["web"]), NS
    yield "name-empty-list", _set(base, ("metadata", "name"), []), NS
    yield "spec-list", _set(base, ("spec",), []), NS
    yield "containers-dict", _set(base, ("spec", "containers"), {"name": "app"}), NS


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return changed


def _account_field(obj: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    del changed["spec"]["serviceAccountName"]
    changed["spec"]["serviceAccount"] = "batch"
    return changed


def _generate_name(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    changed = _set(obj, ("metadata", "name"), "")
    changed["metadata"]["generateName"] = prefix
    return changed


def _variant_caches() -> GatewayCaches:
    objects = _objects()
    objects["serviceaccounts"].append(_account("batch"))
    objects["keyroles"].append(
        _role("batch-keys", subjects=[{"kind": "ServiceAccount", "name": "batch"}])
    )
    return _build(objects)


@pytest.mark.parametrize("order", ["forward", "backward", "twice"])
def test_look_alike_pods_each_get_their_own_answer(order: str) -> None:
    caches = _variant_caches()
    decisions = AnswerCache(caches, SETTINGS)
    variants = list(_variants())
    if order == "backward":
        variants.reverse()
    if order == "twice":
        variants = variants + variants[::-1] + variants
    for _name, obj, namespace in variants:
        outcome, encoded = _check(decisions, _raw(obj, namespace=namespace))
        patch = json.loads(encoded)["response"].get("patch")
        if patch is not None:
            # The patch applies, strictly, to the very pod it answers.
            apply_patch(obj, json.loads(base64.b64decode(patch)))
        assert outcome.response.uid == json.loads(encoded)["response"]["uid"]
    assert decisions.hits > 0


def test_the_shape_of_a_replica_with_other_volumes_still_applies() -> None:
    """Volume names outside the reserved ones do not count: the patch only appends."""
    caches = _variant_caches()
    decisions = AnswerCache(caches, CA_SETTINGS)
    for volumes in ([{"name": "a"}], [{"name": "b"}, {"name": "c"}], [{"name": "z"}] * 3):
        obj = pod(volumes=volumes)
        _check(decisions, _raw(obj))
    assert decisions.hits == 2


# -- uids and API versions ------------------------------------------------------------

ODD_UIDS = [
    "plain-uid",
    '"response":{"uid":""',
    'quote"and\\backslash',
    "caf\u00e9-\u2028-\U0001f600",
    "del-\x7f-nul-\x00-tab-\t",
    "\ud800-lone-surrogate",
    "x" * 128,
    "</script>",
]


@pytest.mark.parametrize("settings", [SETTINGS, CA_SETTINGS], ids=["plain", "ca"])
@pytest.mark.parametrize(
    "obj",
    [
        pod(),
        pod(annotations={"securekeys.io/keys": "nope"}),
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/mount-path": "/k\u00e9",
            }
        ),
        pod(labels={"securekeys.io/inject": "true", "\u00e9": "\u00e9"}),
        pod(annotations={"securekeys.io/keys": "\u00e9,\x7f"}),
    ],
    ids=["injected", "denied", "non-ascii-path", "non-ascii-label", "odd-key-names"],
)
def test_every_answer_carries_its_own_uid_byte_for_byte(
    settings: GatewaySettings, obj: dict[str, Any]
) -> None:
    caches = _variant_caches()
    decisions = AnswerCache(caches, settings)
    for uid in ODD_UIDS:
        for api_version in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1"):
            raw = _with_api_version(_raw(obj, uid=uid), api_version)
            outcome, encoded = _check(decisions, raw)
            answer = json.loads(encoded)
            assert answer["response"]["uid"] == uid
            assert answer["apiVersion"] == api_version
            assert outcome.response.uid == uid
    assert decisions.misses == 2  # one per API version


def test_the_same_pod_in_two_namespaces_does_not_share() -> None:
    objects = _objects()
    objects["keyroles"] = [_role(namespace=OTHER_NS)]
    caches = _build(objects)
    decisions = AnswerCache(caches, SETTINGS)
    assert _check(decisions, _raw(pod(), namespace=OTHER_NS))[0].outcome == "injected"
    assert _check(decisions, _raw(pod(), namespace=NS))[0].outcome == "denied"
    assert _check(decisions, _raw(pod(), namespace="kube-system"))[0].outcome == "skipped"


# -- cache changes --------------------------------------------------------------------


def _mutations() -> Iterator[tuple[str, Callable[[Objects], tuple[str, str, dict[str, Any]]]]]:
    """(name, change): each change edits ``objects`` and says which event it was."""

    def replace(plural: str, index: int, obj: dict[str, Any]) -> Callable[[Objects], Any]:
        def change(objects: Objects) -> tuple[str, str, dict[str, Any]]:
            objects[plural][index] = obj
            return plural, "MODIFIED", obj

        return change

    def delete(plural: str, index: int) -> Callable[[Objects], Any]:
        def change(objects: Objects) -> tuple[str, str, dict[str, Any]]:
            return plural, "DELETED", objects[plural].pop(index)

        return change

    def add(plural: str, obj: dict[str, Any]) -> Callable[[Objects], Any]:
        def change(objects: Objects) -> tuple[str, str, dict[str, Any]]:
            objects[plural].append(obj)
            return plural, "ADDED", obj

        return change

    stamp: dict[str, Any] = {"deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["x"]}
    yield "apikey-status-only", replace("apikeys", 0, _apikey(status={"phase": "Active"}))
    yield "apikey-deleting", replace("apikeys", 0, _apikey(metadata=stamp))
    yield "apikey-undeleting", replace("apikeys", 0, _apikey())
    yield "apikey-file-name", replace("apikeys", 0, _apikey(spec={"delivery": {"fileName": "k"}}))
    yield "apikey-file-name-empty", replace("apikeys", 0, _apikey(spec={"delivery": {}}))
    yield (
        "role-by-selector",
        replace("keyroles", 0, _role(keys={"selector": {"matchLabels": {"tier": "live"}}})),
    )
    yield "apikey-relabelled", replace("apikeys", 0, _apikey(metadata={"labels": {"tier": "test"}}))
    yield "apikey-labels-back", replace("apikeys", 0, _apikey())
    yield "apikey-labels-not-a-map", replace("apikeys", 0, _apikey(metadata={"labels": ["x"]}))
    yield "apikey-labels-back-2", replace("apikeys", 0, _apikey())
    yield (
        "role-expression",
        replace(
            "keyroles",
            0,
            _role(
                keys={
                    "selector": {
                        "matchExpressions": [
                            {"key": "tier", "operator": "NotIn", "values": ["live"]}
                        ]
                    }
                }
            ),
        ),
    )
    yield "role-by-name", replace("keyroles", 0, _role())
    yield "role-deleting", replace("keyroles", 0, _role(**stamp))
    yield "role-back", replace("keyroles", 0, _role())
    yield (
        "role-other-subject",
        replace("keyroles", 0, _role(subjects=[{"kind": "ServiceAccount", "name": "other"}])),
    )
    yield (
        "role-group-subject",
        replace(
            "keyroles",
            0,
            _role(subjects=[{"kind": "Group", "name": "system:serviceaccounts:payments"}]),
        ),
    )
    yield (
        "role-user-subject",
        replace(
            "keyroles",
            0,
            _role(subjects=[{"kind": "User", "name": "system:serviceaccount:payments:app"}]),
        ),
    )
    yield (
        "role-subject-other-namespace",
        replace(
            "keyroles",
            0,
            _role(subjects=[{"kind": "ServiceAccount", "name": "app", "namespace": OTHER_NS}]),
        ),
    )
    yield (
        "role-subject-explicit-namespace",
        replace(
            "keyroles",
            0,
            _role(subjects=[{"kind": "ServiceAccount", "name": "app", "namespace": NS}]),
        ),
    )
    yield (
        "role-subject-empty-namespace",
        replace(
            "keyroles",
            0,
            _role(subjects=[{"kind": "ServiceAccount", "name": "app", "namespace": ""}]),
        ),
    )
    yield "role-list-only", replace("keyroles", 0, _role(permissions=["list"]))
    yield "role-malformed", replace("keyroles", 0, {**_role(), "spec": {"subjects": "x"}})
    yield "role-readded", add("keyroles", _role("second"))
    yield "role-in-other-namespace", add("keyroles", _role("elsewhere", OTHER_NS))
    yield "role-deleted", delete("keyroles", 0)
    yield "account-deleted", delete("serviceaccounts", 0)
    yield "account-readded", add("serviceaccounts", _account())
    yield (
        "account-status",
        replace(
            "serviceaccounts", 1, {**_account(), "metadata": {**_account()["metadata"], **stamp}}
        ),
    )
    yield "apikey-deleted", delete("apikeys", 0)
    yield "apikey-readded", add("apikeys", _apikey())


def test_every_cache_change_is_seen_by_the_next_pod_of_a_kept_shape() -> None:
    """After each event, the answer equals the pipeline's over caches that saw only the
    final objects (so a projection that compares equal when it should not shows too)."""
    objects = _objects()
    caches = _build(objects)
    decisions = AnswerCache(caches, SETTINGS)
    shapes = [
        pod(),
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/mode": "classic"}),
        pod(service_account="other"),
    ]
    for obj in shapes:
        _check(decisions, _raw(obj))
    for _name, change in _mutations():
        plural, kind, obj = change(objects)
        by_plural: dict[str, WatchCache[Any]] = {
            "apikeys": caches.apikeys,
            "keyroles": caches.keyroles,
            "serviceaccounts": caches.service_accounts,
        }
        cache = by_plural[plural]
        cache.apply(InformerEvent(kind, copy.deepcopy(obj)))  # type: ignore[arg-type]
        truth = _build(objects)
        for obj_ in shapes:
            _check(decisions, _raw(obj_), truth)
            _check(decisions, _raw(obj_, namespace=OTHER_NS), truth)


# -- the decoder ----------------------------------------------------------------------

JSON_QUIRKS = [
    b'{"a":1,"a":2}',
    b'{"\\u0061":1,"a":2}',
    b'{"a":1e400,"b":-1e400,"c":1e-400}',
    b'{"a":-0,"b":-0.0,"c":0e0}',
    b'{"a":1.0,"b":1,"c":1E0}',
    b'{"a":"\\ud800","b":"\\udfff\\ud800"}',
    b'{"a":"\xed\xa0\x80"}',
    b'\xef\xbb\xbf{"a":1}',
    b'{"a":123456789012345678,"b":-123456789012345678}',
    b'{"a":1234567890123456789}',
    b'{"a":9223372036854775807,"b":-9223372036854775808}',
    b'{"a":18446744073709551615,"b":18446744073709551616}',
    b'{"a":99999999999999999999999999}',
    b'{"a":1.7976931348623159e308,"b":5e-324,"c":2.2250738585072011e-308}',
    b'{"a":0.30000000000000004,"b":123456789.12345678}',
    b'{"a":NaN,"b":Infinity,"c":-Infinity}',
    b'{"a":"\\u0000\\u001f\\u007f"}',
    b'{"a":"\\uD83D\\uDE00","b":"\xf0\x9f\x98\x80"}',
    b' \t\r\n{"a":1}\n ',
    b'{"a":"x"}\x00',
    b'{"a":"\xc0\x80"}',
    b'{"a":"\xff"}',
    b'{"a":"\t"}',
    b'{"a":01}',
    b'{"a":[1,]}',
    b'{"a":.5}',
    b'"\\ud834\\udd1e"',
    '{"a":"\u00e9"}'.encode("utf-16"),
    '{"a":"\u00e9"}'.encode("utf-16-le"),
    '{"a":1}'.encode("utf-32"),
    b"[" * 1023 + b"]" * 1023,
    b"[" * 1025 + b"]" * 1025,
    b"[" * 100_000,
]


def _reading(reader: Callable[[bytes], object], raw: bytes) -> str:
    try:
        return repr(reader(raw))
    except (ValueError, RecursionError) as exc:
        return f"raises {type(exc).__name__}"


@pytest.mark.parametrize("raw", JSON_QUIRKS, ids=range(len(JSON_QUIRKS)))
def test_read_json_reads_what_the_standard_library_reads(raw: bytes) -> None:
    # repr: tells 1 from 1.0 and True, -0.0 from 0.0, and NaN from NaN.
    assert _reading(read_json, raw) == _reading(json.loads, raw)


def test_read_json_and_json_loads_give_the_same_pod_answer() -> None:
    """A body with both an integer past 64 bits and one below: read the same either way."""
    caches = _variant_caches()
    decisions = AnswerCache(caches, SETTINGS)
    for user in (2**63 - 1, 2**63, 2**64 + 1, -(2**63)):
        raw = _raw(pod(security_context={"runAsUser": user, "runAsGroup": 7}))
        assert read_json(raw) == json.loads(raw)
        _check(decisions, raw)


# -- resources ------------------------------------------------------------------------


def _large_pod(index: int, entries: int) -> bytes:
    """An opted-in pod of about ``entries * 40`` bytes: many small labels and unknown
    ``securekeys.io/`` annotations (validation runs after mutating admission, and a
    dry-run create reaches the webhook too, so the API server forwards these)."""
    labels = {"securekeys.io/inject": "true", **{f"l{j}": "" for j in range(entries)}}
    annotations = {"securekeys.io/keys": "stripe-live"}
    annotations.update({f"securekeys.io/x{j}": "" for j in range(entries)})
    return _raw(pod(labels=labels, annotations=annotations, name=f"big-{index}"))


def test_kept_answers_do_not_pin_unbounded_memory() -> None:
    # FOUND: ``capacity`` bounded the number of kept shapes, not their size. A shape
    # keeps every label, annotation and mount path of the pod (and a denial's answer
    # quotes them again), so each kept entry cost 11 to 14 times the request body:
    # 13.5 MiB for a 1 MiB body; 256 such pods (dry-run creates, or POSTs straight to
    # the gateway's port) would pin gigabytes, and an OOM-killed gateway blocks every
    # opted-in pod. Fixed: pods past MAX_KEPT_BODY or MAX_KEPT_ITEMS are never kept,
    # and kept answers are weighed against a byte budget (test_answers.py measures
    # the weights).
    caches = _variant_caches()
    decisions = AnswerCache(caches, SETTINGS)
    raws = [_large_pod(index, 25_000) for index in range(4)]
    size = len(raws[0])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in raws:
            request = decode(raw)
            decisions.answer(request)
            del request
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_entry = retained / len(raws)
    # What a full cache of such pods would pin, against a generous 256 MiB budget.
    assert per_entry * DEFAULT_CAPACITY <= 256 * 2**20, (
        f"{per_entry / 2**20:.1f} MiB kept per {size / 2**20:.1f} MiB pod; "
        f"{per_entry * DEFAULT_CAPACITY / 2**30:.1f} GiB at capacity"
    )


@pytest.mark.parametrize("capacity", [0, 1])
def test_a_tiny_capacity_still_answers(capacity: int) -> None:
    # FOUND (latent: capacity is not a flag): with capacity=0 the first miss popped
    # from an empty OrderedDict and raised KeyError, so every pod was denied with code
    # 500. Fixed: a capacity below 1 keeps nothing.
    caches = _variant_caches()
    decisions = AnswerCache(caches, SETTINGS, capacity=capacity)
    for obj in (pod(), pod(service_account="batch"), pod()):
        _check(decisions, _raw(obj))
    assert len(decisions) <= capacity


def test_a_caller_scribbling_on_an_outcome_does_not_change_later_answers() -> None:
    """The kept Outcome's patch holds dicts shared with the answers it is reused for;
    the bytes come from the template, so they stay right even if a caller edits it."""
    caches = _variant_caches()
    decisions = AnswerCache(caches, SETTINGS)
    outcome, _ = decisions.answer(decode(_raw(pod())))
    outcome.response.patch[0]["value"] = "scribbled"
    raw = _raw(pod())
    _encoded = decisions.answer(decode(raw))[1]
    assert _encoded == _fresh(raw, caches, SETTINGS)[1]


def test_nothing_is_kept_for_requests_that_are_not_readable_pod_creates() -> None:
    caches = _variant_caches()
    decisions = AnswerCache(caches, SETTINGS)
    for raw in (
        _raw(pod(), operation="UPDATE"),
        _raw(pod(), kind="Deployment"),
        _raw(None),
        _raw(_set(pod(), ("spec",), "x")),
    ):
        _check(decisions, raw)
    assert len(decisions) == 0
