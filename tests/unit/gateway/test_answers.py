"""Reused admission answers (``gateway.webhook.answers``): the same bytes, never a stale one.

The pods of one Deployment differ, as the API server sends them, in the request's uid
and in the name of their ServiceAccount token volume (``kube-api-access-xxxxx``; seen
on the local control plane while building this). Those must share one answer, each
with its own uid; anything the pipeline reads must not; and a change in the caches
must never let a kept answer through.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import tracemalloc
from typing import Any

import pytest

from secure_keys.gateway.webhook import answers
from secure_keys.gateway.webhook.answers import (
    MAX_KEPT_BODY,
    MAX_KEPT_ITEMS,
    AnswerCache,
    _for,
    pod_shape,
)
from secure_keys.gateway.webhook.authorize import Verdict, authorize
from secure_keys.gateway.webhook.caches import CacheSnapshot, GatewayCaches
from secure_keys.gateway.webhook.injection import KEYS_VOLUME, GatewaySettings
from secure_keys.gateway.webhook.mutate import Outcome, admit
from secure_keys.gateway.webhook.pod import ContainerView, PodView, pod_view
from secure_keys.gateway.webhook.review import AdmissionResponse, decode, encode
from secure_keys.kube.informer import LISTED, InformerEvent
from tests.unit.gateway.helpers import NS, body, pod, review

SETTINGS = GatewaySettings()
ROLE: dict[str, Any] = {
    "metadata": {"name": "app-keys", "namespace": NS},
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": ["stripe-live"]},
        "permissions": ["read"],
    },
}


def _caches(*, synced: bool = True) -> GatewayCaches:
    caches = GatewayCaches()
    caches.apikeys.apply(InformerEvent("ADDED", _apikey()))
    caches.service_accounts.apply(
        InformerEvent("ADDED", {"metadata": {"name": "app", "namespace": NS}})
    )
    caches.keyroles.apply(InformerEvent("ADDED", ROLE))
    if synced:
        for cache in caches.all:
            cache.apply(LISTED)
    return caches


def _apikey(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "stripe-live", "namespace": NS, "labels": {"tier": "live"}},
        "spec": {"delivery": {"fileName": "stripe.key"}},
        "status": status,
    }


def _replica(uid: str, token_volume: str, name: str = "", **overrides: Any) -> bytes:
    """A Deployment's pod as the API server sends it to the webhook."""
    volumes = [{"name": token_volume, "projected": {"sources": [{"serviceAccountToken": {}}]}}]
    obj = pod(name="", volumes=volumes, **overrides)
    obj["metadata"]["generateName"] = name or "web-7d4b9c-"
    return body(review(obj, uid=uid))


def _fresh(raw: bytes, caches: GatewayCaches) -> bytes:
    """What the pipeline answers without reuse."""
    request = decode(raw)
    outcome = admit(request, CacheSnapshot(caches), SETTINGS, synced=caches.synced)
    return encode(outcome.response, request.api_version)


def _response(raw: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(raw)["response"]
    return answer


def test_the_pods_of_a_deployment_share_one_answer_each_with_its_own_uid() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    replicas = [
        _replica("11111111-aaaa-4000-8000-000000000001", "kube-api-access-x7k2p"),
        _replica("22222222-bbbb-4000-8000-000000000002", "kube-api-access-9qzmv"),
        _replica('3"\u00e9\\-odd-uid', "kube-api-access-4hd8w"),
    ]
    answers = [decisions.answer(decode(raw)) for raw in replicas]
    assert (decisions.misses, decisions.hits) == (1, 2)
    for raw, (outcome, encoded) in zip(replicas, answers, strict=True):
        assert encoded == _fresh(raw, caches)
        uid = decode(raw).uid
        assert _response(encoded)["uid"] == uid
        assert outcome.response.uid == uid
        assert outcome.outcome == "injected"
    assert _response(answers[0][1])["patch"] == _response(answers[2][1])["patch"]


def test_a_removed_keyrole_denies_the_next_pod_of_a_kept_shape() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    first = _replica("uid-1", "kube-api-access-aaaaa")
    assert decisions.answer(decode(first))[0].outcome == "injected"
    caches.keyroles.apply(InformerEvent("DELETED", ROLE))
    outcome, encoded = decisions.answer(decode(_replica("uid-2", "kube-api-access-bbbbb")))
    assert outcome.outcome == "denied"
    assert outcome.reason == "KeyNotGranted"
    assert _response(encoded)["allowed"] is False
    # And back: the KeyRole restored, the shape is injected again.
    caches.keyroles.apply(InformerEvent("ADDED", ROLE))
    assert decisions.answer(decode(_replica("uid-3", "kube-api-access-ccccc")))[0].outcome == (
        "injected"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c.apikeys.apply(InformerEvent("DELETED", _apikey())),
            "KeyNotFound",
        ),
        (
            lambda c: c.service_accounts.apply(
                InformerEvent("DELETED", {"metadata": {"name": "app", "namespace": NS}})
            ),
            "ServiceAccountNotFound",
        ),
        (
            lambda c: c.keyroles.apply(
                InformerEvent(
                    "MODIFIED", {**ROLE, "spec": {**ROLE["spec"], "permissions": ["rotate"]}}
                )
            ),
            "KeyNotGranted",
        ),
    ],
    ids=["apikey-deleted", "serviceaccount-deleted", "keyrole-loses-read"],
)
def test_every_cache_change_reaches_kept_shapes(change: Any, expected: str) -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    assert decisions.answer(decode(_replica("uid-1", "kube-api-access-a")))[0].outcome == (
        "injected"
    )
    change(caches)
    outcome, _ = decisions.answer(decode(_replica("uid-2", "kube-api-access-b")))
    assert (outcome.outcome, outcome.reason) == ("denied", expected)


def test_a_status_write_keeps_the_answers() -> None:
    """The controller writes ApiKey status often; the projection (and answers) stay."""
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    decisions.answer(decode(_replica("uid-1", "kube-api-access-a")))
    generation = caches.generation
    caches.apikeys.apply(InformerEvent("MODIFIED", _apikey(phase="Active", versions=[])))
    assert caches.generation == generation
    decisions.answer(decode(_replica("uid-2", "kube-api-access-b")))
    assert (decisions.misses, decisions.hits) == (1, 1)
    # A label change is a change (selectors read labels).
    relabelled = _apikey()
    relabelled["metadata"]["labels"] = {"tier": "test"}
    caches.apikeys.apply(InformerEvent("MODIFIED", relabelled))
    assert caches.generation != generation


def test_a_reserved_volume_name_is_part_of_the_shape() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    assert decisions.answer(decode(_replica("uid-1", "kube-api-access-a")))[0].outcome == (
        "injected"
    )
    outcome, _ = decisions.answer(decode(_replica("uid-2", KEYS_VOLUME)))
    assert (outcome.outcome, outcome.reason) == ("denied", "InvalidAnnotation")


def test_pods_that_differ_in_what_the_pipeline_reads_do_not_share() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    plain = _replica("uid-1", "kube-api-access-a")
    other_mount = _replica(
        "uid-2",
        "kube-api-access-a",
        annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/mount-path": "/keys"},
    )
    for raw in (plain, other_mount):
        assert decisions.answer(decode(raw))[1] == _fresh(raw, caches)
    assert decisions.misses == 2


def _alternatives() -> dict[str, Any]:
    """For each field of PodView, a value other than the base view's."""
    return {
        "namespace": "other",
        "name": "api-",
        "labels": {"securekeys.io/inject": "false", "app": "web"},
        "annotations": {"securekeys.io/keys": "billing"},
        "has_annotations": False,
        "service_account": "batch",
        "containers": (ContainerView("app", ("/data",), True),),
        "init_containers": (ContainerView("migrate", (), False),),
        "has_init_containers": True,
        "volume_names": frozenset({"kube-api-access-a", KEYS_VOLUME}),
        "has_volumes": False,
        "run_as_user": 1000,
        "run_as_group": 1000,
        "share_process_namespace": True,
    }


def test_every_field_of_the_pod_view_but_the_name_is_in_the_shape() -> None:
    """Fails when PodView gains a field that ``pod_shape`` does not place."""
    base = pod_view(json.loads(_replica("uid-1", "kube-api-access-a"))["request"]["object"], NS)
    alternatives = _alternatives()
    names = [f.name for f in dataclasses.fields(PodView)]
    assert sorted(names) == sorted(alternatives), "place the new field in pod_shape"
    for name in names:
        changed = dataclasses.replace(base, **{name: alternatives[name]})
        same = pod_shape(changed) == pod_shape(base)
        assert same == (name == "name"), name


def test_a_statefulsets_pods_share_one_answer_each_logged_under_its_name() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    raws = [body(review(pod(name=f"db-{i}"), uid=f"uid-{i}")) for i in range(3)]
    outcomes = [decisions.answer(decode(raw)) for raw in raws]
    assert (decisions.misses, decisions.hits) == (1, 2)
    for index, (raw, (outcome, encoded)) in enumerate(zip(raws, outcomes, strict=True)):
        assert outcome.pod == f"db-{index}"
        assert encoded == _fresh(raw, caches)


def test_the_first_pod_of_the_next_rollout_reuses_the_answer() -> None:
    """A rollout changes the pod-template-hash label (and ``kubectl rollout restart`` an
    annotation of its own); a CronJob's Jobs differ in their labels: none of that is
    read by the pipeline, so the answer is the same bytes, not computed again."""
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    rollouts = [
        _replica(
            f"uid-{index}",
            f"kube-api-access-{index}",
            name=f"web-{template}-",
            labels={"securekeys.io/inject": "true", "app": "web", "pod-template-hash": template},
            annotations={"securekeys.io/keys": "stripe-live", **restarted},
        )
        for index, (template, restarted) in enumerate(
            [
                ("7d4b9c", {}),
                ("5f8d2a", {"kubectl.kubernetes.io/restartedAt": "2026-12-07T05:00:00Z"}),
                ("c93e1b", {"kubectl.kubernetes.io/restartedAt": "2026-12-07T06:00:00Z"}),
            ]
        )
    ]
    answers = [decisions.answer(decode(raw)) for raw in rollouts]
    assert (decisions.misses, decisions.hits) == (1, 2)
    for raw, (outcome, encoded) in zip(rollouts, answers, strict=True):
        assert encoded == _fresh(raw, caches)
        assert outcome.outcome == "injected"


def test_the_labels_and_annotations_the_pipeline_reads_are_in_the_shape() -> None:
    base = pod_view(json.loads(_replica("uid-1", "kube-api-access-a"))["request"]["object"], NS)
    other_labels = dataclasses.replace(
        base, labels={"securekeys.io/inject": "true", "app": "api", "team": "payments"}
    )
    other_annotations = dataclasses.replace(
        base, annotations={**base.annotations, "example.com/owner": "payments"}
    )
    assert pod_shape(other_labels) == pod_shape(base)
    assert pod_shape(other_annotations) == pod_shape(base)
    for changed in (
        dataclasses.replace(base, labels={}),
        dataclasses.replace(base, annotations={**base.annotations, "securekeys.io/mode": "x"}),
        dataclasses.replace(base, annotations={**base.annotations, "securekeys.io/injected": ""}),
    ):
        assert pod_shape(changed) != pod_shape(base)


def test_a_kept_verdict_is_dropped_when_the_caches_change(monkeypatch: Any) -> None:
    """Pods of two shapes (other containers) share the authorization verdict of their
    ServiceAccount and keys; a KeyRole removed refuses the next pod of a third shape."""
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    calls: list[tuple[Any, ...]] = []

    def counted(*args: Any) -> Verdict:
        calls.append(args)
        return authorize(*args)

    monkeypatch.setattr(answers, "authorize", counted)

    def shaped(uid: str, container: str) -> bytes:
        return _replica(uid, "kube-api-access-a", containers=[{"name": container, "image": "x"}])

    for uid, container in (("uid-1", "api"), ("uid-2", "worker")):
        raw = shaped(uid, container)
        outcome, encoded = decisions.answer(decode(raw))
        assert outcome.outcome == "injected"
        assert encoded == _fresh(raw, caches)
    assert (decisions.misses, len(calls)) == (2, 1), "two shapes, one verdict"
    caches.keyroles.apply(InformerEvent("DELETED", ROLE))
    raw = shaped("uid-3", "batch")
    outcome, encoded = decisions.answer(decode(raw))
    assert (outcome.outcome, outcome.reason) == ("denied", "KeyNotGranted")
    assert encoded == _fresh(raw, caches)
    assert len(calls) == 2


def test_volume_names_outside_the_reserved_ones_do_not_count() -> None:
    base = pod_view(json.loads(_replica("uid-1", "kube-api-access-a"))["request"]["object"], NS)
    renamed = dataclasses.replace(base, volume_names=frozenset({"kube-api-access-zzzzz"}))
    assert pod_shape(renamed) == pod_shape(base)


def test_nothing_is_kept_before_the_caches_sync() -> None:
    caches = _caches(synced=False)
    decisions = AnswerCache(caches, SETTINGS)
    outcome, _ = decisions.answer(decode(_replica("uid-1", "kube-api-access-a")))
    assert outcome.reason == "NotReady"
    assert len(decisions) == 0
    for cache in caches.all:
        cache.apply(LISTED)
    outcome, _ = decisions.answer(decode(_replica("uid-2", "kube-api-access-b")))
    assert outcome.outcome == "injected"


def test_at_most_capacity_shapes_are_kept() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS, capacity=3)
    for index in range(10):
        raw = _replica(f"uid-{index}", "kube-api-access-a", service_account=f"sa-{index}")
        assert decisions.answer(decode(raw))[1] == _fresh(raw, caches)
    assert len(decisions) == 3


def _retained(decisions: AnswerCache, raws: list[bytes]) -> int:
    """Bytes still allocated after reading and answering ``raws`` (what the answers
    kept, including the parts of the decoded reviews that they hold on to)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in raws:
            decisions.answer(decode(raw))
        gc.collect()
        return int(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


def _hostile(index: int, kind: str) -> bytes:
    """Pods made to cost the most per byte, each at the limits of what is kept."""
    if kind == "tiny-labels":
        labels = {"securekeys.io/inject": "true"} | {f"l{i}": "v" for i in range(119)}
        obj = pod(labels=labels, containers=[{"name": f"app-{index}", "image": "x"}])
    elif kind == "unknown-annotations":  # denied, and the message quotes every one
        annotations = {f"securekeys.io/x{i:03}-{index}": "" for i in range(120)}
        obj = pod(annotations=annotations)
    elif kind == "one-large-annotation":
        annotations = {"securekeys.io/keys": "stripe-live", "note": "n" * 30_000}
        obj = pod(annotations=annotations, containers=[{"name": f"app-{index}", "image": "x"}])
    else:  # many containers, each with mounts: a long patch
        containers = [
            {"name": f"c{i}", "image": "x", "volumeMounts": [{"name": "v", "mountPath": f"/m{i}"}]}
            for i in range(60)
        ]
        obj = pod(containers=[*containers, {"name": f"app-{index}", "image": "x"}])
    return body(review(obj, uid=f"uid-{index}"))


@pytest.mark.parametrize(
    "kind", ["deployment", "tiny-labels", "unknown-annotations", "one-large-annotation", "mounts"]
)
def test_an_answer_weighs_at_least_what_it_keeps(kind: str) -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    if kind == "deployment":
        raws = [
            _replica(
                f"uid-{i}", "kube-api-access-a", containers=[{"name": f"app-{i}", "image": "x"}]
            )
            for i in range(20)
        ]
    else:
        raws = [_hostile(i, kind) for i in range(20)]
    retained = _retained(decisions, raws)
    assert len(decisions) == 20, "each is kept (at the limits, not past them)"
    assert retained <= decisions.weight, (kind, retained, decisions.weight)
    assert decisions.weight <= 4 * retained, "and not grossly more"


def test_a_flood_of_hostile_pods_keeps_no_more_than_the_budget() -> None:
    caches = _caches()
    budget = 1024 * 1024
    decisions = AnswerCache(caches, SETTINGS, budget=budget)
    raws = [_hostile(i, kind) for i in range(60) for kind in ("tiny-labels", "mounts")]
    raws += [_hostile(i, "unknown-annotations") for i in range(60)]
    retained = _retained(decisions, raws)
    assert decisions.weight <= budget
    assert retained <= budget * 1.1
    assert 0 < len(decisions) < len(raws)


def test_pods_past_the_limits_are_answered_and_never_kept() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    big = {"securekeys.io/keys": "stripe-live", "note": "n" * (MAX_KEPT_BODY + 1)}
    many = {"securekeys.io/inject": "true"} | {f"l{i}": "v" for i in range(MAX_KEPT_ITEMS)}
    for raw in (body(review(pod(annotations=big))), body(review(pod(labels=many)))):
        assert decisions.answer(decode(raw))[1] == _fresh(raw, caches)
        assert decisions.answer(decode(raw))[1] == _fresh(raw, caches)
    assert len(decisions) == 0
    assert (decisions.hits, decisions.misses) == (0, 0)


def test_a_reused_outcome_carries_every_field_but_uid_and_pod() -> None:
    """``_for`` builds the reused Outcome field by field: a field added to Outcome or
    AdmissionResponse and not carried there fails this."""
    response = AdmissionResponse(
        "uid-1",
        allowed=False,
        patch=({"op": "add", "path": "/x", "value": 1},),
        code=403,
        reason="KeyNotGranted",
        message="m",
        warnings=("w",),
    )
    outcome = Outcome(response, "denied", "KeyNotGranted", "classic", ("a", "b"), "web-1")
    for obj in (outcome, response):
        for f in dataclasses.fields(obj):
            assert getattr(obj, f.name) != f.default, f"give {f.name} a non-default value"
    expected = dataclasses.replace(
        outcome, response=dataclasses.replace(response, uid="uid-2"), pod="web-2"
    )
    assert _for(outcome, "uid-2", "web-2") == expected
