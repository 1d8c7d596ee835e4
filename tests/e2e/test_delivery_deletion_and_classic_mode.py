"""Delivery on real pods when the ApiKey is deleted, and in classic mode: a deleted ApiKey
leaves the pod, and the classic mode (an init container plus a regular sidecar) delivers
and refreshes.

Same stack as ``tests/e2e/test_delivery.py`` and
``tests/e2e/test_delivery_tokens_outage_jobs_audit.py`` (the shared helpers are in
``tests/support/delivery.py``): the controller (session fixture) seals the keys, the gateway
runs the webhook and the key broker as a subprocess under its shipped RBAC, and the
webhook injects the real sidecar from the project image into pods on the local node. The
test reads what the app container sees with ``kubectl exec``.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys_dev.stack import (
    GROUP,
    VERSION,
    GatewayProcess,
    eventually,
    get_apikey,
    request_rotation,
)
from tests.e2e.conftest import KEYS, SIDECAR, PodEnvironment, Target
from tests.support.delivery import (
    current_version,
    exec_in,
    injected_pod,
    seal_for_cluster,
    setup_keys,
    start_injected_pod,
)


def _files(kube: Target, namespace: str, pod: str) -> list[str]:
    """The key volume's entries as the app sees them (the atomic-write ``..`` names
    left out)."""
    return exec_in(kube, namespace, pod, "app", f"ls -A {KEYS} | grep -v '^\\.\\.' || true").split()


def _version(kube: Target, namespace: str, pod: str, key: str) -> int:

    meta = json.loads(exec_in(kube, namespace, pod, "app", f"cat {KEYS}/{key}.meta.json"))
    version: int = meta["version"]
    return version


def _rotate(admin_api: client.ApiClient, namespace: str, name: str, old: int) -> int:
    request_rotation(admin_api, namespace, name)

    def rotated() -> dict[str, Any] | None:
        obj = get_apikey(admin_api, namespace, name)
        return obj if (obj.get("status") or {}).get("currentVersion", 0) > old else None

    version, _ = current_version(eventually(rotated, 60, f"the controller to rotate {name}"))
    return version


# -- 1. the ApiKey deleted under a reading pod -------------------------------------------


def test_deleted_apikey_leaves_the_pod_with_a_warning_event(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    pods: PodEnvironment,
    gateway: GatewayProcess,
) -> None:
    core = client.CoreV1Api(admin_api)
    setup_keys(admin_api, namespace, {"alpha": None})
    start_injected_pod(core, namespace, injected_pod(pods, "holder", "alpha"))
    old, _ = current_version(get_apikey(admin_api, namespace, "alpha"))
    new = _rotate(admin_api, namespace, "alpha", old)
    eventually(lambda: _version(kube, namespace, "holder", "alpha") == new, 20, "the rotation")
    # The positive control: all three files are there before the deletion.
    assert sorted(_files(kube, namespace, "holder")) == [
        "alpha",
        "alpha.meta.json",
        "alpha.previous",
    ]

    client.CustomObjectsApi(admin_api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys", "alpha"
    )
    deleted_at = time.monotonic()
    eventually(lambda: _files(kube, namespace, "holder") == [], 20, "the key files removed")
    print(f"files removed {time.monotonic() - deleted_at:.2f} s after the ApiKey was deleted")

    def denied() -> list[str]:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=holder"
        ).items
        return [e.message for e in events if e.type == "Warning" and e.reason == "KeyDenied"]

    messages = eventually(denied, 20, "a KeyDenied Warning Event on the pod")
    assert any(m.startswith("KeyNotFound") and '"alpha"' in m for m in messages), messages
    # The sidecar logs the revocation after it removes the files: wait for the line.
    eventually(
        lambda: '"revoked"' in core.read_namespaced_pod_log("holder", namespace, container=SIDECAR),
        20,
        "the sidecar's revoked log line",
    )
    # The pod itself keeps running; only its keys are gone.
    pod = core.read_namespaced_pod("holder", namespace)
    assert any(s.name == "app" and s.state.running for s in pod.status.container_statuses)


# -- 2. the classic mode: init container once, regular sidecar after -------------------


def test_classic_mode_fetches_once_then_keeps_the_file_fresh(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    pods: PodEnvironment,
    gateway: GatewayProcess,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(admin_api)

    canary = f"sk_classic_{secrets.token_hex(16)}"
    manifest = seal_for_cluster(kube, admin_api, namespace, "canary", canary, tmp_path)
    setup_keys(admin_api, namespace, {"canary": json.dumps(manifest), "rotating": None})
    body = injected_pod(pods, "classic", "canary,rotating", mode="classic")
    started = time.monotonic()
    start_injected_pod(core, namespace, body)
    print(f"classic app running {time.monotonic() - started:.1f} s after admission was ready")

    pod = core.read_namespaced_pod("classic", namespace)
    assert pod.metadata.annotations["securekeys.io/injected"] == "classic"
    inits = pod.spec.init_containers or []
    assert [c.name for c in inits] == ["securekeys-init"]
    assert inits[0].restart_policy is None
    assert "--once" in (inits[0].args or [])
    assert sorted(c.name for c in pod.spec.containers) == ["app", SIDECAR]
    (init_status,) = pod.status.init_container_statuses
    assert init_status.state.terminated is not None
    assert init_status.state.terminated.exit_code == 0

    # The app reads its key file (the sealed canary, equal to its plaintext).
    assert exec_in(kube, namespace, "classic", "app", f"cat {KEYS}/canary") == canary
    old, _ = current_version(get_apikey(admin_api, namespace, "rotating"))
    assert _version(kube, namespace, "classic", "rotating") == old
    before = exec_in(kube, namespace, "classic", "app", f"cat {KEYS}/rotating")

    # A rotation reaches the file: the regular sidecar keeps it fresh.
    def sidecar_running() -> bool:
        statuses = core.read_namespaced_pod("classic", namespace).status.container_statuses
        return any(s.name == SIDECAR and s.state.running for s in statuses or [])

    eventually(sidecar_running, 60, "the regular sidecar running")
    new = _rotate(admin_api, namespace, "rotating", old)
    rotated_at = time.monotonic()
    eventually(
        lambda: _version(kube, namespace, "classic", "rotating") == new,
        20,
        "the rotation in the classic pod",
    )
    print(f"rotation in the classic pod {time.monotonic() - rotated_at:.2f} s after status")
    after = exec_in(kube, namespace, "classic", "app", f"cat {KEYS}/rotating")
    assert after != before
    assert exec_in(kube, namespace, "classic", "app", f"cat {KEYS}/rotating.previous") == before
    init_log = core.read_namespaced_pod_log("classic", namespace, container="securekeys-init")
    assert canary not in init_log
