"""Helpers of the e2e delivery tests: keys sealed and Ready, injected pods running.

What the delivery modules share: ``seal_for_cluster`` runs ``secure-keys seal`` for the
cluster's recipient; ``setup_keys`` makes ServiceAccount ``app``, the ApiKeys and a
KeyRole granting them, and waits until each is Ready; ``injected_pod`` is a pod the
webhook injects, ``start_injected_pod`` creates one once a dry run comes back injected
and waits for its app container to run (keys on disk); ``exec_in`` reads what a
container sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GROUP,
    VERSION,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
)
from tests.e2e.conftest import IDLE, PodEnvironment, Target
from tests.support.kubectl import kubectl


def seal_for_cluster(
    kube: Target, admin_api: client.ApiClient, namespace: str, name: str, value: str, tmp: Path
) -> dict[str, Any]:
    """``secure-keys seal`` for the cluster's recipient (read from its ConfigMap, so no
    pin file is written): the manifest, whose plaintext only this test knows."""
    configmap = client.CoreV1Api(admin_api).read_namespaced_config_map(
        "secure-keys-recipient", CONTROLLER_NAMESPACE
    )
    recipient = tmp / "recipient.json"
    recipient.write_text(configmap.data["recipient.json"])
    sealed = subprocess.run(  # noqa: S603 - our interpreter and module
        [
            sys.executable,
            "-m",
            "secure_keys.cli",
            f"--kubeconfig={kube.kubeconfig}",
            "seal",
            name,
            "-n",
            namespace,
            f"--recipient-file={recipient}",
        ],
        input=value.encode(),
        capture_output=True,
        check=False,
    )
    assert sealed.returncode == 0, sealed.stderr.decode()
    manifest: dict[str, Any] = yaml.safe_load(sealed.stdout)
    return manifest


def create_object(api: client.ApiClient, namespace: str, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )


def wait_ready(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_apikey(api, namespace, name)
        return obj if is_ready(obj) else None

    return eventually(check, 60, f"ApiKey {name} Ready")


def current_version(obj: dict[str, Any]) -> tuple[int, str]:
    status = obj["status"]
    version = status["currentVersion"]
    record = next(v for v in status["versions"] if v["version"] == version)
    return version, record["fingerprint"]


def setup_keys(admin_api: client.ApiClient, namespace: str, keys: Mapping[str, str | None]) -> None:
    """ServiceAccount ``app``, one ApiKey per name (generated, or the given plaintext
    sealed by the CLI: the manifests come from ``seal_for_cluster``) and a KeyRole granting them."""
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app"))
    )
    for name, body in keys.items():
        if body is None:
            spec = {"source": {"generate": {"length": 32}}, "rotation": {"gracePeriod": "10m"}}
            create_apikey(admin_api, namespace, name, spec)
        else:
            create_object(admin_api, namespace, "apikeys", json.loads(body))
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
                "keys": {"names": list(keys)},
                "permissions": ["read"],
            },
        },
    )
    for name in keys:
        wait_ready(admin_api, namespace, name)


def app_pod_spec(pods: PodEnvironment, script: str, *, restart: str = "Always") -> dict[str, Any]:
    return {
        "serviceAccountName": "app",
        "hostNetwork": pods.host_network,
        "terminationGracePeriodSeconds": 5,
        "restartPolicy": restart,
        "containers": [
            {
                "name": "app",
                "image": pods.busybox_image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", script],
            }
        ],
    }


def injected_pod(
    pods: PodEnvironment,
    name: str,
    keys: str,
    *,
    mode: str | None = None,
    script: str = IDLE,
    restart: str = "Always",
) -> dict[str, Any]:
    annotations = {"securekeys.io/keys": keys}
    if mode is not None:
        annotations["securekeys.io/mode"] = mode
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"securekeys.io/inject": "true"},
            "annotations": annotations,
        },
        "spec": app_pod_spec(pods, script, restart=restart),
    }


def wait_admission_ready(core: client.CoreV1Api, namespace: str, body: dict[str, Any]) -> None:
    """Wait until a server-side dry run of ``body`` comes back injected: the webhook is
    in the chain and the gateway's caches hold this namespace's objects."""
    seen: list[str] = []

    def attempt() -> bool:
        try:
            created = core.create_namespaced_pod(namespace, body, dry_run="All")
        except ApiException as exc:
            if exc.status == 403 and "secure-keys:" in exc.body:
                seen.append(str(exc.body)[:300])
                return False
            raise
        if "securekeys.io/injected" in (created.metadata.annotations or {}):
            return True
        seen.append("admitted without injection")
        return False

    eventually(attempt, 30, f"a dry run injected (last: {seen[-1:]})")


def start_injected_pod(core: client.CoreV1Api, namespace: str, body: dict[str, Any]) -> None:
    """Create an injected pod and wait for its app container to run (keys on disk)."""
    wait_admission_ready(core, namespace, body)
    created = core.create_namespaced_pod(namespace, body)
    assert "securekeys.io/injected" in (created.metadata.annotations or {})
    name = body["metadata"]["name"]

    def running() -> bool:
        pod = core.read_namespaced_pod(name, namespace)
        return any(s.name == "app" and s.state.running for s in pod.status.container_statuses or [])

    eventually(running, 120, f"pod {name}'s app running (keys on disk)")


def exec_in(kube: Target, namespace: str, pod: str, container: str, script: str) -> str:
    done = kubectl(kube, "exec", "-n", namespace, pod, "-c", container, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout
