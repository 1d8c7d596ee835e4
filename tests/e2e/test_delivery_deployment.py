"""Keys delivered to every pod of a Deployment, rotated, and kept out of argv, env and etcd.

Same stack as ``tests/e2e/test_delivery.py``: the controller (session fixture) seals the
keys, the gateway runs the webhook and the key broker as a subprocess under its shipped
RBAC, and the webhook injects the real sidecar into the Deployment's three pods on the
local node. Two keys: ``canary`` (sealed by ``secure-keys seal``, raw) and ``rotating``
(generated, delivered as JSON, 20 s grace period).

Each app serves its own reload URL on its pod's loopback, as an app would: busybox
``httpd`` runs a CGI script that appends each POST's body to a file, which the test reads
with ``kubectl exec``; each pod's sidecar log says it called it. Three pods binding the
same port need a network namespace each, so the module skips on the host's network
(``SECUREKEYS_E2E_POD_NETWORK=0``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev.stack import (
    GROUP,
    VERSION,
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

REPLICAS = 3
GRACE_S = 20
LABEL = "app=keyed"
ENV_CONTROL = f"deployment-env-control-{secrets.token_hex(8)}"
"""Set in the app's environment: the positive control for the environ search."""
RELOADS = "/tmp/reloads"  # noqa: S108 - inside the app's container
"""Where the app's reload URL appends the body of each POST, one a line."""
APP = f"""mkdir -p /tmp/www/cgi-bin
cat > /tmp/www/cgi-bin/reload <<'EOF'
#!/bin/sh
head -c "$CONTENT_LENGTH" >> {RELOADS}
echo >> {RELOADS}
printf 'Content-Type: text/plain\\r\\n\\r\\n'
EOF
chmod 755 /tmp/www/cgi-bin/reload
httpd -p 127.0.0.1:8080 -h /tmp/www
{IDLE}"""
"""The app: busybox httpd serves the reload URL on the pod's loopback, then it idles."""
RELOAD_URL = "http://127.0.0.1:8080/cgi-bin/reload"


@dataclass(frozen=True)
class _Deployed:
    namespace: str
    canary: str
    pods: tuple[str, ...]


@pytest.fixture(scope="module")
def gateway(pods: PodEnvironment, gateway: GatewayProcess) -> GatewayProcess:
    """conftest's gateway, on clusters whose pods have a network namespace each."""
    if pods.host_network:
        pytest.skip("three apps serve a reload URL on one port: needs a pod network")
    return gateway


def _template(pods: PodEnvironment) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"app": "keyed", "securekeys.io/inject": "true"},
            "annotations": {
                "securekeys.io/keys": "canary,rotating",
                "securekeys.io/reload-url": RELOAD_URL,
            },
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
                    "command": ["/bin/sh", "-c", APP],
                    "env": [{"name": "CONTROL", "value": ENV_CONTROL}],
                }
            ],
        },
    }


def _admission_ready(core: client.CoreV1Api, namespace: str, template: dict[str, Any]) -> None:
    """A server-side dry run of the template comes back injected: the webhook is in the
    chain and the gateway's caches hold this namespace's objects."""
    body = {"apiVersion": "v1", "kind": "Pod", **template}
    body["metadata"] = {**template["metadata"], "name": "dry-run"}
    seen: list[str] = []

    def attempt() -> bool:
        try:
            created = core.create_namespaced_pod(namespace, body, dry_run="All")
        except ApiException as exc:
            if exc.status == 403 and "secure-keys:" in exc.body:
                seen.append(str(exc.body)[:300])
                return False
            raise
        return "securekeys.io/injected" in (created.metadata.annotations or {})

    eventually(attempt, 30, f"a dry run injected (last: {seen[-1:]})")


def _exec(kube: Target, namespace: str, pod: str, script: str, container: str = "app") -> str:
    done = kubectl(kube, "exec", "-n", namespace, pod, "-c", container, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _meta(kube: Target, namespace: str, pod: str, key: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(_exec(kube, namespace, pod, f"cat {KEYS}/{key}.meta.json"))
    return meta


def _json_value(kube: Target, namespace: str, pod: str, path: str) -> tuple[int, str]:
    document = json.loads(_exec(kube, namespace, pod, f"cat {path}"))
    assert document["apiKey"] == "rotating"
    return int(document["version"]), str(document["value"])


def _reloads(kube: Target, namespace: str, pod: str) -> list[dict[str, Any]]:
    """The bodies POSTed to ``pod``'s reload URL so far."""
    text = _exec(kube, namespace, pod, f"cat {RELOADS} 2>/dev/null || true")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _sidecar_log(core: client.CoreV1Api, namespace: str, pod: str) -> str:
    text: str = core.read_namespaced_pod_log(pod, namespace, container=SIDECAR)
    return text


@pytest.fixture(scope="module")
def deployed(
    kube: Target,
    admin_api: client.ApiClient,
    pods: PodEnvironment,
    gateway: GatewayProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[_Deployed]:
    """Namespace, keys, KeyRole and a 3-replica Deployment whose pods all run (keys on
    disk: the app starts only once the sidecar is ready)."""
    core = client.CoreV1Api(admin_api)
    namespace = f"sk-deploy-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        eventually(
            lambda: any(
                sa.metadata.name == "default"
                for sa in core.list_namespaced_service_account(namespace).items
            ),
            60,
            "the default ServiceAccount",
        )
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app"))
        )
        canary = f"sk_canary_{secrets.token_hex(16)}"
        tmp = tmp_path_factory.mktemp("deployment-seal")
        create_object(
            admin_api,
            namespace,
            "apikeys",
            seal_for_cluster(kube, admin_api, namespace, "canary", canary, tmp),
        )
        create_apikey(
            admin_api,
            namespace,
            "rotating",
            {
                "source": {"generate": {"length": 32}},
                "rotation": {"gracePeriod": f"{GRACE_S}s"},
                "delivery": {"format": "json"},
            },
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
        wait_ready(admin_api, namespace, "canary")
        wait_ready(admin_api, namespace, "rotating")
        template = _template(pods)
        _admission_ready(core, namespace, template)
        client.AppsV1Api(admin_api).create_namespaced_deployment(
            namespace,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "keyed"},
                "spec": {
                    "replicas": REPLICAS,
                    "selector": {"matchLabels": {"app": "keyed"}},
                    "template": template,
                },
            },
        )

        def all_running() -> tuple[str, ...] | None:
            items = core.list_namespaced_pod(namespace, label_selector=LABEL).items
            running = [
                p.metadata.name
                for p in items
                if p.metadata.deletion_timestamp is None
                and any(
                    s.name == "app" and s.state.running for s in p.status.container_statuses or []
                )
            ]
            return tuple(sorted(running)) if len(running) == REPLICAS else None

        started = time.monotonic()
        try:
            names = eventually(all_running, 180, f"{REPLICAS} pods' apps running (keys on disk)")
        except AssertionError:
            raise AssertionError(f"gateway log:\n{gateway.log()[-3000:]}") from None
        print(f"{REPLICAS} apps running {time.monotonic() - started:.1f} s after the Deployment")
        for name in names:
            pod = core.read_namespaced_pod(name, namespace)
            assert "securekeys.io/injected" in (pod.metadata.annotations or {}), name
        yield _Deployed(namespace, canary, names)
    finally:
        core.delete_namespace(namespace)


def test_every_replica_reads_its_keys_and_sees_one_rotation(
    kube: Target, admin_api: client.ApiClient, deployed: _Deployed
) -> None:
    core = client.CoreV1Api(admin_api)
    namespace = deployed.namespace
    canary_version, canary_fingerprint = current_version(get_apikey(admin_api, namespace, "canary"))
    old_version, old_fingerprint = current_version(get_apikey(admin_api, namespace, "rotating"))

    # Item 1: each app reads each key; values equal what was sealed; meta equals status.
    old_values: dict[str, str] = {}
    for pod in deployed.pods:
        assert _exec(kube, namespace, pod, f"cat {KEYS}/canary") == deployed.canary
        meta = _meta(kube, namespace, pod, "canary")
        assert (meta["version"], meta["fingerprint"]) == (canary_version, canary_fingerprint)
        meta = _meta(kube, namespace, pod, "rotating")
        assert (meta["version"], meta["fingerprint"]) == (old_version, old_fingerprint)
        version, value = _json_value(kube, namespace, pod, f"{KEYS}/rotating")
        assert version == old_version
        assert len(value) >= 32
        old_values[pod] = value
        assert "rotating.previous" not in _exec(kube, namespace, pod, f"ls {KEYS}")
    assert len(set(old_values.values())) == 1  # one key, the same value in every pod
    for pod in deployed.pods:
        assert _reloads(kube, namespace, pod) == []  # the first delivery is not a reload

    # Item 2: a rotation reaches every pod within seconds, .previous holds the old value.
    request_rotation(admin_api, namespace, "rotating")

    def rotated() -> dict[str, Any] | None:
        obj = get_apikey(admin_api, namespace, "rotating")
        return obj if (obj.get("status") or {}).get("currentVersion", 0) > old_version else None

    new_version, new_fingerprint = current_version(
        eventually(rotated, 60, "the controller to rotate")
    )
    rotated_at = time.monotonic()
    for pod in deployed.pods:
        eventually(
            # The new version and .previous may arrive in two pushes (the blob's watch
            # event can come before the status that archives the old version).
            lambda pod=pod: (  # type: ignore[misc]
                (meta := _meta(kube, namespace, pod, "rotating"))["version"] == new_version
                and meta.get("previousVersion") == old_version
            ),
            10,
            f"the new version and the previous one in {pod}",
        )
    print(f"rotation in all {REPLICAS} pods {time.monotonic() - rotated_at:.2f} s after status")
    for pod in deployed.pods:
        meta = _meta(kube, namespace, pod, "rotating")
        assert meta["fingerprint"] == new_fingerprint
        assert meta["previousVersion"] == old_version
        version, value = _json_value(kube, namespace, pod, f"{KEYS}/rotating")
        assert (version, value != old_values[pod]) == (new_version, True)
        previous = _json_value(kube, namespace, pod, f"{KEYS}/rotating.previous")
        assert previous == (old_version, old_values[pod])

    # The reload URL: one POST per pod, each naming the new version.
    for pod in deployed.pods:
        eventually(lambda pod=pod: _reloads(kube, namespace, pod), 10, f"{pod}'s reload call")  # type: ignore[misc]
    for pod in deployed.pods:
        # Each sidecar logs its call after the reload server answered: wait for the line.
        calls = eventually(
            lambda pod=pod: [  # type: ignore[misc]
                line
                for line in _sidecar_log(core, namespace, pod).splitlines()
                if '"reload-called"' in line
            ],
            20,
            f"{pod}'s reload-called log line",
        )
        assert len(calls) == 1, (pod, calls)
        assert '"rotated"' in calls[0]

    # The grace period ends: .previous disappears from every pod, with no further reload.
    for pod in deployed.pods:
        eventually(
            lambda pod=pod: "rotating.previous" not in _exec(kube, namespace, pod, f"ls {KEYS}"),  # type: ignore[misc]
            GRACE_S + 20,
            f".previous gone from {pod}",
        )
    gone_after = time.monotonic() - rotated_at
    print(f".previous gone from all pods {gone_after:.1f} s after the rotation")
    assert gone_after >= GRACE_S - 5  # not dropped early (the status lags the swap a little)
    for pod in deployed.pods:
        assert _meta(kube, namespace, pod, "rotating").get("previousVersion") is None
    for pod in deployed.pods:
        bodies = _reloads(kube, namespace, pod)
        assert bodies == [{"reason": "rotated", "keys": {"rotating": new_version}}], (pod, bodies)


def _found(haystack: bytes, secret: str) -> bool:
    """Whether ``secret`` is in ``haystack``, as a bool: a failing assert then does not
    print the forms it found (the canary) into the test's output."""
    return bool(leaked(haystack, secret))


def _pod_processes(uid: str) -> dict[int, tuple[bytes, bytes]]:
    """cmdline and environ of every host process in the pod's cgroup (this host runs the
    local node's containers; the test runs as root, so every environ is readable)."""
    marks = (uid, uid.replace("-", "_"))
    found: dict[int, tuple[bytes, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            if not any(mark in cgroup for mark in marks):
                continue
            found[int(entry.name)] = (
                (entry / "cmdline").read_bytes(),
                (entry / "environ").read_bytes(),
            )
        except OSError:
            continue  # the process ended meanwhile
    return found


def _etcd_bytes(kube: Target) -> bytes:
    assert kube.cluster is not None
    return b"".join(
        path.read_bytes()
        for path in sorted(kube.cluster.etcd_data_dir.rglob("*"))
        if path.is_file()
    )


def test_canary_absent_from_argv_environ_and_etcd_present_in_the_key_file(
    kube: Target, admin_api: client.ApiClient, deployed: _Deployed
) -> None:
    core = client.CoreV1Api(admin_api)
    namespace = deployed.namespace
    canary = deployed.canary
    # Delivered and rotated: the controller opens and re-seals it, the sidecars swap files.
    before = get_apikey(admin_api, namespace, "canary")["status"]["currentVersion"]
    request_rotation(admin_api, namespace, "canary")

    def rotated() -> int | None:
        version: int = get_apikey(admin_api, namespace, "canary")["status"]["currentVersion"]
        return version if version > before else None

    version = eventually(rotated, 60, "the canary rotated")
    for name in deployed.pods:
        eventually(
            lambda name=name: _meta(kube, namespace, name, "canary")["version"] == version,  # type: ignore[misc]
            10,
            f"the canary's new version in {name}",
        )
    for name in deployed.pods:
        # The positive control: the app's key file holds it, and the search finds it there.
        in_file = _exec(kube, namespace, name, f"cat {KEYS}/canary").encode()
        assert leaked(in_file, canary)
        uid = core.read_namespaced_pod(name, namespace).metadata.uid
        processes = _pod_processes(uid)
        argv = b"\n".join(cmdline for cmdline, _ in processes.values())
        # The search did find the pod's containers: the sidecar and the app's shell.
        assert b"secure-keys-sidecar" in argv or b"secure_keys_sidecar" in argv, argv
        assert b"while true; do sleep 1" in argv, argv
        environs = b"\n".join(environ for _, environ in processes.values())
        assert leaked(environs, ENV_CONTROL)  # the environ search sees what is there
        for pid, (cmdline, environ) in processes.items():
            assert not _found(cmdline, canary), f"canary in {name} pid {pid}'s cmdline"
            assert not _found(environ, canary), f"canary in {name} pid {pid}'s environ"
        # The same, as each container sees its own processes.
        for container in ("app", SIDECAR):
            seen = _exec(
                kube,
                namespace,
                name,
                "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ 2>/dev/null; done",
                container,
            )
            assert not _found(seen.encode(), canary), f"canary in {name}/{container}'s /proc"
    if kube.cluster is None:
        return
    control = f"plain-secret-control-{secrets.token_hex(8)}"
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="control"), string_data={"v": control}),
    )

    def etcd_with_control() -> bytes | None:
        data = _etcd_bytes(kube)
        return data if control.encode() in data else None

    etcd = eventually(etcd_with_control, 30, "the control Secret in etcd's files")
    assert leaked(etcd, control)  # the etcd search sees what is there
    assert not _found(etcd, canary), "the canary is in etcd's files"
