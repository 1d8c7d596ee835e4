"""Kept patches (``answers.AnswerCache``, keyed by ``patch.patch_inputs``): pods that need
a fresh answer but would get the same patch share it, built and encoded once, and get
byte for byte what the pipeline would have answered; every check still runs for each.

``patch_inputs`` must name everything of the config and the pod that ``build_patch``
reads: for every field of ``PodView``, ``ContainerView`` and ``InjectionConfig``, a
change that leaves the inputs equal must leave the patch equal.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from secure_keys.gateway.webhook.answers import AnswerCache
from secure_keys.gateway.webhook.caches import CacheSnapshot, GatewayCaches
from secure_keys.gateway.webhook.injection import GatewaySettings, InjectionConfig, Resources
from secure_keys.gateway.webhook.mutate import admit
from secure_keys.gateway.webhook.patch import build_patch, patch_inputs
from secure_keys.gateway.webhook.pod import ContainerView, PodView
from secure_keys.gateway.webhook.review import decode, encode
from secure_keys.kube.informer import LISTED, InformerEvent
from tests.unit.gateway.helpers import NS, body, pod, review

SETTINGS = GatewaySettings(
    broker_url="https://gateway.example:8443",
    broker_ca_pem="-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n",
)
ROLE: dict[str, Any] = {
    "metadata": {"name": "app-keys", "namespace": NS},
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": ["stripe-live", "billing"]},
        "permissions": ["read"],
    },
}


def _apikey(name: str, file_name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"delivery": {"fileName": file_name}},
    }


def _caches() -> GatewayCaches:
    caches = GatewayCaches()
    caches.apikeys.apply(InformerEvent("ADDED", _apikey("stripe-live", "stripe.key")))
    caches.apikeys.apply(InformerEvent("ADDED", _apikey("billing", "billing.key")))
    caches.service_accounts.apply(
        InformerEvent("ADDED", {"metadata": {"name": "app", "namespace": NS}})
    )
    caches.keyroles.apply(InformerEvent("ADDED", ROLE))
    for cache in caches.all:
        cache.apply(LISTED)
    return caches


def _fresh(raw: bytes, caches: GatewayCaches) -> bytes:
    request = decode(raw)
    outcome = admit(request, CacheSnapshot(caches), SETTINGS, synced=True)
    return encode(outcome.response, request.api_version)


def _deployment(index: int, **overrides: Any) -> bytes:
    """The first pod of Deployment ``index``: its own name, labels and container name."""
    containers: list[dict[str, Any]] = [
        {
            "name": f"web-{index}",
            "image": "x",
            "volumeMounts": [{"name": "data", "mountPath": f"/data/{index}"}],
        },
        {"name": "metrics", "image": "y"},
    ]
    labels = {"securekeys.io/inject": "true", "app": f"web-{index}"}
    obj = pod(name=f"web-{index}-", containers=containers, labels=labels, **overrides)
    return body(review(obj, uid=f"uid-{index}"))


def test_the_first_pods_of_many_deployments_share_one_patch_and_get_fresh_bytes() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    raws = [_deployment(index) for index in range(5)]
    answers = [decisions.answer(decode(raw)) for raw in raws]
    assert (decisions.misses, decisions.hits) == (5, 0), "each is a new shape"
    for raw, (outcome, encoded) in zip(raws, answers, strict=True):
        assert outcome.outcome == "injected"
        assert encoded == _fresh(raw, caches)
        assert json.loads(encoded)["response"]["uid"] == decode(raw).uid
    assert decisions.patches == 1
    patches = {id(outcome.response.patch) for outcome, _encoded in answers}
    assert len(patches) == 1, "one patch object, shared"


def test_every_check_still_runs_for_a_pod_whose_patch_is_kept() -> None:
    """The same patch inputs, but this pod's ServiceAccount is not bound, its container
    is reserved, or it asks for a key no role grants: each is refused."""
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    assert decisions.answer(decode(_deployment(0)))[0].outcome == "injected"
    refused = [
        body(review(pod(service_account="stranger"), uid="uid-a")),
        body(review(pod(containers=[{"name": "securekeys-sidecar", "image": "x"}]), uid="uid-b")),
        body(review(pod(annotations={"securekeys.io/keys": "nobody-has-this"}), uid="uid-c")),
    ]
    for raw in refused:
        outcome, encoded = decisions.answer(decode(raw))
        assert outcome.outcome == "denied", outcome
        assert encoded == _fresh(raw, caches)


def test_a_change_in_the_caches_gives_a_new_patch() -> None:
    """The key files come from the caches: an ApiKey's new fileName reaches the next
    first pod of a Deployment, though its patch inputs were kept before."""
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    decisions.answer(decode(_deployment(0)))
    caches.apikeys.apply(InformerEvent("MODIFIED", _apikey("stripe-live", "renamed.key")))
    raw = _deployment(1)
    outcome, encoded = decisions.answer(decode(raw))
    assert encoded == _fresh(raw, caches)
    assert "renamed.key" in json.dumps(outcome.response.patch)


def test_other_patch_inputs_get_other_patches() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    raws = [
        _deployment(0),
        _deployment(1, annotations={"securekeys.io/keys": "billing"}),
        _deployment(2, annotations={"securekeys.io/keys": "stripe-live,billing"}),
        _deployment(3, security_context={"runAsUser": 1000}),
        _deployment(4, volumes=[{"name": "data", "emptyDir": {}}]),
    ]
    for raw in raws:
        assert decisions.answer(decode(raw))[1] == _fresh(raw, caches)
    assert decisions.patches == len(raws)


def test_a_kept_patch_is_weighed_once_and_dropped_with_its_last_answer() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS, capacity=2)
    decisions.answer(decode(_deployment(0)))
    alone = decisions.weight
    decisions.answer(decode(_deployment(1)))
    assert decisions.patches == 1
    second = decisions.weight - alone
    assert 0 < second < alone, "the second answer does not weigh the patch again"
    # Two answers of another patch push both out, and their patch with them.
    for index in (2, 3):
        decisions.answer(decode(_deployment(index, security_context={"runAsUser": 1000})))
    assert decisions.patches == 1
    assert len(decisions) == 2
    assert decisions.weight == alone + second


def test_both_api_versions_are_answered_from_one_kept_patch() -> None:
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    for index, version in enumerate(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] * 2):
        document = json.loads(_deployment(index))
        document["apiVersion"] = version
        raw = body(document)
        encoded = decisions.answer(decode(raw))[1]
        assert encoded == _fresh(raw, caches)
        assert json.loads(encoded)["apiVersion"] == version
    assert decisions.patches == 1


# -- patch_inputs names everything build_patch reads ---------------------------------

CONFIG = InjectionConfig(
    keys=("stripe-live",),
    mode="native",
    containers=None,
    mount_path="/var/run/secrets/securekeys",
    volume_size="1Mi",
    init_first=True,
    resources=Resources(),
)
BASE = PodView(
    namespace=NS,
    name="web-",
    labels={"securekeys.io/inject": "true"},
    annotations={"securekeys.io/keys": "stripe-live"},
    has_annotations=True,
    service_account="app",
    containers=(ContainerView("web", ("/data",), True), ContainerView("metrics", (), False)),
    init_containers=(ContainerView("migrate", (), False),),
    has_init_containers=True,
    volume_names=frozenset({"data"}),
    has_volumes=True,
    run_as_user=None,
    run_as_group=None,
)
FILES = ("stripe.key",)


def _pod_changes() -> dict[str, list[Any]]:
    """For each field of PodView, other values (some of which the patch depends on)."""
    return {
        "namespace": ["other"],
        "name": ["api-"],
        "labels": [{}],
        "annotations": [{"securekeys.io/keys": "billing"}],
        "has_annotations": [False],
        "service_account": ["batch"],
        "containers": [
            (ContainerView("api", ("/data",), True), ContainerView("metrics", (), False)),
            (ContainerView("web", ("/data",), True),),
            (ContainerView("metrics", (), False), ContainerView("web", ("/data",), True)),
            (ContainerView("web", (), False), ContainerView("metrics", (), False)),
        ],
        "init_containers": [(), (ContainerView("seed", (), True, True),)],
        "has_init_containers": [False],
        "volume_names": [frozenset()],
        "has_volumes": [False],
        "run_as_user": [1000, 0],
        "run_as_group": [2000],
        "share_process_namespace": [True],
    }


def _container_changes() -> dict[str, list[Any]]:
    return {
        "name": ["api"],
        "mount_paths": [(), ("/other",)],
        "has_mounts": [False],
        "native_sidecar": [True],
    }


def _config_changes() -> dict[str, list[Any]]:
    return {
        "keys": [("stripe-live", "billing")],
        "mode": ["classic", "init-only"],
        "containers": [("metrics",), ("migrate",), ("web", "migrate")],
        "mount_path": ["/keys"],
        "volume_size": ["2Mi"],
        "init_first": [False],
        "resources": [Resources(cpu_limit="1")],
        "reload_url": ["http://127.0.0.1:8080/reload"],
        "all_containers_read": [True],
    }


def _variants() -> list[tuple[str, InjectionConfig, PodView, tuple[str, ...]]]:
    variants: list[tuple[str, InjectionConfig, PodView, tuple[str, ...]]] = []
    for name, values in _pod_changes().items():
        variants += [
            (f"pod.{name}", CONFIG, dataclasses.replace(BASE, **{name: v}), FILES) for v in values
        ]
    for name, values in _container_changes().items():
        for value in values:
            for where in ("containers", "init_containers"):
                changed = tuple(
                    dataclasses.replace(c, **{name: value}) for c in getattr(BASE, where)
                )
                replaced: dict[str, Any] = {where: changed}
                pod_ = dataclasses.replace(BASE, **replaced)
                for config in (CONFIG, dataclasses.replace(CONFIG, containers=("migrate",))):
                    variants.append((f"{where}.{name}", config, pod_, FILES))
    for name, values in _config_changes().items():
        variants += [
            (f"config.{name}", dataclasses.replace(CONFIG, **{name: v}), BASE, FILES)
            for v in values
        ]
    variants.append(("files", CONFIG, BASE, ("other.key",)))
    return variants


def test_every_field_is_covered() -> None:
    """Fails when PodView, ContainerView or InjectionConfig gains a field these tests do
    not vary: decide whether build_patch reads it, and say so in patch_inputs."""
    for cls, changes in (
        (PodView, _pod_changes()),
        (ContainerView, _container_changes()),
        (InjectionConfig, _config_changes()),
    ):
        assert sorted(f.name for f in dataclasses.fields(cls)) == sorted(changes), cls


@pytest.mark.parametrize("settings", [GatewaySettings(), SETTINGS], ids=["plain", "broker"])
def test_equal_patch_inputs_build_equal_patches(settings: GatewaySettings) -> None:
    base = build_patch(CONFIG, BASE, settings, FILES)
    differ = 0
    for what, config, pod_, files in _variants():
        patch = build_patch(config, pod_, settings, files)
        if patch_inputs(config, pod_, files) == patch_inputs(CONFIG, BASE, FILES):
            assert patch == base, f"{what} changes the patch but not patch_inputs"
        differ += patch != base
    assert differ > 10, "the variants reach the patch"


def _other_api_version(raw: bytes) -> bytes:
    document = json.loads(raw)
    document["apiVersion"] = "admission.k8s.io/v1beta1"
    return json.dumps(document).encode()


def test_a_caller_editing_a_shared_patch_changes_no_other_pods_answer() -> None:
    # Pods that share a patch are handed the same operations; each API version's answer
    # is encoded while the patch is as built, so an edit reaches no later answer.
    caches = _caches()
    decisions = AnswerCache(caches, SETTINGS)
    outcome, _ = decisions.answer(decode(_deployment(0)))
    assert outcome.response.patch
    outcome.response.patch[0]["value"] = "scribbled"
    later = _other_api_version(_deployment(1))
    _outcome, answer = decisions.answer(decode(later))
    assert answer == _fresh(later, caches)
    assert b"scribbled" not in answer


def test_keeping_an_answer_never_takes_the_weight_past_the_budget() -> None:
    # Evicting the last other user of a patch puts the patch's weight back on the new
    # answer: it is kept only if it still fits.
    keys = {"securekeys.io/keys": "billing"}

    def raw(container: str, uid: str) -> bytes:
        obj = pod(containers=[{"name": container, "image": "x"}], annotations=keys)
        return body(review(obj, uid=uid))

    probe = AnswerCache(_caches(), SETTINGS)
    probe.answer(decode(raw("a", "1")))
    budget = probe.weight  # one answer and its patch, exactly
    decisions = AnswerCache(_caches(), SETTINGS, budget=budget)
    decisions.answer(decode(raw("a", "1")))
    decisions.answer(decode(raw("b" * 60, "2")))  # same patch, a heavier shape
    assert decisions.weight <= budget
