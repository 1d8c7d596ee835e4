"""Owns the reuse of admission answers between pods of the same shape.

The pods of a Deployment, a Job or a DaemonSet reach the webhook as AdmissionReviews
that differ in the request's uid and in the name the API server gives each pod's
ServiceAccount token volume (``kube-api-access-xxxxx``); they arrive in bursts, when a
workload scales or rolls out. The answer to each is a function of what
``mutate.admit_pod`` reads: the ``PodView``, the gateway's settings (fixed for the
process) and what the caches hold. So ``Decisions`` keeps, per *shape* (the API version
and the ``PodView``, in which only the volume names the injection reserves count, since
they are the only ones the pipeline looks at), the ``Outcome`` and the encoded answer
with a slot for the uid. A later pod of that shape gets the same answer with its own
uid, byte for byte what the pipeline would have given it.

What the caches hold changes the answer (a KeyRole removed, an ApiKey created): every
kept answer is dropped as soon as any cache's generation moves, before the next
request is answered. Nothing is kept until the caches have synced, and requests that
are not a readable pod CREATE are never kept. At most ``capacity`` shapes are kept
(oldest dropped first); a shape holds names, labels, annotations and mount paths of
the pod, never key material (the gateway has none).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace

from secure_keys.gateway.caches import CacheSnapshot, GatewayCaches
from secure_keys.gateway.injection import RESERVED_VOLUMES, GatewaySettings
from secure_keys.gateway.mutate import Outcome, admit, admit_pod
from secure_keys.gateway.pod import MalformedPod, PodView, pod_view
from secure_keys.gateway.review import AdmissionRequest, ReviewTemplate, encode, template

DEFAULT_CAPACITY = 256


def pod_shape(pod: PodView) -> Hashable:
    """Everything of ``pod`` that the pipeline reads, as a hashable value.

    Every field of ``PodView`` is here (a test fails when a field is added and not
    placed here); of the volume names, only those ``validate`` looks for.
    """
    return (
        pod.namespace,
        pod.name,
        frozenset(pod.labels.items()),
        frozenset(pod.annotations.items()),
        pod.has_annotations,
        pod.service_account,
        pod.containers,
        pod.init_containers,
        pod.has_init_containers,
        pod.volume_names & RESERVED_VOLUMES,
        pod.has_volumes,
        pod.run_as_user,
        pod.run_as_group,
    )


class Decisions:
    """The admission pipeline over the gateway's caches, reusing answers per pod shape."""

    def __init__(
        self,
        caches: GatewayCaches,
        settings: GatewaySettings,
        *,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.caches = caches
        self.settings = settings
        self.capacity = capacity
        self._snapshot = CacheSnapshot(caches)
        self._kept: dict[tuple[str, Hashable], tuple[Outcome, ReviewTemplate]] = {}
        self._generation: tuple[int, ...] = ()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

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
        generation = self.caches.generation
        if generation != self._generation:
            self._kept.clear()
            self._generation = generation
        key = (request.api_version, pod_shape(pod))
        kept = self._kept.get(key)
        if kept is None:
            self.misses += 1
            outcome = admit_pod(request.uid, pod, self._snapshot, self.settings, synced=True)
            answer = template(outcome.response, request.api_version)
            if len(self._kept) >= self.capacity:
                del self._kept[next(iter(self._kept))]
            self._kept[key] = (outcome, answer)
            return outcome, answer.fill(request.uid)
        self.hits += 1
        outcome, answer = kept
        response = replace(outcome.response, uid=request.uid)
        return replace(outcome, response=response), answer.fill(request.uid)
