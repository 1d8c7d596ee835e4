"""Running the secure-keys stack on a cluster: CRDs, RBAC, and the controller process.

Used by the e2e tests, ``make demo`` and the benchmarks. ``install_crds`` applies
``crds/`` and the admission policy that guards them (``deploy/secretref-policy.yaml``);
``bind_controller_identity`` grants a user exactly the shipped controller
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
    """Create or update every CRD in crds/, wait until each is Established, then install
    the secretRef admission policy (an ApiKey cluster without it has a confused deputy)."""
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
    install_secretref_policy(api)
    install_access_policy(api)


SECRETREF_POLICY = REPO / "deploy" / "secretref-policy.yaml"
ACCESS_POLICY = REPO / "deploy" / "access-policy.yaml"


def install_secretref_policy(api: client.ApiClient) -> None:
    """Create or replace the ValidatingAdmissionPolicy (and its binding) that makes a
    secretRef require the requester's own access to the Secret. The API server enforces it
    within a second or so of this returning (its admission plugin learns of it by watch)."""
    install_admission_policy(api, SECRETREF_POLICY)


def install_access_policy(api: client.ApiClient) -> None:
    """The chart's KeyAccessReview policy (dry runs only) and the reader ClusterRole bound
    to every authenticated identity (deploy/access-policy.yaml)."""
    policies = [d for d in yaml.safe_load_all(ACCESS_POLICY.read_text()) if d]
    admission = [d for d in policies if d["kind"].startswith("ValidatingAdmissionPolicy")]
    for document in (d for d in policies if d not in admission):
        try:
            utils.create_from_dict(api, document)
        except utils.FailToCreateError as exc:
            if not all(e.status == 409 for e in exc.api_exceptions):
                raise
    _install_admission_documents(api, admission)


def install_admission_policy(api: client.ApiClient, path: Path) -> None:
    """Create or replace each ValidatingAdmissionPolicy and binding in ``path``."""
    _install_admission_documents(api, [d for d in yaml.safe_load_all(path.read_text()) if d])


def _install_admission_documents(api: client.ApiClient, documents: list[dict[str, Any]]) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    kinds: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
        "ValidatingAdmissionPolicy": (
            admission.create_validating_admission_policy,
            admission.read_validating_admission_policy,
            admission.replace_validating_admission_policy,
        ),
        "ValidatingAdmissionPolicyBinding": (
            admission.create_validating_admission_policy_binding,
            admission.read_validating_admission_policy_binding,
            admission.replace_validating_admission_policy_binding,
        ),
    }
    for document in documents:
        create, read, replace = kinds[document["kind"]]
        name = document["metadata"]["name"]
        try:
            create(document)
        except ApiException as exc:
            if exc.status != 409:
                raise
            document["metadata"]["resourceVersion"] = read(name).metadata.resource_version
            replace(name, document)


def apply_yaml(api: client.ApiClient, path: Path) -> None:
    """Create every object in a YAML file, tolerating ones that already exist."""
    for document in yaml.safe_load_all(path.read_text()):
        if document:
            apply_yaml_document(api, document)


def apply_yaml_document(api: client.ApiClient, document: dict[str, Any]) -> None:
    """Create one object, tolerating one that already exists."""
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


def event_reasons(
    api: client.ApiClient, namespace: str, name: str, *, type_: str | None = None
) -> set[str]:
    """The reasons of the Events about object ``name`` (of type ``type_``, if given)."""
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return {e.reason for e in events.items if type_ is None or e.type == type_}


def wait_event_reasons(
    api: client.ApiClient,
    namespace: str,
    name: str,
    reasons: set[str],
    *,
    type_: str | None = None,
    timeout: float = 30.0,
) -> set[str]:
    """Wait until Events with all of ``reasons`` exist about ``name``; their reasons.

    The controller posts an Event after the status write that a test usually waits for:
    listing the Events at once races it (CI under load lost that race)."""
    return eventually(
        lambda: (
            found
            if reasons <= (found := event_reasons(api, namespace, name, type_=type_))
            else None
        ),
        timeout,
        f"Events {sorted(reasons)} about {namespace}/{name}",
    )


def is_ready(obj: dict[str, Any]) -> bool:
    ready = condition(obj, "Ready")
    return ready is not None and ready.get("status") == "True"


# -- the gateway (mutating webhook) ----------------------------------------------------

GATEWAY_RBAC = REPO / "deploy" / "gateway-rbac.yaml"
GATEWAY_BROKER_RBAC = REPO / "deploy" / "gateway-broker-rbac.yaml"
GATEWAY_ACCESS_RBAC = REPO / "deploy" / "gateway-access-rbac.yaml"
GATEWAY_WEBHOOK = REPO / "deploy" / "gateway-webhook.yaml"


def bind_gateway_identity(api: client.ApiClient, user: str, *, broker: bool = False) -> None:
    """Grant ``user`` exactly the gateway's ClusterRole from deploy/gateway-rbac.yaml and,
    with ``broker``, the key broker's from deploy/gateway-broker-rbac.yaml as well."""
    roles = [(GATEWAY_RBAC, "secure-keys-gateway", f"e2e-{user}")]
    if broker:
        roles.append((GATEWAY_BROKER_RBAC, "secure-keys-gateway-broker", f"e2e-{user}-broker"))
    for path, role, binding in roles:
        apply_yaml(api, path)
        _bind_cluster_role(api, user, role, binding)
    if broker:
        # People's MFA Secrets, in the release namespace (deploy/gateway-access-rbac.yaml).
        documents = [d for d in yaml.safe_load_all(GATEWAY_ACCESS_RBAC.read_text()) if d]
        for document in documents:
            if document["kind"] == "Role":
                apply_yaml_document(api, document)
        for namespace, role in (
            (CONTROLLER_NAMESPACE, "secure-keys-gateway-access"),
            ("kube-system", "extension-apiserver-authentication-reader"),
        ):
            try:
                client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
                    namespace,
                    {
                        "metadata": {"name": f"e2e-{user}-access"},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Role",
                            "name": role,
                        },
                        "subjects": [
                            {
                                "apiGroup": "rbac.authorization.k8s.io",
                                "kind": "User",
                                "name": user,
                            }
                        ],
                    },
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise


def _bind_cluster_role(api: client.ApiClient, user: str, role: str, binding: str) -> None:
    try:
        client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
            {
                "metadata": {"name": binding},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            }
        )
    except ApiException as exc:
        if exc.status != 409:
            raise


def write_gateway_tls(directory: Path, host: str, dns_names: tuple[str, ...] = ()) -> bytes:
    """A CA and a serving pair for the gateway at ``host`` (tls.crt, tls.key and the CA's
    ca.crt in ``directory``; the certificate also names ``localhost`` and ``dns_names``,
    such as the Service it is reached through); returns the CA's PEM, the webhook's
    caBundle and the broker's ``--broker-ca-file``."""
    from secure_keys_dev import pki  # only the gateway needs it here

    ca = pki.CertificateAuthority.generate("secure-keys-gateway-ca")
    pair = ca.issue_server("secure-keys-gateway", ips=(host,), dns_names=("localhost", *dns_names))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    key = directory / "tls.key"
    key.touch(mode=0o600)
    key.write_bytes(pair.key_pem)
    return ca.cert_pem


def register_gateway_webhook(
    api: client.ApiClient,
    url: str,
    ca_pem: bytes,
    *,
    name: str = "secure-keys-gateway",
    service: tuple[str, str, int] | None = None,
) -> str:
    """Create (or replace) deploy/gateway-webhook.yaml with ``ca_pem`` as the caBundle,
    calling ``url`` (a cluster without a Service network) or, when given, ``service``
    (namespace, name, port) instead of the shipped Service. Everything else (selectors,
    failurePolicy, timeout) is the shipped file's."""
    import base64

    document = yaml.safe_load(GATEWAY_WEBHOOK.read_text())
    document["metadata"]["name"] = name
    for webhook in document["webhooks"]:
        path = webhook["clientConfig"]["service"]["path"]  # /mutate, /v1/access
        target: dict[str, Any] = {"url": url.rstrip("/") + path}
        if service is not None:
            namespace, service_name, port = service
            target = {
                "service": {
                    "namespace": namespace,
                    "name": service_name,
                    "port": port,
                    "path": path,
                }
            }
        webhook["clientConfig"] = {**target, "caBundle": base64.b64encode(ca_pem).decode()}
    admission = client.AdmissionregistrationV1Api(api)
    try:
        admission.create_mutating_webhook_configuration(document)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = admission.read_mutating_webhook_configuration(name)
        document["metadata"]["resourceVersion"] = current.metadata.resource_version
        admission.replace_mutating_webhook_configuration(name, document)
    return name


class GatewayProcess:
    """``python -m secure_keys.gateway`` in a subprocess, logging JSON to a file.

    With ``kms_config`` it also runs the key broker: ``--kms-config``,
    ``--controller-namespace``, ``--broker-url`` (``broker_url``, by default its own URL,
    which pods on the host's network reach; on a pod network, the Service in front of it)
    and ``--broker-ca-file`` (``ca.crt`` from ``write_gateway_tls``); ``start`` then also
    waits for ``broker.ready``. Its identity needs ``bind_gateway_identity(..., broker=True)``.
    """

    def __init__(
        self,
        kubeconfig: Path,
        tls_dir: Path,
        log_path: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        metrics_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        kms_config: Path | None = None,
        controller_namespace: str = CONTROLLER_NAMESPACE,
        broker_url: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.tls_dir = tls_dir
        self.log_path = log_path
        self.port = port
        self.host = host
        self.metrics_port = metrics_port
        self.extra_args = extra_args
        self.kms_config = kms_config
        self.controller_namespace = controller_namespace
        self.broker_url = broker_url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "secure_keys.gateway",
            f"--kubeconfig={self.kubeconfig}",
            f"--tls-cert={self.tls_dir / 'tls.crt'}",
            f"--tls-key={self.tls_dir / 'tls.key'}",
            f"--address={self.host}",
            f"--port={self.port}",
            f"--namespace={CONTROLLER_NAMESPACE}",
            "--log-format=json",
        ]
        if self.kms_config is not None:
            argv += [
                f"--kms-config={self.kms_config}",
                f"--controller-namespace={self.controller_namespace}",
                f"--broker-url={self.broker_url or self.url}",
                f"--broker-ca-file={self.tls_dir / 'ca.crt'}",
            ]
        argv += self.extra_args
        if self.metrics_port is not None:
            argv.append(f"--metrics-port={self.metrics_port}")
        return argv

    def start(
        self,
        timeout: float = 60,
        *,
        wait: tuple[str, ...] | None = None,
    ) -> GatewayProcess:
        """Start it and wait until this run (not an earlier one in the same log) says
        it listens and its caches are synced (and, with the broker, that it is ready)."""
        if wait is None:
            wait = ('"gateway.started"', '"gateway.synced"')
            if self.kms_config is not None:
                wait += ('"broker.ready"',)
        offset = len(self.log())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter and module
                self.argv, stdout=log, stderr=subprocess.STDOUT
            )
        eventually(
            lambda: self.exited() is not None or all(w in self.log()[offset:] for w in wait),
            timeout,
            f"{wait} in the gateway's log",
        )
        if self.exited() is not None:
            raise AssertionError(f"gateway exited at startup:\n{self.log()[-4000:]}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
