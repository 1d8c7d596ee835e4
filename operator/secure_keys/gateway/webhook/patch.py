"""The JSON patch that injects the key container into a pod. Pure.

``build_patch`` turns an ``InjectionConfig`` (what the pod asked for), the pod's view and
the gateway's settings into RFC 6902 ``add`` operations:

* a memory-backed ``emptyDir`` for the keys, with a size limit;
* a projected ServiceAccount token (audience ``securekeys.io``, 10 minutes) mounted in
  the key container only;
* the key container: a native sidecar (an init container with ``restartPolicy: Always``
  and a startupProbe that passes once every requested file exists), or an init container
  plus a regular sidecar (``classic``), or an init container alone (``init-only``);
  locked down (non-root, read-only root filesystem, no privilege escalation, no
  capabilities, RuntimeDefault seccomp) and small (resources in ``Resources``);
* with a broker CA configured, the CA's PEM in the ``securekeys.io/gateway-ca``
  annotation and a downward API volume that makes it the key container's
  ``SECUREKEYS_CA_FILE`` (no Secret or ConfigMap needed in the pod's namespace);
* ``SECUREKEYS_GATEWAY_URL`` (the broker) and, when the pod names one,
  ``SECUREKEYS_RELOAD_URL`` in the key container's environment;
* a read-only mount of the keys into each target container;
* the ``securekeys.io/injected`` annotation, so injection happens once.

The operations only ever add: nothing the pod author wrote is replaced or removed.

``patch_inputs`` names everything of the config and the pod that ``build_patch`` reads
(the settings aside), so that a caller with fixed settings may keep a patch per inputs
(``answers``: the first pods of many Deployments get one patch).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal, TypedDict

from secure_keys.core import sidecarenv
from secure_keys.gateway.webhook.injection import (
    CA_FILE_NAME,
    CA_MOUNT_PATH,
    CA_VOLUME,
    INIT_CONTAINER,
    KEYS_VOLUME,
    SIDECAR_CONTAINER,
    SIDECAR_KEYS_PATH,
    TOKEN_AUDIENCE,
    TOKEN_EXPIRATION_SECONDS,
    TOKEN_MOUNT_PATH,
    TOKEN_VOLUME,
    GatewaySettings,
    InjectionConfig,
    targets,
)
from secure_keys.gateway.webhook.pod import PodView
from secure_keys.kube import annotations as ann


class PatchOp(TypedDict):
    op: Literal["add"]
    path: str
    value: Any


# The probe runs in the key container every second until it passes; the file paths are
# positional arguments of a fixed script, never spliced into it.
PROBE_SCRIPT = 'for f in "$@"; do [ -e "$f" ] || exit 1; done'
PROBE_PERIOD_SECONDS = 1
PROBE_FAILURE_THRESHOLD = 120
"""Two minutes for the first delivery before the kubelet restarts the key container."""


def _escape(segment: str) -> str:
    """A JSON pointer segment (RFC 6901)."""
    return segment.replace("~", "~0").replace("/", "~1")


def _security_context(pod: PodView, settings: GatewaySettings) -> dict[str, Any]:
    uid = pod.run_as_user if pod.run_as_user else settings.default_uid
    gid = pod.run_as_group if pod.run_as_group else uid
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(
    name: str,
    config: InjectionConfig,
    pod: PodView,
    settings: GatewaySettings,
    files: tuple[str, ...],
    *,
    once: bool,
    native: bool,
) -> dict[str, Any]:
    env = [
        {"name": sidecarenv.KEYS, "value": ",".join(config.keys)},
        {"name": sidecarenv.FILES, "value": ",".join(files)},
        {"name": sidecarenv.DIR, "value": SIDECAR_KEYS_PATH},
        {"name": sidecarenv.TOKEN_FILE, "value": sidecarenv.TOKEN_PATH},
        {"name": sidecarenv.MODE, "value": config.mode},
        {"name": sidecarenv.POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": sidecarenv.POD_NAMESPACE,
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": sidecarenv.POD_UID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    if settings.broker_url:
        env.append({"name": sidecarenv.GATEWAY_URL, "value": settings.broker_url})
    if settings.broker_ca_pem:
        env.append({"name": sidecarenv.CA_FILE, "value": sidecarenv.CA_PATH})
    if config.reload_url is not None:
        env.append({"name": sidecarenv.RELOAD_URL, "value": config.reload_url})
    mounts = [
        {"name": KEYS_VOLUME, "mountPath": SIDECAR_KEYS_PATH},
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": True},
    ]
    if settings.broker_ca_pem:
        mounts.append({"name": CA_VOLUME, "mountPath": CA_MOUNT_PATH, "readOnly": True})
    resources = config.resources
    container: dict[str, Any] = {
        "name": name,
        "image": settings.sidecar_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.sidecar_command),
        "args": ["--once"] if once else [],
        "env": env,
        "resources": {
            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        },
        "securityContext": _security_context(pod, settings),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if native:
        container["restartPolicy"] = "Always"
        paths = [f"{SIDECAR_KEYS_PATH}/{f}" for f in files]
        container["startupProbe"] = {
            "exec": {"command": ["sh", "-c", PROBE_SCRIPT, "probe", *paths]},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": PROBE_FAILURE_THRESHOLD,
            "timeoutSeconds": 1,
        }
    return container


def _volumes(size: str, settings: GatewaySettings) -> list[dict[str, Any]]:
    volumes = [
        {"name": KEYS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": size}},
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "defaultMode": 0o444,  # mounted in the key container only
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                            "path": "token",
                        }
                    }
                ],
            },
        },
    ]
    if settings.broker_ca_pem:
        # The CA is public; the annotation carries it, so every namespace works without
        # a Secret or ConfigMap of ours in it. The volume's definition is immutable.
        item = {
            "path": CA_FILE_NAME,
            "fieldRef": {"fieldPath": f"metadata.annotations['{ann.GATEWAY_CA}']"},
        }
        volumes.append({"name": CA_VOLUME, "downwardAPI": {"defaultMode": 0o444, "items": [item]}})
    return volumes


def _add(path: str, value: Any) -> PatchOp:
    return {"op": "add", "path": path, "value": value}


def patch_inputs(config: InjectionConfig, pod: PodView, files: tuple[str, ...]) -> Hashable:
    """Everything ``build_patch(config, pod, settings, files)`` reads but the settings, as
    a hashable value: two calls with equal inputs and the same settings build equal
    patches (test_patch_memo checks every read of the pod against this)."""
    return (
        config,
        files,
        pod.has_volumes,
        pod.has_init_containers,
        pod.has_annotations,
        pod.run_as_user,
        pod.run_as_group,
        tuple([(field, index, c.has_mounts) for field, index, c in targets(config, pod)]),
    )


def build_patch(
    config: InjectionConfig, pod: PodView, settings: GatewaySettings, files: tuple[str, ...]
) -> list[PatchOp]:
    """The operations that inject ``config`` into ``pod``; ``files`` are the key files."""
    ops: list[PatchOp] = []
    volumes = _volumes(config.volume_size, settings)
    if pod.has_volumes:
        ops.extend(_add("/spec/volumes/-", v) for v in volumes)
    else:
        ops.append(_add("/spec/volumes", volumes))

    if config.mode == "native":
        init = _container(SIDECAR_CONTAINER, config, pod, settings, files, once=False, native=True)
    else:
        init = _container(INIT_CONTAINER, config, pod, settings, files, once=True, native=False)
    if not pod.has_init_containers:
        ops.append(_add("/spec/initContainers", [init]))
    elif config.init_first:
        ops.append(_add("/spec/initContainers/0", init))
    else:
        ops.append(_add("/spec/initContainers/-", init))
    shift = 1 if pod.has_init_containers and config.init_first else 0

    mount = {"name": KEYS_VOLUME, "mountPath": config.mount_path, "readOnly": True}
    for field, index, container in targets(config, pod):
        at = index + shift if field == "initContainers" else index
        base = f"/spec/{field}/{at}/volumeMounts"
        if container.has_mounts:
            ops.append(_add(f"{base}/-", mount))
        else:
            ops.append(_add(base, [mount]))

    if config.mode == "classic":
        sidecar = _container(
            SIDECAR_CONTAINER, config, pod, settings, files, once=False, native=False
        )
        ops.append(_add("/spec/containers/-", sidecar))

    written: dict[str, str] = {ann.INJECTED: config.mode}
    if settings.broker_ca_pem:
        written[ann.GATEWAY_CA] = settings.broker_ca_pem
    if pod.has_annotations:
        # "add" on a member that exists replaces it: a gateway-ca the author wrote is
        # overwritten with the gateway's own.
        ops.extend(_add(f"/metadata/annotations/{_escape(k)}", v) for k, v in written.items())
    else:
        ops.append(_add("/metadata/annotations", written))
    return ops
