"""Where the e2e suite runs: a local control plane, or any cluster given by kubeconfig.

With no `--kubeconfig` (or $SECUREKEYS_E2E_KUBECONFIG), one LocalCluster is
started for the session. With one, nothing is started and the same tests run
against that cluster (kind, for example); tests that need the API server to
call back into this machine skip unless $SECUREKEYS_E2E_CALLBACK_HOST names an
address of this machine that the API server can reach.

The local cluster gets a node (a kubelet, containerd, kube-scheduler) whenever this
machine has what it needs (root, the Debian packages, the built binaries and
images); set SECUREKEYS_E2E_NODE=0 to leave it out. Without a node, tests that run
pods skip and say what is missing. The node has a pod network (its own network
namespace, kube-proxy, CoreDNS: docs/local-cluster-network.md), so pods run without
`hostNetwork` as on kind; SECUREKEYS_E2E_POD_NETWORK=0 runs them on the host's network
instead. The `pods` fixture holds the network mode and the test image's name, so the
tests themselves run unchanged on kind (images loaded with `kind load`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from secure_keys_dev import access, image
from secure_keys_dev.cluster import Binaries, ControlPlaneError, LocalCluster, free_port
from secure_keys_dev.localkms import write_local_kms
from secure_keys_dev.node import NodeUnavailable, node_arguments
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    GatewayProcess,
    bind_controller_identity,
    bind_gateway_identity,
    ensure_namespace,
    install_crds,
    register_gateway_webhook,
    write_gateway_tls,
)


@dataclass
class Target:
    """The cluster under test and how to act on it."""

    kubeconfig: Path
    cluster: LocalCluster | None
    scratch: Path
    callback_host: str | None
    no_pods_because: str | None = None
    """Why pods cannot run on this cluster (None: they can)."""
    node_settings: dict[str, Any] = field(default_factory=dict)
    """The local cluster's node arguments (images, pause image), for tests that start
    clusters of their own."""

    @property
    def is_local(self) -> bool:
        return self.cluster is not None

    def admin(self) -> client.ApiClient:
        return access.api_client(self.kubeconfig)

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl (this cluster's, else the one on PATH) as admin or as ``kubeconfig``."""
        if self.cluster is not None:
            binary = str(self.cluster.binaries.kubectl)
        else:
            binary = shutil.which("kubectl") or str(Binaries.find().kubectl)
        return subprocess.run(  # noqa: S603 - our kubectl, our arguments
            [binary, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for an unprivileged client-cert user with these groups."""
        if self.cluster is not None:
            return self.cluster.user_kubeconfig(user, groups)
        out = self.scratch / f"{user}.kubeconfig"
        return access.csr_user_kubeconfig(self.kubeconfig, user, groups, out)


@pytest.fixture(scope="session")
def kube(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    scratch = tmp_path_factory.mktemp("e2e")
    given = request.config.getoption("--kubeconfig")
    if given:
        yield Target(Path(given), None, scratch, os.environ.get("SECUREKEYS_E2E_CALLBACK_HOST"))
        return
    settings, no_pods_because = _local_node_settings(scratch)
    with _local_cluster(settings) as cluster:
        print(f"\nlocal control plane ready in {cluster.started_in:.1f} s at {cluster.server}")
        if cluster.node is not None:
            node = cluster.node
            print(
                f"local node ready in {node.ready_in:.1f} s (image import "
                f"{node.imported_in:.1f} s, kubelet to Ready {node.kubelet_ready_in:.1f} s)"
            )
        if cluster.network is not None:
            print(f"pod network: pods {cluster.network.pods}, Services {cluster.service_cidr}")
        yield Target(cluster.kubeconfig, cluster, scratch, "127.0.0.1", no_pods_because, settings)


def _local_node_settings(scratch: Path) -> tuple[dict[str, Any], str | None]:
    """LocalCluster's node arguments, or none and the reason pods cannot run.

    Only missing prerequisites turn the node off; a failing image build fails the
    session. Under CI (``$CI`` set) a missing prerequisite fails it too: CI must run
    the pod tests.
    """
    if os.environ.get("SECUREKEYS_E2E_NODE", "1") == "0":
        return {}, "the local node is off (SECUREKEYS_E2E_NODE=0)"
    try:
        return node_arguments(Binaries.find().etcd.parent, scratch / "images"), None
    except (NodeUnavailable, ControlPlaneError) as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must run the pod tests, but: {exc}") from exc
        return {}, f"no local node: {exc}"


def _local_cluster(settings: dict[str, Any]) -> LocalCluster:
    """The session's cluster; with a node, on a pod network unless
    SECUREKEYS_E2E_POD_NETWORK=0 or (outside CI) this machine lacks what it needs."""
    if settings and os.environ.get("SECUREKEYS_E2E_POD_NETWORK", "1") != "0":
        try:
            return LocalCluster(pod_network=True, startup_timeout=120, **settings)
        except NodeUnavailable as exc:
            if os.environ.get("CI"):
                raise RuntimeError(f"CI must run the pod network, but: {exc}") from exc
            print(f"\nno pod network, pods use the host's network: {exc}")
    return LocalCluster(**settings)


@dataclass(frozen=True)
class PodEnvironment:
    """What pods need on the cluster under test: the test image, and the network mode."""

    busybox_image: str
    host_network: bool
    """True on a local node without a pod network (SECUREKEYS_E2E_POD_NETWORK=0)."""


@pytest.fixture(scope="session")
def pods(kube: Target) -> PodEnvironment:
    """Skips the test when this cluster cannot run pods, saying why and how to fix it."""
    if kube.no_pods_because is not None:
        pytest.skip(kube.no_pods_because)
    host_network = kube.cluster is not None and kube.cluster.network is None
    return PodEnvironment(busybox_image=image.BUSYBOX_REFERENCE, host_network=host_network)


@pytest.fixture(scope="session")
def admin_api(kube: Target) -> Iterator[client.ApiClient]:
    with kube.admin() as api:
        yield api


@pytest.fixture
def user_api(kube: Target) -> Iterator[Callable[..., client.ApiClient]]:
    """Make API clients for unprivileged users; every one is closed after the test."""
    made: list[client.ApiClient] = []

    def make(user: str, groups: tuple[str, ...] = ()) -> client.ApiClient:
        api = access.api_client(kube.user_kubeconfig(user, groups))
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"e2e-{secrets.token_hex(4)}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def crds(admin_api: client.ApiClient) -> None:
    """The secure-keys CRDs, installed once per session (never deleted: other tests use them)."""
    install_crds(admin_api)


@pytest.fixture(scope="session")
def controller_setup(
    kube: Target, admin_api: client.ApiClient, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(controller kubeconfig, KMS config): an unprivileged identity with the shipped RBAC."""
    ensure_namespace(admin_api, CONTROLLER_NAMESPACE)
    user = "securekeys-e2e-controller"
    bind_controller_identity(admin_api, user)
    kubeconfig = kube.user_kubeconfig(user)
    kms_config = write_local_kms(tmp_path_factory.mktemp("kms"))
    return kubeconfig, kms_config


@pytest.fixture(scope="session")
def controller(
    controller_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllerProcess]:
    """The controller for all namespaces except ``crash-*`` (crash tests run their own)."""
    kubeconfig, kms_config = controller_setup
    log = tmp_path_factory.mktemp("controller") / "controller.log"
    with ControllerProcess(
        kubeconfig, kms_config, log, namespaces="*,!crash-*", metrics_port=free_port()
    ) as process:
        yield process


@pytest.fixture
def private_namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh ``crash-*`` namespace: the session's controller does not watch it, so a test
    can run controllers of its own there (crashing, rotating KEKs, electing leaders)."""
    name = f"crash-{secrets.token_hex(4)}"
    ensure_namespace(admin_api, name)
    yield name
    client.CoreV1Api(admin_api).delete_namespace(name)


KEYS = "/var/run/secrets/securekeys"
"""Where the app containers of an injected pod see their keys (the default mount path)."""
SIDECAR = "securekeys-sidecar"
IDLE = 'trap "exit 0" TERM; while true; do sleep 1; done'
"""An app container's command that idles and stops at once on SIGTERM."""


@pytest.fixture(scope="module")
def gateway(
    kube: Target,
    admin_api: client.ApiClient,
    pods: PodEnvironment,
    controller: ControllerProcess,
    controller_setup: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[GatewayProcess]:
    """The gateway with the webhook and the broker (``delivery_gateway``), one per test
    module (named after it), after the controller, on the node's pods. A module that needs
    another gateway (``test_gateway.py``) defines its own ``gateway``."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    work = tmp_path_factory.mktemp(name)
    with delivery_gateway(kube, admin_api, controller_setup[1], work, name) as process:
        yield process


@contextlib.contextmanager
def delivery_gateway(
    kube: Target,
    admin_api: client.ApiClient,
    kms_config: Path,
    work: Path,
    name: str,
    extra_args: tuple[str, ...] = (),
) -> Iterator[GatewayProcess]:
    """The gateway with the webhook and the broker, registered with the API server.

    ``name`` makes its user, webhook configuration and Service unique to one test module,
    so modules never share (or tear down) each other's gateway. On a local pod network
    it runs on the host behind a Service (`LocalCluster.expose_service`): the API server
    calls the webhook through it, and pods reach the broker by its DNS name, as with the
    chart. Elsewhere both use ``callback_host``.
    """
    if kube.callback_host is None:
        pytest.skip("set SECUREKEYS_E2E_CALLBACK_HOST to an address the API server can reach")
    ensure_namespace(admin_api, CONTROLLER_NAMESPACE)
    user = f"securekeys-e2e-broker-{name}"
    webhook = f"secure-keys-gateway-{name}-e2e"
    bind_gateway_identity(admin_api, user, broker=True)
    port = free_port()
    service: tuple[str, str, int] | None = None
    dns_names: tuple[str, ...] = ()
    if kube.cluster is not None and kube.cluster.network is not None:
        service = (CONTROLLER_NAMESPACE, f"secure-keys-gateway-{name}", 443)
        dns_names = (kube.cluster.expose_service(*service, host_port=port),)
    ca_pem = write_gateway_tls(work / "tls", kube.callback_host, dns_names)
    process = GatewayProcess(
        kube.user_kubeconfig(user),
        work / "tls",
        work / "gateway.log",
        port=port,
        host=kube.callback_host,
        kms_config=kms_config,
        extra_args=("--image-pull-policy=Never", *extra_args),
        broker_url=f"https://{dns_names[0]}:443" if dns_names else None,
    )
    process.start(timeout=90)
    admission = client.AdmissionregistrationV1Api(admin_api)
    try:
        register_gateway_webhook(admin_api, process.url, ca_pem, name=webhook, service=service)
        yield process
    finally:
        admission.delete_mutating_webhook_configuration(webhook)
        process.stop()


@dataclass(frozen=True)
class Attacker:
    """A cluster user with exactly the rights an attack names, in one namespace."""

    user: str
    kubeconfig: Path
    api: client.ApiClient


MALLORY_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "delete"]},
)
"""What the hostile-user review's "mallory" may do: create, get, list and delete pods,
in one namespace, nothing more (no exec, no logs, no update, no Secrets)."""
DEBUGGER_RULES: tuple[dict[str, Any], ...] = (
    *MALLORY_RULES,
    {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch"]},
)
"""Mallory plus ``patch`` on ``pods/ephemeralcontainers`` (``kubectl debug``)."""


@pytest.fixture
def attacker(
    kube: Target, admin_api: client.ApiClient, user_api: Callable[..., client.ApiClient]
) -> Callable[[str, str, tuple[dict[str, Any], ...]], Attacker]:
    """``attacker(namespace, user, rules)``: a real RBAC Role with ``rules`` in
    ``namespace``, bound to a client-cert ``user``, and that user's kubeconfig and client."""

    def make(namespace: str, user: str, rules: tuple[dict[str, Any], ...]) -> Attacker:
        rbac = client.RbacAuthorizationV1Api(admin_api)
        rbac.create_namespaced_role(
            namespace, {"metadata": {"name": user}, "rules": [dict(rule) for rule in rules]}
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            },
        )
        return Attacker(user, kube.user_kubeconfig(user), user_api(user))

    return make
