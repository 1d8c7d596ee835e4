"""Keys delivered into real pods: webhook, key broker and sidecar together, on the node.

The controller (session fixture) seals the keys. The gateway runs as a subprocess with
the webhook and the key broker (``--kms-config``) under deploy/gateway-rbac.yaml plus
deploy/gateway-broker-rbac.yaml, bound to one unprivileged identity. The webhook injects
the real sidecar (``secure-keys-sidecar`` from the project image ``secure-keys:dev``,
rebuilt from these sources for the session), which reaches the broker at the URL the
gateway was given (on the local pod network, the gateway's Service by its DNS name; on
another cluster, ``$SECUREKEYS_E2E_CALLBACK_HOST``) and trusts the gateway's CA through
the ``securekeys.io/gateway-ca`` downward API file. The app container is busybox; the
test reads what it sees with ``kubectl exec``.

One pod walks the whole path, in order: the first delivery (a sealed canary equal to
its plaintext, fingerprints equal to the ApiKeys' status), a rotation pushed within
seconds with ``.previous`` holding the old value, a KeyRole that loses the pod's
ServiceAccount (files removed within seconds), and the canary searched for in every log
and in the stored pod (absent) and in the app's file (present: the positive control).
The unbinding also leaves a Warning Event ``KeyDenied`` on the pod.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.core import sidecarenv
from secure_keys_dev.stack import (
    GROUP,
    VERSION,
    ControllerProcess,
    GatewayProcess,
    create_apikey,
    eventually,
    get_apikey,
    request_rotation,
)
from tests.e2e.conftest import IDLE, KEYS, SIDECAR, PodEnvironment, Target
from tests.e2e.leaks import leaked
from tests.support.delivery import create_object, current_version, seal_for_cluster, wait_ready
from tests.support.kubectl import kubectl

POD = "reader"


# -- helpers ---------------------------------------------------------------------------


def _pod(pods: PodEnvironment) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "labels": {"securekeys.io/inject": "true"},
            "annotations": {"securekeys.io/keys": "canary,rotating"},
        },
        "spec": {
            "serviceAccountName": "app",
            "hostNetwork": pods.host_network,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "app",
                    "image": pods.busybox_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", IDLE],
                }
            ],
        },
    }


def _create_injected_pod(core: client.CoreV1Api, namespace: str, body: dict[str, Any]) -> None:
    """Create the pod once the webhook is in the admission chain and the gateway's caches
    hold this test's objects; a pod admitted without injection is deleted and retried."""
    seen: list[str] = []

    def attempt() -> bool:
        try:
            created = core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if (exc.status == 403 and "secure-keys:" in exc.body) or exc.status == 409:
                seen.append(str(exc.body)[:300])
                return False
            raise
        if "securekeys.io/injected" in (created.metadata.annotations or {}):
            return True
        seen.append("admitted without injection (webhook not called yet)")
        core.delete_namespaced_pod(POD, namespace, grace_period_seconds=0)
        eventually(lambda: _gone(core, namespace), 30, "the uninjected pod gone")
        return False

    eventually(attempt, 30, f"the pod injected (last: {seen[-1:]})")


def _gone(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_pod(POD, namespace)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def _sh(kube: Target, namespace: str, script: str) -> str:
    done = kubectl(kube, "exec", "-n", namespace, POD, "-c", "app", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _meta(kube: Target, namespace: str, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(_sh(kube, namespace, f"cat {KEYS}/{name}.meta.json"))
    return meta


def _logs(core: client.CoreV1Api, namespace: str, container: str) -> str:
    text: str = core.read_namespaced_pod_log(POD, namespace, container=container)
    return text


# -- the path, end to end ----------------------------------------------------------------


def test_pod_reads_its_keys_sees_a_rotation_and_loses_them_on_unbinding(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    pods: PodEnvironment,
    gateway: GatewayProcess,
    controller: ControllerProcess,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(admin_api)
    canary = f"sk_canary_{secrets.token_hex(16)}"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app"))
    )
    create_object(
        admin_api,
        namespace,
        "apikeys",
        seal_for_cluster(kube, admin_api, namespace, "canary", canary, tmp_path),
    )
    create_apikey(
        admin_api,
        namespace,
        "rotating",
        {"source": {"generate": {"length": 32}}, "rotation": {"gracePeriod": "10m"}},
    )
    create_object(
        admin_api,
        namespace,
        "keyroles",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KeyRole",
            "metadata": {"name": "app-keys"},
            "spec": {
                "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                "keys": {"names": ["canary", "rotating"]},
                "permissions": ["read"],
            },
        },
    )
    canary_version, canary_fingerprint = current_version(wait_ready(admin_api, namespace, "canary"))
    old_version, old_fingerprint = current_version(wait_ready(admin_api, namespace, "rotating"))

    # (a) The first delivery: the app starts only once the files are there.
    started = time.monotonic()
    _create_injected_pod(core, namespace, _pod(pods))

    def app_running() -> bool:
        pod = core.read_namespaced_pod(POD, namespace)
        statuses = pod.status.container_statuses or []
        return any(s.name == "app" and s.state.running for s in statuses)

    try:
        eventually(app_running, 120, "the app container running (keys on disk)")
    except AssertionError:
        sidecar = ""
        try:
            sidecar = _logs(core, namespace, "securekeys-sidecar")[-3000:]
        except ApiException as exc:
            sidecar = f"(no sidecar log: {exc.status})"
        raise AssertionError(
            f"sidecar log:\n{sidecar}\ngateway log:\n{gateway.log()[-3000:]}"
        ) from None
    print(f"app running {time.monotonic() - started:.1f} s after the pod was created")
    # The sidecar got its keys from the broker at the URL the gateway was given: on the
    # local pod network, a Service's DNS name reached from a pod off the host's network.
    stored = core.read_namespaced_pod(POD, namespace)
    assert bool(stored.spec.host_network) == pods.host_network
    sidecar_env = {
        e.name: e.value
        for c in stored.spec.init_containers or []
        if c.name == SIDECAR
        for e in c.env or []
    }
    assert sidecar_env[sidecarenv.GATEWAY_URL] == (gateway.broker_url or gateway.url)

    assert _sh(kube, namespace, f"cat {KEYS}/canary") == canary  # the positive control
    meta = _meta(kube, namespace, "canary")
    assert (meta["version"], meta["fingerprint"]) == (canary_version, canary_fingerprint)
    meta = _meta(kube, namespace, "rotating")
    assert (meta["version"], meta["fingerprint"]) == (old_version, old_fingerprint)
    old_value = _sh(kube, namespace, f"cat {KEYS}/rotating")
    assert len(old_value) >= 32
    assert "rotating.previous" not in _sh(kube, namespace, f"ls {KEYS}")

    # (b) A rotation reaches the pod within seconds; .previous holds the old value.
    request_rotation(admin_api, namespace, "rotating")

    def rotated() -> dict[str, Any] | None:
        obj = get_apikey(admin_api, namespace, "rotating")
        return obj if (obj.get("status") or {}).get("currentVersion", 0) > old_version else None

    new_version, new_fingerprint = current_version(
        eventually(rotated, 60, "the controller to rotate")
    )
    rotated_at = time.monotonic()
    eventually(
        lambda: _meta(kube, namespace, "rotating")["version"] == new_version,
        20,
        "the new version in the pod",
    )
    print(f"rotation in the pod's files {time.monotonic() - rotated_at:.2f} s after status")
    meta = _meta(kube, namespace, "rotating")
    assert meta["fingerprint"] == new_fingerprint
    assert meta["previousVersion"] == old_version
    new_value = _sh(kube, namespace, f"cat {KEYS}/rotating")
    assert new_value != old_value
    assert _sh(kube, namespace, f"cat {KEYS}/rotating.previous") == old_value

    # (c) The KeyRole no longer names the ServiceAccount: the files go within seconds,
    # and the pod gets a Warning Event naming the reason.
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "keyroles",
        "app-keys",
        {"spec": {"subjects": [{"kind": "ServiceAccount", "name": "someone-else"}]}},
    )
    unbound_at = time.monotonic()
    eventually(
        lambda: _sh(kube, namespace, f"ls -A {KEYS} | grep -v '^\\.\\.' || true").split() == [],
        20,
        "the key files removed",
    )
    print(f"files removed {time.monotonic() - unbound_at:.2f} s after the KeyRole changed")

    def denied_event() -> list[str]:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={POD}"
        ).items
        return [e.message for e in events if e.type == "Warning" and e.reason == "KeyDenied"]

    messages = eventually(denied_event, 20, "a KeyDenied Warning Event on the pod")
    assert any("KeyNotGranted" in m for m in messages), messages

    # (d) The canary: nowhere in the logs or the stored pod.
    def revoked_logged() -> str | None:
        log = _logs(core, namespace, "securekeys-sidecar")
        return log if '"revoked"' in log else None

    # The sidecar logs the revocation after it removes the files: wait for the line.
    sidecar_log = eventually(revoked_logged, 20, "the sidecar's revoked log line")
    assert '"key-state"' in sidecar_log  # the sidecar did log its deliveries
    stored = core.read_namespaced_pod(POD, namespace, _preload_content=False).data
    for where, text in (
        ("gateway log", gateway.log().encode()),
        ("sidecar log", sidecar_log.encode()),
        ("controller log", controller.log().encode()),
        ("stored pod", stored),
    ):
        assert not leaked(text, canary), f"canary found in the {where}"
    assert leaked(canary.encode(), canary)  # the search itself finds what it looks for
