"""Owns the CLI's rollout verbs: ``rollout status``, ``rotate --wait`` and ``revoke``.

All three read the ApiKey's ``status.rollout`` and ``RolledOut`` condition, which the
gateway's broker replicas write (``kube/rollout.py``, docs/rollout.md); none of them
needs more than ``get`` on the ApiKey (``revoke`` also ``patch``, as ``rotate`` does,
and ``rollout status`` lists the namespace's pods when it may).

* ``rollout status NAME``: the version, ``<current>/<consumers>``, the pods behind, and
  each consuming pod with what status says of it.
* ``rotate NAME --wait [--timeout 5m]``: ask for a rotation, wait until the controller
  honoured it (``status.lastRotationRequest``) and every consuming pod holds the new
  version; print how long it took and how many pods. On timeout, name the pods still
  behind and exit 1.
* ``revoke NAME --version N [--force]``: end version N's grace period early: the broker
  stops offering it as ``.previous`` and every sidecar removes it by push (each removal
  is a ``key.grace_ended`` audit record). Refused while the rollout of the current
  version is not complete, naming the pods behind, unless ``--force``.

``-o json`` prints one JSON object for scripts. Nothing here prints a fingerprint or
material: versions, counts and pod names only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from secure_keys.cli import kubeapi
from secure_keys.cli import rotate as rotate_cmd
from secure_keys.core.accessreview import ListedKey
from secure_keys.kube import annotations as ann
from secure_keys.kube import rollout as fmt
from secure_keys.kube.client import APIKEYS, ApiError, KubeApi, Resource
from secure_keys.kube.names import GRACE_ENDED_ANNOTATION

PODS = Resource("", "v1", "pods")
POLL_SECONDS = 1.0


class RolloutRefused(Exception):
    """``revoke`` while pods are behind (the message names them), or a bad version."""


@dataclass(frozen=True)
class KeyRollout:
    """What the CLI reads of one ApiKey (parsed once)."""

    namespace: str
    name: str
    resource_version: str
    current_version: int
    last_rotation_request: str
    states: Mapping[int, str]
    summary: fmt.RolloutSummary | None
    replicas: Mapping[str, fmt.ReplicaView]
    grace_ended_through: int

    @property
    def measured(self) -> bool:
        """Whether a gateway has written the rollout of the current version."""
        return self.summary is not None and self.summary.version == self.current_version

    unconsumed: bool = False
    """No rollout was ever written and no pod asks for the key (the gateways write
    nothing for a key no pod consumes, ``gateway/broker/rollout.py``): seen in a pod
    list (``confirm_unconsumed``) or answered by the gateway, never assumed from an
    absent status."""

    @property
    def complete(self) -> bool:
        if self.unconsumed:
            return True
        return self.measured and self.summary is not None and self.summary.complete

    def behind(self) -> tuple[tuple[str, ...], int]:
        """The pods behind that status names, and how many more it counts."""
        if self.summary is None or not self.measured:
            return (), 0
        return self.summary.stragglers, self.summary.unnamed

    def to_json(self) -> dict[str, Any]:
        named, unnamed = self.behind()
        summary = self.summary if self.measured else None
        return {
            "apikey": self.name,
            "namespace": self.namespace,
            "version": self.current_version,
            "measured": self.measured,
            "complete": self.complete,
            "current": None if summary is None else summary.current,
            "consumers": None if summary is None else summary.consumers,
            "stragglers": list(named),
            "unnamedStragglers": unnamed,
            "rolledOutAt": None if summary is None else summary.rolled_out_at,
            "replicas": {k: v.to_json() for k, v in sorted(self.replicas.items())},
        }


def parse(obj: Mapping[str, Any]) -> KeyRollout:
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    current = status.get("currentVersion")
    states = {
        v["version"]: str(v.get("state", ""))
        for v in status.get("versions") or []
        if isinstance(v, dict) and type(v.get("version")) is int
    }
    annotations = metadata.get("annotations") or {}
    ended = annotations.get(GRACE_ENDED_ANNOTATION, "")
    parsed = fmt.parse_rollout(status)
    return KeyRollout(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        resource_version=str(metadata.get("resourceVersion", "")),
        current_version=current if type(current) is int else 0,
        last_rotation_request=str(status.get("lastRotationRequest") or ""),
        states=states,
        summary=parsed.summary,
        replicas=parsed.replicas,
        grace_ended_through=int(ended) if isinstance(ended, str) and ended.isdigit() else 0,
    )


def from_listed(namespace: str, key: ListedKey) -> KeyRollout:
    """A key's rollout as a list review answers it (``cli/access.py``): the version
    states, the merged summary and the last rotation request honoured, without the
    per-replica entries."""
    listed = key.rollout
    summary = None
    if listed is not None:
        summary = fmt.RolloutSummary(
            version=listed.version,
            consumers=listed.consumers,
            current=listed.current,
            stragglers=listed.stragglers,
            unnamed=listed.unnamed,
            rolled_out_at=listed.rolled_out_at or None,
        )
    return KeyRollout(
        namespace=namespace,
        name=key.name,
        resource_version="",
        current_version=key.current_version,
        last_rotation_request=key.last_rotation_request,
        states={v.version: v.state for v in key.versions},
        summary=summary,
        replicas={},
        grace_ended_through=0,
    )


def read_listed(target: kubeapi.Target, namespace: str, name: str) -> KeyRollout:
    """Through a list review: for whom a KeyRole, not RBAC, lets see the key."""
    from secure_keys.cli import access

    key = access.listed_key(target, namespace, name)
    if key is None:
        raise RolloutRefused(
            f"no KeyRole lets you read, list or rotate {namespace}/{name}, and RBAC does "
            "not let you get it"
        )
    return from_listed(namespace, key)


def read(target: kubeapi.Target, namespace: str, name: str) -> KeyRollout:
    """The ApiKey itself where RBAC lets the caller get it, else a list review."""
    try:
        return parse(kubeapi.call(target, lambda api: api.get(APIKEYS, namespace, name)))
    except ApiError as exc:
        if exc.status != 403:
            raise
    return read_listed(target, namespace, name)


def _shown(name: str) -> str:
    """A pod name from status as it may be printed: anyone who may patch the status
    could write a terminal escape there."""
    return "".join(c if c.isprintable() else "?" for c in name)


def _who(key: KeyRollout) -> str:
    named, unnamed = key.behind()
    text = ", ".join(_shown(n) for n in named)
    if unnamed:
        text += f"{' and ' if text else ''}{unnamed} more"
    return text


def pods_line(key: KeyRollout) -> str:
    if key.unconsumed:
        return f"version {key.current_version}: no pod consumes it"
    if not key.measured or key.summary is None:
        return f"version {key.current_version}: no gateway has reported its rollout yet"
    line = f"version {key.current_version}: {key.summary.pods} pods hold it"
    if not key.complete:
        line += f"; behind: {_who(key)}"
    return line


# -- rotate --wait -------------------------------------------------------------------------


@dataclass(frozen=True)
class Waited:
    key: KeyRollout
    seconds: float
    rotated: bool
    """Whether the controller honoured the request (a new current version)."""

    @property
    def ok(self) -> bool:
        return self.rotated and self.key.complete

    def to_json(self) -> dict[str, Any]:
        return {**self.key.to_json(), "rotated": self.rotated, "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        key = self.key
        if not self.rotated:
            return (
                f"timed out after {self.seconds:.0f}s: the controller has not rotated "
                f"{key.namespace}/{key.name} yet (see kubectl describe apikey {key.name})"
            )
        if self.ok and key.unconsumed:
            return (
                f"{key.namespace}/{key.name} version {key.current_version} is current "
                f"after {self.seconds:.1f}s; no pod consumes it"
            )
        if self.ok and key.summary is not None:
            return (
                f"{key.namespace}/{key.name} version {key.current_version} rolled out to "
                f"{key.summary.current}/{key.summary.consumers} pods in {self.seconds:.1f}s"
            )
        return f"timed out after {self.seconds:.0f}s: {pods_line(key)}"


def honoured(key: KeyRollout, request: str) -> bool:
    """Whether the controller has honoured ``request`` and promoted its version: it
    records the request in the same write that adds the new version as Pending, while
    the old one is still current (and fully rolled out)."""
    return key.last_rotation_request == request and "Pending" not in key.states.values()


def wait_rollout(
    fetch: Callable[[], KeyRollout],
    rotated_by: Callable[[KeyRollout], bool],
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    started: float | None = None,
) -> Waited:
    """Poll until the rotation is honoured (``rotated_by``) and rolled out, or ``timeout``."""
    start = clock() if started is None else started
    while True:
        key = fetch()
        rotated = rotated_by(key)
        waited = Waited(key, clock() - start, rotated)
        if waited.ok or waited.seconds >= timeout:
            return waited
        sleep(min(POLL_SECONDS, max(0.0, timeout - waited.seconds)))


def rotate_and_wait(args: argparse.Namespace, target: kubeapi.Target, namespace: str) -> int:
    started = time.monotonic()
    requested = rotate_cmd.rotate(args.name, namespace, target)

    def fetch() -> KeyRollout:
        if requested.through_role:  # no RBAC on ApiKeys needed
            return read_listed(target, namespace, args.name)
        return confirm_unconsumed(target, read(target, namespace, args.name))

    waited = wait_rollout(
        fetch,
        lambda key: honoured(key, requested.value),
        args.timeout,
        started=started,
    )
    _emit(args, waited.to_json(), waited.text(), error=not waited.ok)
    return 0 if waited.ok else 1


# -- revoke ------------------------------------------------------------------------------------


def plan_revoke(key: KeyRollout, version: int, *, force: bool) -> dict[str, Any] | None:
    """The ApiKey patch ending ``version``'s grace (``None``: already ended); raises
    ``RolloutRefused`` with the reason."""
    if version >= key.current_version or key.states.get(version) not in ("Archived", "Destroyed"):
        raise RolloutRefused(
            f"version {version} of {key.namespace}/{key.name} is not an archived version "
            f"(current is {key.current_version})"
        )
    if not key.complete and not force:
        raise RolloutRefused(
            f"refused: the rollout of version {key.current_version} is not complete "
            f"({pods_line(key)}); pods behind still use version {version}. "
            "Use --force to revoke anyway"
        )
    if key.grace_ended_through >= version:
        return None
    return {
        "metadata": {
            "resourceVersion": key.resource_version,
            "annotations": {GRACE_ENDED_ANNOTATION: str(version)},
        }
    }


def mark_unconsumed(key: KeyRollout, consuming: list[str]) -> KeyRollout:
    """``key``, marked unconsumed if no rollout was ever written for it and ``consuming``
    (a pod list's pods asking for it) is empty (pure)."""
    if consuming or key.summary is not None or key.replicas:
        return key
    return dataclasses.replace(key, unconsumed=True)


def confirm_unconsumed(target: kubeapi.Target, key: KeyRollout) -> KeyRollout:
    """``key``, marked unconsumed if no rollout was ever written for it and a list of
    its namespace's opted-in pods shows none asking for it. An absent rollout alone
    proves nothing (a gateway that cannot write status writes none either); a caller
    who may not list pods gets ``key`` unchanged."""
    if key.summary is not None or key.replicas or key.unconsumed:
        return key
    selector = f"{ann.INJECT_LABEL}=true"
    try:
        pods = kubeapi.call(
            target, lambda api: api.list(PODS, key.namespace, label_selector=selector)
        )
    except ApiError as exc:
        if exc.status != 403:
            raise
        return key
    return mark_unconsumed(key, consuming_pods(pods, key.name))


def revoke(args: argparse.Namespace, target: kubeapi.Target, namespace: str) -> int:
    key = confirm_unconsumed(target, read(target, namespace, args.name))
    patch = plan_revoke(key, args.version, force=args.force)
    if patch is not None:
        kubeapi.call(target, lambda api: api.patch(APIKEYS, namespace, args.name, patch))
    forced = " (forced)" if args.force and not key.complete else ""
    text = (
        f"version {args.version} of {namespace}/{args.name} revoked{forced}: every "
        "connected sidecar removes it now"
        if patch is not None
        else f"version {args.version} of {namespace}/{args.name} was already revoked"
    )
    _emit(args, {**key.to_json(), "revoked": args.version, "forced": bool(forced)}, text)
    return 0


# -- rollout status ------------------------------------------------------------------------


def consuming_pods(pods: Mapping[str, Any], key: str) -> list[str]:
    """Names of running pods that ask for ``key`` (pure)."""
    found = []
    for pod in pods.get("items") or []:
        metadata = pod.get("metadata") or {}
        asked = (metadata.get("annotations") or {}).get(ann.KEYS)
        phase = (pod.get("status") or {}).get("phase")
        if metadata.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
            continue
        if isinstance(asked, str) and key in ann.split_names(asked):
            found.append(str(metadata.get("name")))
    return sorted(found)


def pod_rows(key: KeyRollout, pods: list[str]) -> list[dict[str, str]]:
    """Each consuming pod and what status says of it: ``current``, ``behind``, or
    ``unknown`` (status counts more pods behind than it names)."""
    named, unnamed = key.behind()
    rows = []
    for pod in pods:
        if pod in named:
            state = "behind"
        elif key.complete or (key.measured and not unnamed):
            state = "current"
        else:
            state = "unknown"
        rows.append({"pod": pod, "state": state})
    return rows


def status(args: argparse.Namespace, target: kubeapi.Target, namespace: str) -> int:
    async def fetch(api: KubeApi) -> tuple[dict[str, Any], dict[str, Any] | None]:
        obj = await api.get(APIKEYS, namespace, args.name)
        try:
            pods = await api.list(PODS, namespace, label_selector=f"{ann.INJECT_LABEL}=true")
        except ApiError as exc:
            if exc.status != 403:
                raise
            pods = None  # may not list pods: status alone
        return obj, pods

    try:
        obj, pods = kubeapi.call(target, fetch)
        key = parse(obj)
    except ApiError as exc:
        if exc.status != 403:
            raise
        key, pods = read_listed(target, namespace, args.name), None  # a KeyRole's grantee
    consuming = consuming_pods(pods, key.name) if pods is not None else None
    if consuming is not None:
        key = mark_unconsumed(key, consuming)
    rows = pod_rows(key, consuming) if consuming is not None else None
    lines = [f"{namespace}/{key.name} {pods_line(key)}"]
    if key.complete and key.summary is not None and key.summary.rolled_out_at:
        lines.append(f"rolled out at {key.summary.rolled_out_at}")
    for replica, view in sorted(key.replicas.items()):
        lines.append(
            f"  gateway {replica}: {view.current}/{view.connected} of its streams hold "
            f"version {view.version}"
        )
    if rows is not None:
        lines.append("POD\tSTATE")
        lines += [f"{_shown(r['pod'])}\t{r['state']}" for r in rows]
    _emit(args, {**key.to_json(), "pods": rows}, "\n".join(lines))
    return 0 if key.complete else 1


def _emit(
    args: argparse.Namespace, document: dict[str, Any], text: str, *, error: bool = False
) -> None:
    if getattr(args, "output", None) == "json":
        print(json.dumps(document, sort_keys=True))
    elif error:
        print(f"secure-keys: {text}", file=sys.stderr)
    else:
        print(text)


def run(args: argparse.Namespace) -> int:
    target = kubeapi.load_target(args.kubeconfig)
    namespace = args.namespace or target.namespace
    if args.command == "revoke":
        return revoke(args, target, namespace)
    if args.command == "rotate":
        return rotate_and_wait(args, target, namespace)
    return status(args, target, namespace)
