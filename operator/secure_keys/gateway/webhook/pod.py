"""A read-only view of the parts of a pod the webhook looks at, parsed defensively. Pure.

The API server sends well-formed pods, but the handler must not trust that: ``pod_view``
raises ``MalformedPod`` (one message, no pod content) for anything it cannot read, and
never anything else. The view keeps names and mount paths, never env values or images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_NAME = 253


class MalformedPod(ValueError):
    """The object under review cannot be read as a pod."""


@dataclass(frozen=True, slots=True)
class ContainerView:
    name: str
    mount_paths: tuple[str, ...]
    has_mounts: bool
    """Whether ``volumeMounts`` is present (decides between add-list and append)."""
    native_sidecar: bool = False
    """An init container with ``restartPolicy: Always``."""


@dataclass(frozen=True, slots=True)
class PodView:
    namespace: str
    name: str
    """``metadata.name``, else ``generateName`` (pods of a ReplicaSet have only that), cut
    to ``MAX_NAME`` characters: only the log line shows it, and the API server refuses
    longer names after admission anyway."""
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    has_annotations: bool
    service_account: str
    containers: tuple[ContainerView, ...]
    init_containers: tuple[ContainerView, ...]
    has_init_containers: bool
    volume_names: frozenset[str]
    has_volumes: bool
    run_as_user: int | None
    run_as_group: int | None
    share_process_namespace: bool = False
    """``spec.shareProcessNamespace``: every container sees every other's processes, and
    through ``/proc/<pid>/root`` their files."""


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedPod(f"{what} is not an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPod(f"{what} is not a list")
    return value


def _strings(value: object, what: str) -> dict[str, str]:
    mapping = _mapping(value, what)
    for key, item in mapping.items():
        if not (isinstance(key, str) and isinstance(item, str)):
            raise MalformedPod(f"{what} must map strings to strings")
    return dict(mapping)


def _uid(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedPod(f"{what} is not an integer")
    return value


def _mount_paths(mounts: list[Any], what: str, index: int) -> tuple[str, ...]:
    paths = []
    for position, mount in enumerate(mounts):
        if mount is None:
            continue  # reads as an empty object: no path
        if not isinstance(mount, dict):
            raise MalformedPod(f"{what}[{index}].volumeMounts[{position}] is not an object")
        path = mount.get("mountPath")
        if isinstance(path, str):
            paths.append(path)
    return tuple(paths)


def _containers(value: object, what: str) -> tuple[ContainerView, ...]:
    # Messages are worded only on failure: this runs for every admission review.
    views = []
    for index, item in enumerate(_list(value, what)):
        container = item if isinstance(item, dict) else _mapping(item, f"{what}[{index}]")
        name = container.get("name")
        if not isinstance(name, str):
            raise MalformedPod(f"{what}[{index}].name is not a string")
        mounts = container.get("volumeMounts")
        if mounts is not None and not isinstance(mounts, list):
            raise MalformedPod(f"{what}[{index}].volumeMounts is not a list")
        views.append(
            ContainerView(
                name,
                _mount_paths(mounts, what, index) if mounts else (),
                mounts is not None,
                container.get("restartPolicy") == "Always",
            )
        )
    return tuple(views)


def pod_view(obj: Mapping[str, Any] | None, namespace: str) -> PodView:
    """The view of ``obj`` (the request's object) in ``namespace`` (the request's)."""
    if obj is None:
        raise MalformedPod("the request carries no pod")
    metadata = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    annotations = metadata.get("annotations")
    name = metadata.get("name") or metadata.get("generateName") or ""
    if not isinstance(name, str):
        raise MalformedPod("metadata.name is not a string")
    name = name[:MAX_NAME]
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    if not isinstance(account, str):
        raise MalformedPod("spec.serviceAccountName is not a string")
    volumes = _list(spec.get("volumes"), "spec.volumes")
    volume_names = set()
    for index, volume in enumerate(volumes):
        if not isinstance(volume, dict):
            _mapping(volume, f"spec.volumes[{index}]")  # None reads as {}; else raises
            continue
        volume_name = volume.get("name")
        if isinstance(volume_name, str):
            volume_names.add(volume_name)
    security = _mapping(spec.get("securityContext"), "spec.securityContext")
    return PodView(
        namespace=namespace,
        name=name,
        labels=_strings(metadata.get("labels"), "metadata.labels"),
        annotations=_strings(annotations, "metadata.annotations"),
        has_annotations=annotations is not None,
        service_account=account,
        containers=_containers(spec.get("containers"), "spec.containers"),
        init_containers=_containers(spec.get("initContainers"), "spec.initContainers"),
        has_init_containers=spec.get("initContainers") is not None,
        volume_names=frozenset(volume_names),
        has_volumes=spec.get("volumes") is not None,
        run_as_user=_uid(security.get("runAsUser"), "spec.securityContext.runAsUser"),
        run_as_group=_uid(security.get("runAsGroup"), "spec.securityContext.runAsGroup"),
        share_process_namespace=spec.get("shareProcessNamespace") is True,
    )


@dataclass(frozen=True)
class EphemeralView:
    """What an ephemeral containers update (``kubectl debug``) could reach."""

    mounts: tuple[tuple[str, str], ...]
    """(ephemeral container, volume) for each of their volume mounts."""
    targets: tuple[tuple[str, str], ...]
    """(ephemeral container, ``targetContainerName``): the ephemeral container joins
    that container's process namespace, so it reads its files through /proc/<pid>/root."""
    readers: frozenset[str]
    """The pod's containers and init containers that mount any of ``volumes``."""
    annotations: Mapping[str, str]


def _volume_names(container: Mapping[str, Any], what: str) -> list[str]:
    names = []
    for position, mount in enumerate(_list(container.get("volumeMounts"), f"{what}.volumeMounts")):
        volume = _mapping(mount, f"{what}.volumeMounts[{position}]").get("name")
        if isinstance(volume, str):
            names.append(volume)
    return names


def ephemeral_view(obj: Mapping[str, Any] | None, volumes: frozenset[str]) -> EphemeralView:
    """The pod's ephemeral containers, and which of its containers mount ``volumes``.

    Raises ``MalformedPod`` as ``pod_view`` does. Linear in the pod.
    """
    if obj is None:
        raise MalformedPod("the request carries no pod")
    metadata = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    readers = set()
    for field in ("containers", "initContainers"):
        what = f"spec.{field}"
        for index, item in enumerate(_list(spec.get(field), what)):
            container = _mapping(item, f"{what}[{index}]")
            name = container.get("name")
            if isinstance(name, str) and volumes.intersection(
                _volume_names(container, f"{what}[{index}]")
            ):
                readers.add(name)
    mounts: list[tuple[str, str]] = []
    targets: list[tuple[str, str]] = []
    what = "spec.ephemeralContainers"
    for index, item in enumerate(_list(spec.get("ephemeralContainers"), what)):
        container = _mapping(item, f"{what}[{index}]")
        name = container.get("name")
        name = name if isinstance(name, str) else ""
        mounts.extend((name, v) for v in _volume_names(container, f"{what}[{index}]"))
        target = container.get("targetContainerName")
        if isinstance(target, str) and target:
            targets.append((name, target))
    return EphemeralView(
        mounts=tuple(mounts),
        targets=tuple(targets),
        readers=frozenset(readers),
        annotations=_strings(metadata.get("annotations"), "metadata.annotations"),
    )
