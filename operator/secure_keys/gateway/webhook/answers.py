"""Owns the reuse of admission answers between pods of the same shape.

The pods of a Deployment, a Job or a DaemonSet reach the webhook as AdmissionReviews
that differ in the request's uid and in the name the API server gives each pod's
ServiceAccount token volume (``kube-api-access-xxxxx``), a StatefulSet's in their names
too; they arrive in bursts, when a workload scales or rolls out. The answer to each is a
function of what ``mutate.admit_pod`` reads: the ``PodView``, the gateway's settings
(fixed for the process) and what the caches hold. So ``AnswerCache`` keeps, per *shape*
(the API version and the ``PodView`` without its name, which only the log line shows,
and of its volume names, labels and annotations only those the pipeline looks at: the
volume names the injection reserves, the ``securekeys.io/inject`` label and the
``securekeys.io/`` annotations), the ``Outcome`` and the encoded answer with a slot for
the uid. A later pod of that shape gets the same answer with its own uid, byte for byte
what the pipeline would have given it. So the first pod of a Deployment's next rollout
(a new ``pod-template-hash`` label, a ``kubectl.kubernetes.io/restartedAt`` annotation),
a CronJob's next Job (new ``job-name`` and ``controller-uid`` labels) or a bare pod like
another reuses the answer too, unless something the answer depends on changed.

Pods of a new shape share one thing more: the authorization verdict, a function of the
namespace, the ServiceAccount and the keys (and of the caches, so it is dropped with
the answers). Allowed verdicts are kept, ``MAX_VERDICTS`` of them: the Deployments of
one namespace tend to share a ServiceAccount and keys.

Pods of a new shape that are injected share their patch too, and its encoded answer:
the patch is a function of ``patch.patch_inputs`` (the config, the key files, and of
the pod only where its containers are and whether it has volumes, init containers,
annotations and its own runAsUser and runAsGroup), so the first pods of many
Deployments, which differ in names and labels, get one patch, built and encoded once.
Every check (the annotations, the pod, authorization) still runs for each such pod;
only building and encoding the patch is skipped. A patch is kept while a kept answer
uses it, and weighed once, in the same budget.

What the caches hold changes the answer (a KeyRole removed, an ApiKey created): every
kept answer is dropped as soon as any cache's generation moves, before the next
request is answered. Nothing is kept until the caches have synced, and requests that
are not a readable pod CREATE are never kept.

Memory is bounded whatever pods a hostile user sends (dry-run creates reach the
webhook too, and denials are kept like the rest). A kept shape holds the pod's
``securekeys.io/`` annotations, container names and mount paths, and a denial quotes
some of them again, so a shape made of many tiny items costs over ten times its share
of the body. Hence: pods whose review is
over ``MAX_KEPT_BODY`` bytes or with over ``MAX_KEPT_ITEMS`` labels, annotations,
containers and mount paths are answered afresh every time and never kept;
each kept answer is weighed (an upper estimate of what it holds) and the oldest are
dropped while the weights add up to more than ``budget`` bytes or the count to more than
``capacity``. A shape holds names, annotations and mount paths, never key material (the
webhook has none).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import NamedTuple

from secure_keys.gateway.webhook.authorize import Verdict, authorize
from secure_keys.gateway.webhook.caches import CacheSnapshot, GatewayCaches
from secure_keys.gateway.webhook.injection import (
    RESERVED_VOLUMES,
    GatewaySettings,
    InjectionConfig,
)
from secure_keys.gateway.webhook.mutate import Outcome, admit, admit_pod
from secure_keys.gateway.webhook.patch import PatchOp, build_patch, patch_inputs
from secure_keys.gateway.webhook.pod import MalformedPod, PodView, pod_view
from secure_keys.gateway.webhook.review import (
    API_VERSIONS,
    AdmissionRequest,
    AdmissionResponse,
    ReviewTemplate,
    encode,
    template,
)
from secure_keys.kube import annotations as ann

DEFAULT_CAPACITY = 256
DEFAULT_BUDGET = 4 * 1024 * 1024
"""Bytes of kept answers (as weighed): a Deployment's pod weighs about 17 KiB."""
MAX_KEPT_BODY = 32 * 1024
"""Reviews larger than this are never kept (the API server's own pods with managed
fields are 3 to 6 KiB)."""
MAX_KEPT_ITEMS = 128
MAX_VERDICTS = 1024
"""Allowed authorization verdicts kept (each holds the keys' file names, at most 64)."""
_ENTRY_WEIGHT = 4096
"""Bytes every kept answer costs whatever its pod (the entry, the Outcome, the view)."""
_ITEM_WEIGHT = 320
"""Bytes a label, annotation, container or mount path costs in a kept shape beyond its
text (the string objects, the tuple, the set slot), rounded up."""


@dataclass(slots=True)
class _Patch:
    """A patch, its encoded answers (one per API version, made on first use) and how
    many kept answers use it."""

    key: Hashable
    ops: tuple[PatchOp, ...]
    templates: dict[str, ReviewTemplate] = field(default_factory=dict)
    weight: int = 0
    users: int = 0


def pod_shape(pod: PodView) -> Hashable:
    """Everything of ``pod`` that the answer depends on, as a hashable value.

    Every field of ``PodView`` is here (a test fails when a field is added and not
    placed here) but the name, which reaches only the log line (``Outcome.pod``, set
    per request), so a StatefulSet's pods share too; of the volume names, only those
    ``validate`` looks for; of the labels, only ``securekeys.io/inject``
    (``should_inject``); of the annotations, only the ``securekeys.io/`` ones (``parse``,
    ``admit_pod``; the patch reads only whether the pod has annotations at all).
    """
    return (
        pod.namespace,
        pod.labels.get(ann.INJECT_LABEL),
        frozenset(item for item in pod.annotations.items() if item[0].startswith(ann.PREFIX)),
        pod.has_annotations,
        pod.service_account,
        pod.containers,
        pod.init_containers,
        pod.has_init_containers,
        pod.volume_names & RESERVED_VOLUMES,
        pod.has_volumes,
        pod.run_as_user,
        pod.run_as_group,
        pod.share_process_namespace,
    )


class AnswerCache:
    """The admission pipeline over the gateway's caches, reusing answers per pod shape."""

    def __init__(
        self,
        caches: GatewayCaches,
        settings: GatewaySettings,
        *,
        capacity: int = DEFAULT_CAPACITY,
        budget: int = DEFAULT_BUDGET,
        observe: Callable[[bool], None] = lambda _reused: None,
    ) -> None:
        self.caches = caches
        self.budget = budget
        self._weight = 0
        self.observe = observe
        """Called once per kept-or-keepable answer: True when it was reused."""
        self.settings = settings
        self.capacity = capacity
        self._snapshot = CacheSnapshot(caches)
        # An OrderedDict: dropping the oldest of a plain dict scans the holes its earlier
        # deletions left at the front, and became 3 % of the gateway's time.
        self._kept: OrderedDict[tuple[str, Hashable], _Kept] = OrderedDict()
        self._verdicts: dict[tuple[str, str, tuple[str, ...]], Verdict] = {}
        self._patches: dict[Hashable, _Patch] = {}
        """The patches kept answers use, per ``patch_inputs``."""
        self._built: _Patch | None = None
        """The patch ``_patch`` gave last: ``answer`` takes its encoded answer."""
        self._generation: tuple[int, ...] = ()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def weight(self) -> int:
        """What the kept answers and their patches weigh, in bytes (an upper estimate)."""
        return self._weight

    @property
    def patches(self) -> int:
        """How many patches are kept."""
        return len(self._patches)

    def answer(self, request: AdmissionRequest) -> tuple[Outcome, bytes]:
        """The outcome for ``request`` and the encoded AdmissionReview answering it."""
        synced = self.caches.synced
        pod: PodView | None = None
        if synced and request.is_pod_create:
            try:
                pod = pod_view(request.object, request.namespace)
            except MalformedPod:
                pod = None  # admit() words the denial
        if pod is None:
            outcome = admit(request, self._snapshot, self.settings, synced=synced)
            return outcome, encode(outcome.response, request.api_version)
        items = _items(pod)
        generation = self.caches.generation
        if generation != self._generation:
            self._kept.clear()
            self._patches.clear()
            self._verdicts.clear()
            self._weight = 0
            self._generation = generation
        if request.body_size > MAX_KEPT_BODY or items > MAX_KEPT_ITEMS or self.capacity < 1:
            outcome = admit_pod(request.uid, pod, self._snapshot, self.settings, synced=True)
            return outcome, encode(outcome.response, request.api_version)
        key = (request.api_version, pod_shape(pod))
        kept = self._kept.get(key)
        if kept is None:
            self.misses += 1
            self.observe(False)
            self._built = None
            outcome = admit_pod(
                request.uid,
                pod,
                self._snapshot,
                self.settings,
                synced=True,
                authorize_with=self._authorize,
                patch_with=self._patch,
            )
            answer, patch = self._template(outcome, request.api_version)
            weight = _ENTRY_WEIGHT + _held(pod)
            if patch is None:
                weight += 4 * (len(answer.head) + len(answer.tail))
            self._keep(key, outcome, answer, weight, patch)
            return outcome, answer.fill(request.uid)
        self.hits += 1
        self.observe(True)
        kept_outcome, answer = kept.outcome, kept.answer
        return _for(kept_outcome, request.uid, pod.name), answer.fill(request.uid)

    def _authorize(self, namespace: str, service_account: str, keys: tuple[str, ...]) -> Verdict:
        """``authorize`` over the snapshot, its allowed verdicts kept until the caches
        change (``answer`` clears them with the answers)."""
        slot = (namespace, service_account, keys)
        verdict = self._verdicts.get(slot)
        if verdict is None:
            verdict = authorize(namespace, service_account, keys, self._snapshot)
            if verdict.allowed and len(self._verdicts) < MAX_VERDICTS:
                self._verdicts[slot] = verdict
        return verdict

    def _patch(
        self, config: InjectionConfig, pod: PodView, files: tuple[str, ...]
    ) -> tuple[PatchOp, ...]:
        """``build_patch`` with the settings, kept per ``patch_inputs``."""
        key = patch_inputs(config, pod, files)
        kept = self._patches.get(key)
        if kept is None:
            kept = _Patch(key, tuple(build_patch(config, pod, self.settings, files)))
        self._built = kept
        return kept.ops

    def _template(self, outcome: Outcome, api_version: str) -> tuple[ReviewTemplate, _Patch | None]:
        """The encoded answer for ``outcome``, and the patch it is shared with, if any:
        the patch's own answer when the outcome is the plain injection of the patch
        ``_patch`` gave last (that object; nothing else of the response is set)."""
        built, self._built = self._built, None
        response = outcome.response
        if (
            built is None
            or response.patch is not built.ops
            or not response.allowed
            or response.code != 200
            or response.reason
            or response.message
            or response.warnings
        ):
            return template(response, api_version), None
        if not built.templates:
            # Both API versions at once, while the patch is as built: its operations are
            # handed out with every outcome that shares it, and a caller editing one must
            # not change another pod's answer.
            for version in API_VERSIONS:
                built.templates[version] = template(response, version)
            encoded = built.templates[api_version]
            # The bytes, the patch as objects and its inputs: four times the encoded
            # answer, as for a kept answer, for each of the two API versions.
            built.weight = _ENTRY_WEIGHT + 8 * (len(encoded.head) + len(encoded.tail))
        return built.templates[api_version], built

    def _keep(
        self,
        key: tuple[str, Hashable],
        outcome: Outcome,
        answer: ReviewTemplate,
        weight: int,
        patch: _Patch | None,
    ) -> None:
        # The answer in bytes (unless its patch's, weighed once with the patch), its
        # Outcome (the patch as objects, the message) and the shape's text and items:
        # four times the encoded answer covers the first two
        # (test_an_answer_weighs_at_least_what_it_keeps measures them).
        def needed() -> int:
            return weight + (patch.weight if patch is not None and not patch.users else 0)

        if needed() > self.budget:
            return
        while self._kept and (
            len(self._kept) >= self.capacity or self._weight + needed() > self.budget
        ):
            self._drop(self._kept.popitem(last=False)[1])
        if self._weight + needed() > self.budget:
            return  # its patch's last other user went: it no longer fits with the patch
        self._kept[key] = _Kept(outcome, answer, weight, patch)
        self._weight += weight
        if patch is not None:
            if not patch.users:
                self._patches[patch.key] = patch
                self._weight += patch.weight
            patch.users += 1

    def _drop(self, kept: _Kept) -> None:
        self._weight -= kept.weight
        patch = kept.patch
        if patch is not None:
            patch.users -= 1
            if not patch.users:
                del self._patches[patch.key]
                self._weight -= patch.weight


class _Kept(NamedTuple):
    """A kept answer: its outcome, its encoded answer, its weight (its patch's aside)
    and the patch it shares, if any. A tuple: one is made per fresh answer."""

    outcome: Outcome
    answer: ReviewTemplate
    weight: int
    patch: _Patch | None


def _for(outcome: Outcome, uid: str, pod: str) -> Outcome:
    """``outcome`` for another request and pod (``dataclasses.replace``, but without
    its field introspection: this runs for every reused answer)."""
    r = outcome.response
    response = AdmissionResponse(uid, r.allowed, r.patch, r.code, r.reason, r.message, r.warnings)
    return Outcome(response, outcome.outcome, outcome.reason, outcome.mode, outcome.keys, pod)


def _held(pod: PodView) -> int:
    """What a kept shape holds, in bytes (an upper estimate): each item (the inject
    label, the ``securekeys.io/`` annotations, the containers and their mount paths)
    and its text at four bytes a character, and the other texts the shape and the
    outcome hold (namespace, ServiceAccount, reserved volume names, the pod's name)."""
    containers = pod.containers + pod.init_containers
    items = 1 + len(containers)
    text = (
        len(pod.namespace)
        + len(pod.service_account)
        + len(pod.name)
        + len(pod.labels.get(ann.INJECT_LABEL) or "")
    )
    for name in pod.volume_names & RESERVED_VOLUMES:
        items += 1
        text += len(name)
    for key, value in pod.annotations.items():
        if key.startswith(ann.PREFIX):
            items += 1
            text += len(key) + len(value)
    for container in containers:
        items += len(container.mount_paths)
        text += len(container.name) + sum(map(len, container.mount_paths))
    return _ITEM_WEIGHT * items + 4 * text


def _items(pod: PodView) -> int:
    """Labels, annotations, containers and mount paths: what a kept shape holds."""
    containers = pod.containers + pod.init_containers
    return (
        len(pod.labels)
        + len(pod.annotations)
        + len(containers)
        + sum(len(c.mount_paths) for c in containers)
    )
