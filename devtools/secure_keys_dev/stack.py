"""Running the secure-keys stack on a cluster: CRDs, RBAC, and the controller process.

Used by the e2e tests, ``make demo`` and the benchmarks. ``install_crds`` applies
``crds/``; ``bind_controller_identity`` grants a user exactly the shipped controller
RBAC (``deploy/controller-rbac.yaml``); ``ControllerProcess`` runs the real controller
(``python -m secure_keys.controller``) as a subprocess with its log captured to a file,
so callers can crash it, restart it and search its output.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CONTROLLER_NAMESPACE = "secure-keys-system"
GROUP, VERSION = "securekeys.io", "v1alpha1"

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


def install_crds(api: client.ApiClient) -> None:
    """Create or update every CRD in crds/ and wait until each is Established."""
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            name = document["metadata"]["name"]
            names.append(name)
            try:
                extensions.create_custom_resource_definition(document)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = extensions.read_custom_resource_definition(name)
                document["metadata"]["resourceVersion"] = current.metadata.resource_version
                extensions.replace_custom_resource_definition(name, document)

    def established(name: str) -> bool:
        crd = extensions.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    for name in names:
        eventually(lambda n=name: established(n), what=f"CRD {name} Established")  # type: ignore[misc]


def apply_yaml(api: client.ApiClient, path: Path) -> None:
    """Create every object in a YAML file, tolerating ones that already exist."""
    for document in yaml.safe_load_all(path.read_text()):
        if not document:
            continue
        try:
            utils.create_from_dict(api, document)
        except utils.FailToCreateError as exc:
            if not all(e.status == 409 for e in exc.api_exceptions):
                raise


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise


def bind_controller_identity(api: client.ApiClient, user: str) -> None:
    """Grant ``user`` exactly the controller's roles from deploy/controller-rbac.yaml."""
    apply_yaml(api, REPO / "deploy" / "controller-rbac.yaml")
    rbac = client.RbacAuthorizationV1Api(api)
    subject = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
    bindings: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
        (
            rbac.create_cluster_role_binding,
            (),
            {
                "metadata": {"name": f"e2e-{user}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "secure-keys-controller",
                },
                "subjects": [subject],
            },
        ),
        (
            rbac.create_namespaced_role_binding,
            (CONTROLLER_NAMESPACE,),
            {
                "metadata": {"name": f"e2e-{user}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "secure-keys-controller",
                },
                "subjects": [subject],
            },
        ),
    ]
    for create, args, body in bindings:
        try:
            create(*args, body)
        except ApiException as exc:
            if exc.status != 409:
                raise


class ControllerProcess:
    """``python -m secure_keys.controller`` in a subprocess, logging JSON to a file."""

    def __init__(
        self,
        kubeconfig: Path,
        kms_config: Path,
        log_path: Path,
        *,
        namespaces: str | None = None,
        failpoints: str = "",
        workers: int = 8,
        metrics_port: int | None = None,
        lease: str | None = None,
        lease_duration: float = 15.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kms_config = kms_config
        self.log_path = log_path
        self.namespaces = namespaces
        self.failpoints = failpoints
        self.workers = workers
        self.metrics_port = metrics_port
        self.lease = lease
        self.lease_duration = lease_duration
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "secure_keys.controller",
            f"--kubeconfig={self.kubeconfig}",
            f"--kms-config={self.kms_config}",
            f"--namespace={CONTROLLER_NAMESPACE}",
            f"--workers={self.workers}",
            "--log-format=json",
        ]
        if self.namespaces:
            argv.append(f"--namespaces={self.namespaces}")
        if self.metrics_port is not None:
            argv.append(f"--metrics-port={self.metrics_port}")
        argv.append(f"--leader-elect={self.lease or 'false'}")
        argv.append(f"--lease-duration={self.lease_duration}")
        return argv

    def start(
        self, timeout: float = 60, *, wait: str = '"controller.started"'
    ) -> ControllerProcess:
        env = dict(os.environ)
        env.pop("SECUREKEYS_FAILPOINTS", None)
        if self.failpoints:
            env["SECUREKEYS_FAILPOINTS"] = self.failpoints
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter and module
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        eventually(
            lambda: self.exited() is not None or wait in self.log(),
            timeout,
            f"{wait} in the controller's log",
        )
        if self.exited() is not None:
            raise AssertionError(f"controller exited at startup:\n{self.log()[-4000:]}")
        return self

    def metrics(self) -> dict[str, float]:
        """The controller's Prometheus samples, by series (needs ``metrics_port``)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_exit(self, timeout: float = 60) -> int:
        if self.process is None:
            raise AssertionError("not started")
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def get_apikey(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys", name
    )
    return obj


def create_apikey(
    api: client.ApiClient,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ApiKey",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }
    obj: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys", body
    )
    return obj


def request_rotation(api: client.ApiClient, namespace: str, name: str) -> str:
    """What `secure-keys rotate` does: a fresh value in the rotate-now annotation."""
    value = datetime.datetime.now(datetime.UTC).isoformat()
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "apikeys",
        name,
        {"metadata": {"annotations": {"securekeys.io/rotate-requested-at": value}}},
    )
    return value


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def is_ready(obj: dict[str, Any]) -> bool:
    ready = condition(obj, "Ready")
    return ready is not None and ready.get("status") == "True"
