"""The admission pipeline, composed: decode -> should-inject -> parse -> validate ->
authorize -> patch. Pure: the caches come in as a ``Snapshot``.

``admit`` answers one decoded request with an ``Outcome``: the AdmissionResponse and the
fields of the request's canonical log line (outcome, reason, mode, keys). Outcomes:

* ``ignored``: not a pod CREATE nor an ephemeral container update (the webhook is
  registered for nothing else);
* ``allowed``: an ephemeral container update that mounts none of our volumes;
* ``skipped``: the pod does not opt in, or lives in an excluded namespace;
* ``injected``: allowed with the patch;
* ``unchanged``: already injected (the annotation is present) and still authorized;
* ``denied``: an invalid annotation, an unknown key, an unbound ServiceAccount, a pod
  that cannot be read, a shared process namespace the pod did not accept, an ephemeral
  container mounting our volumes, or caches not synced yet (the gateway fails closed).

A denial's message joins at most ``MAX_PROBLEMS`` problems (and says how many more), each
quoting at most a short prefix of the pod's own text (``injection.quote``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from secure_keys.gateway.webhook.authorize import Snapshot, Verdict, authorize
from secure_keys.gateway.webhook.injection import (
    RESERVED_VOLUMES,
    GatewaySettings,
    InjectionConfig,
    InvalidAnnotations,
    isolation_problems,
    parse,
    quote,
    should_inject,
    validate,
)
from secure_keys.gateway.webhook.patch import PatchOp, build_patch
from secure_keys.gateway.webhook.pod import MalformedPod, PodView, ephemeral_view, pod_view
from secure_keys.gateway.webhook.review import AdmissionRequest, AdmissionResponse
from secure_keys.kube import annotations as ann

DENIED_PREFIX = "secure-keys: "
MAX_PROBLEMS = 8
MAX_SERVICE_ACCOUNT = 253


@dataclass(frozen=True, slots=True)
class Outcome:
    response: AdmissionResponse
    outcome: str
    reason: str = ""
    mode: str = ""
    keys: tuple[str, ...] = ()
    pod: str = ""


def _deny(
    uid: str,
    code: int,
    reason: str,
    problems: tuple[str, ...] | list[str],
    pod: str,
    keys: tuple[str, ...] = (),
) -> Outcome:
    shown = list(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
    message = DENIED_PREFIX + "; ".join(shown)
    response = AdmissionResponse(uid, allowed=False, code=code, reason=reason, message=message)
    return Outcome(response, "denied", reason, keys=keys, pod=pod)


def admit(
    request: AdmissionRequest, snapshot: Snapshot, settings: GatewaySettings, *, synced: bool
) -> Outcome:
    """The answer to one AdmissionReview request."""
    if request.is_ephemeral_update:
        return admit_ephemeral(request)
    if not request.is_pod_create:
        return Outcome(AdmissionResponse(request.uid, allowed=True), "ignored", "not-pod-create")
    try:
        pod = pod_view(request.object, request.namespace)
    except MalformedPod as exc:
        return _deny(request.uid, 400, "MalformedPod", [f"cannot read the pod: {exc}"], "")
    return admit_pod(request.uid, pod, snapshot, settings, synced=synced)


def admit_ephemeral(request: AdmissionRequest) -> Outcome:
    """An ephemeral container added to an opted-in pod (``kubectl debug``) may not mount
    the keys, the key container's token or its CA: it would read them in its logs. Nor
    may it target (``targetContainerName``, ``kubectl debug --target``) a container that
    mounts them, whose files it would read through /proc/<pid>/root, unless the pod
    accepts that every container may read its keys."""
    try:
        view = ephemeral_view(request.object, RESERVED_VOLUMES)
    except MalformedPod as exc:
        return _deny(request.uid, 400, "MalformedPod", [f"cannot read the pod: {exc}"], "")
    name = ""
    if isinstance(request.object, dict):
        metadata = request.object.get("metadata")
        name = metadata.get("name", "") if isinstance(metadata, dict) else ""
    name = name if isinstance(name, str) else ""
    taken = [(c, v) for c, v in view.mounts if v in RESERVED_VOLUMES]
    if taken:
        problems = [
            f"ephemeral container {quote(c)} may not mount volume {v}, which holds the "
            "pod's keys or the key container's credentials"
            for c, v in taken[:MAX_PROBLEMS]
        ]
        return _deny(request.uid, 403, "EphemeralMountDenied", problems, name[:253])
    if view.annotations.get(ann.SHARED_PROCESSES) != "true":
        aimed = [(c, t) for c, t in view.targets if t in view.readers]
        if aimed:
            problems = [
                f"ephemeral container {quote(c)} may not target container {quote(t)}, "
                "which reads the pod's keys or holds the key container's credentials: it "
                "would read them through /proc/<pid>/root; debug another container, or "
                f'set {ann.SHARED_PROCESSES}: "true" to accept that every container of '
                "the pod may read its keys"
                for c, t in aimed[:MAX_PROBLEMS]
            ]
            return _deny(request.uid, 403, "EphemeralTargetDenied", problems, name[:253])
    response = AdmissionResponse(request.uid, allowed=True)
    return Outcome(response, "allowed", "ephemeral-container", pod=name[:253])


def admit_pod(
    uid: str,
    pod: PodView,
    snapshot: Snapshot,
    settings: GatewaySettings,
    *,
    synced: bool,
    authorize_with: Callable[[str, str, tuple[str, ...]], Verdict] | None = None,
    patch_with: Callable[[InjectionConfig, PodView, tuple[str, ...]], tuple[PatchOp, ...]]
    | None = None,
) -> Outcome:
    """The answer to a pod CREATE (request ``uid``) whose pod reads as ``pod``.

    Nothing else of the request is read: the answer is a function of ``pod``, the
    snapshot and the settings (``answers`` relies on that to reuse it).
    ``authorize_with``: ``authorize`` over ``snapshot`` as a function of the namespace,
    the ServiceAccount and the keys (``answers`` passes one that keeps its verdicts).
    ``patch_with``: ``build_patch`` with ``settings``, as a function of the config, the
    pod and the key files (``answers`` passes one that keeps patches per
    ``patch.patch_inputs``). Both are called only once every check has passed.
    """
    skip = should_inject(pod, settings)
    if skip is not None:
        warnings = (skip.warning,) if skip.warning else ()
        response = AdmissionResponse(uid, allowed=True, warnings=warnings)
        return Outcome(response, "skipped", skip.reason, pod=pod.name)
    try:
        config = parse(pod.annotations, settings)
    except InvalidAnnotations as exc:
        return _deny(uid, 400, "InvalidAnnotation", exc.problems, pod.name)
    problems = isolation_problems(config, pod)
    if problems:
        return _deny(uid, 403, "SharedProcessNamespace", problems, pod.name, config.keys)
    if len(pod.service_account) > MAX_SERVICE_ACCOUNT:
        problems = [f"spec.serviceAccountName {quote(pod.service_account)} is too long"]
        return _deny(uid, 400, "MalformedPod", problems, pod.name, config.keys)
    injected = ann.INJECTED in pod.annotations
    if not injected:
        problems = validate(config, pod)
        if problems:
            return _deny(uid, 400, "InvalidAnnotation", problems, pod.name, config.keys)
    if not synced:
        problems = ["the gateway's caches are not synced yet; try again in a few seconds"]
        return _deny(uid, 503, "NotReady", problems, pod.name, config.keys)
    if authorize_with is None:
        verdict = authorize(pod.namespace, pod.service_account, config.keys, snapshot)
    else:
        verdict = authorize_with(pod.namespace, pod.service_account, config.keys)
    if not verdict.allowed:
        return _deny(uid, 403, verdict.reason, verdict.problems, pod.name, config.keys)
    if injected:
        response = AdmissionResponse(uid, allowed=True)
        return Outcome(
            response, "unchanged", "already-injected", config.mode, config.keys, pod.name
        )
    if patch_with is None:
        patch = tuple(build_patch(config, pod, settings, verdict.files))
    else:
        patch = patch_with(config, pod, verdict.files)
    response = AdmissionResponse(uid, allowed=True, patch=patch)
    return Outcome(response, "injected", "", config.mode, config.keys, pod.name)
