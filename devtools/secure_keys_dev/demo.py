"""``make demo`` (``python -m secure_keys_dev.demo``): the whole flow on a local cluster.

1. start a real etcd + kube-apiserver + kube-controller-manager (``cluster``), with a
   node and a pod network when this machine can run them;
2-3. with the pod network: ``helm install`` of ``charts/secure-keys`` with its defaults
   (the CRDs, the RBAC, the controller with the local KMS, two gateways behind their
   Service, the webhook through that Service), but for the image's pull policy (the
   project image is imported into the node; there is no registry). Without it: the
   CRDs and the controller's RBAC installed, and the controller run as a process under
   that RBAC with the local KMS (a password-derived keyring);
4. apply ``examples/`` and a manifest made by ``secure-keys seal``;
5. show ``kubectl get apikeys`` with every key Ready;
6. rotate one and show it again;
7. the gateway's webhook injects a bound pod and refuses an unbound one (without the
   chart, a gateway process is started for it, with the key broker when there is a node);
8. with the local node: a real pod reads its key through the injected sidecar, and a
   rotation arrives in its files (``kubectl exec ... cat``). Without the node (its
   prerequisites missing) the demo says why and skips that step.

Everything runs from this repository's own files; nothing needs Docker or a network.
The demo never prints key material: the pod's files are shown as metadata and digests.
The demo's working directory (the local KMS password among other things) records its
owner's pid: a run killed outright leaves it behind, and the next run removes it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys.cli.kubeapi import (
    FetchedRecipient,
    RecipientUnpublished,
    fetch_recipient,
    load_target,
)
from secure_keys.cli.rotate import rotate
from secure_keys.cli.seal import seal_command
from secure_keys.core.logs import configure
from secure_keys.core.memory import random_secret, zero
from secure_keys.core.sealing import Recipient
from secure_keys.kube.client import ApiError
from secure_keys_dev import access, chart, image
from secure_keys_dev.cluster import (
    Binaries,
    ControlPlaneError,
    LocalCluster,
    claim_workdir,
    free_port,
    repository_root,
    sweep_stale_workdirs,
)
from secure_keys_dev.localkms import write_local_kms
from secure_keys_dev.node import NodeError, NodeUnavailable, node_arguments
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    GatewayProcess,
    bind_controller_identity,
    bind_gateway_identity,
    ensure_namespace,
    get_apikey,
    install_crds,
    is_ready,
    register_gateway_webhook,
    write_gateway_tls,
)

DEMO_NAMESPACE = "demo"
WORKDIR_PREFIX = "securekeys-demo-"
READER = "reader"
READER_KEY = "internal-billing"
KEYS_DIR = "/var/run/secrets/securekeys"
IDLE = 'trap "exit 0" TERM; while true; do sleep 1; done'


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _kubectl(cluster: LocalCluster, *args: str) -> None:
    subprocess.run(  # noqa: S603 - our kubectl, our arguments
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args], check=True
    )


def _kubectl_output(cluster: LocalCluster, *args: str) -> str | None:
    """kubectl's stdout, or None if it failed (for polling)."""
    done = subprocess.run(  # noqa: S603 - our kubectl, our arguments
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


def _node_settings(workdir: Path) -> tuple[dict[str, Any], str | None]:
    """LocalCluster's node arguments, or none and why pods cannot run here."""
    try:
        return node_arguments(Binaries.find().etcd.parent, workdir / "images"), None
    except (NodeError, ControlPlaneError, image.ImageBuildError) as exc:
        return {}, str(exc)


def _wait(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _bootstrap_secret(api: client.ApiClient) -> None:
    """The Secret examples/apikey-interval.yaml ingests (and deletes once sealed)."""
    entropy = random_secret(24)
    try:
        value = base64.b64encode(b"sk_demo_" + entropy.hex().encode()).decode()
    finally:
        zero(entropy)
    client.CoreV1Api(api).create_namespaced_secret(
        DEMO_NAMESPACE,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="stripe-bootstrap"), data={"api-key": value}
        ),
    )


@contextlib.contextmanager
def demo_workdir(base: Path | None = None) -> Iterator[Path]:
    """This run's private directory, after removing those of runs that were killed."""
    sweep_stale_workdirs(base, prefix=WORKDIR_PREFIX)
    workdir = claim_workdir(WORKDIR_PREFIX, base)
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _start_cluster(node_settings: dict[str, Any]) -> tuple[LocalCluster, str | None]:
    """A cluster with a pod network when this machine can run one (and helm is built),
    else the host-network one; and why the chart is not used (None: it is)."""
    if not node_settings:
        return LocalCluster(), "no local node"
    if not chart.helm_binary().exists():
        return LocalCluster(**node_settings), f"{chart.helm_binary()} is not built (make helm)"
    try:
        return LocalCluster(pod_network=True, startup_timeout=180, **node_settings), None
    except NodeUnavailable as exc:
        return LocalCluster(**node_settings), f"no pod network: {exc}"


def _install_chart(cluster: LocalCluster, workdir: Path) -> None:
    """Steps 2 and 3 with the chart: ``helm install`` with its defaults but for the image
    (imported into the node; there is no registry)."""
    repository, _, tag = image.PROJECT_REFERENCE.rpartition(":")
    values = workdir / "values.yaml"
    values.write_text(
        json.dumps(
            {
                "image": {
                    "repository": repository.removeprefix("docker.io/library/"),
                    "tag": tag,
                    "pullPolicy": "Never",
                }
            }
        )
    )
    command = [
        str(chart.helm_binary()),
        "install",
        chart.RELEASE,
        str(chart.CHART),
        f"--namespace={CONTROLLER_NAMESPACE}",
        "--create-namespace",
        f"--values={values}",
        "--wait",
        "--timeout=5m",
    ]
    print(
        "$ helm install secure-keys charts/secure-keys --namespace secure-keys-system "
        "--set image.pullPolicy=Never --wait"
    )
    helm_home = str(workdir / "helm")
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": helm_home,
        "HELM_CONFIG_HOME": helm_home,
        "HELM_DATA_HOME": helm_home,
    }
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own helm, our arguments
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm install failed: {done.stderr.strip()[-2000:]}")
    print(f"every pod of the release Ready {time.monotonic() - started:.1f} s after helm install")
    _kubectl(cluster, "get", "pods,services", "-n", CONTROLLER_NAMESPACE, "-o", "wide")


def run_demo(*, keep: bool = False) -> int:
    configure(json=False)
    with demo_workdir() as workdir:
        _say("1. starting a local control plane (etcd, kube-apiserver, kube-controller-manager)")
        node_settings, no_node_because = _node_settings(workdir)
        if no_node_because is None:
            print("with a local node (containerd + kubelet): the demo ends with a real pod")
        else:
            print(f"no local node, the pod step will be skipped: {no_node_because}")
        local, no_chart_because = _start_cluster(node_settings)
        if no_chart_because is None:
            print("with a pod network: the Helm chart installs the controller and the gateway")
        elif no_node_because is None:
            print(f"the controller and gateway run as processes ({no_chart_because})")
        with local as cluster, contextlib.ExitStack() as stack:
            print(f"ready in {cluster.started_in:.1f} s; kubeconfig {cluster.kubeconfig}")
            api = access.api_client(cluster.kubeconfig)
            stack.callback(api.close)
            if no_chart_because is None:
                _say("2-3. helm install: the CRDs, RBAC, the controller and two gateways as pods")
                _install_chart(cluster, workdir)
                _story(cluster, api, workdir)
                _say("7. the gateway: its webhook injects opted-in pods and denies unbound ones")
                _admission_demo(cluster, api)
                _pod_demo(cluster, api, host_network=False)
                _keep(cluster, keep)
            else:
                _processes_demo(cluster, api, workdir, stack, no_node_because, keep)
        _say("done: controller and control plane stopped, nothing left running")
    return 0


def _keep(cluster: LocalCluster, keep: bool) -> None:
    if keep:
        _say(f"running; export KUBECONFIG={cluster.kubeconfig}  (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _processes_demo(
    cluster: LocalCluster,
    api: client.ApiClient,
    workdir: Path,
    stack: contextlib.ExitStack,
    no_node_because: str | None,
    keep: bool,
) -> None:
    """Without a pod network: the controller and the gateway as processes on this host."""
    _say("2. installing the CRDs and the controller's RBAC")
    install_crds(api)
    ensure_namespace(api, CONTROLLER_NAMESPACE)
    bind_controller_identity(api, "secure-keys-controller")
    _kubectl(cluster, "get", "crd", "-l", "app.kubernetes.io/name=secure-keys")
    _say("3. running the controller with the local KMS (password-derived keyring)")
    kms_config = write_local_kms(workdir / "kms")
    identity = cluster.user_kubeconfig("secure-keys-controller")
    log = workdir / "controller.log"
    with ControllerProcess(identity, kms_config, log, lease="secure-keys-controller"):
        print(f"controller running as an unprivileged user; log {log}")
        _story(cluster, api, workdir)
        broker = kms_config if no_node_because is None else None
        _gateway_demo(cluster, api, workdir, stack, broker)
        if no_node_because is None:
            _pod_demo(cluster, api, host_network=True)
        else:
            _say(f"8. skipped (no local node): {no_node_because}")
        _keep(cluster, keep)


def _fetch_recipient(cluster: LocalCluster) -> FetchedRecipient:
    """The controller's recipient, once it has published it (moments after it starts)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return fetch_recipient(cluster.kubeconfig, CONTROLLER_NAMESPACE)
        except (RecipientUnpublished, ApiError) as exc:
            if (isinstance(exc, ApiError) and exc.status != 404) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _story(cluster: LocalCluster, api: client.ApiClient, workdir: Path) -> None:
    """Steps 4 to 6: examples/ and a sealed key applied, every key Ready, a rotation."""
    root = repository_root()
    _say(f"4. applying examples/ and a sealed key to namespace {DEMO_NAMESPACE}")
    ensure_namespace(api, DEMO_NAMESPACE)
    _bootstrap_secret(api)
    _kubectl(cluster, "apply", "-n", DEMO_NAMESPACE, "-f", str(root / "examples"))
    # A fresh cluster each run: its recipient is not pinned (secure-keys seal
    # would pin it in the user's known-recipients file).
    fetched = _fetch_recipient(cluster)
    recipient = Recipient.from_json(fetched.document)
    plaintext = random_secret(24)
    token = bytearray(b"partner_" + plaintext.hex().encode())
    zero(plaintext)
    manifest = seal_command(
        name="partner-token",
        namespace=DEMO_NAMESPACE,
        recipient=recipient,
        plaintext=token,
        extra_spec={"rotation": {"interval": "720h"}},
    )
    sealed = workdir / "partner-token.yaml"
    sealed.write_text(manifest)
    print(f"secure-keys seal partner-token  ->  {sealed} (no plaintext inside)")
    _kubectl(cluster, "apply", "-f", str(sealed))
    names = ["internal-billing", "stripe-live", "partner-token"]
    _wait(
        "every ApiKey Ready",
        lambda: all(is_ready(get_apikey(api, DEMO_NAMESPACE, n)) for n in names),
    )
    _say("5. kubectl get apikeys: every key sealed and Ready")
    _kubectl(cluster, "get", "apikeys", "-n", DEMO_NAMESPACE)
    _kubectl(cluster, "get", "keyroles", "-n", DEMO_NAMESPACE)
    _say("   the source Secret of stripe-live was deleted once sealed:")
    _kubectl(cluster, "get", "secrets", "-n", DEMO_NAMESPACE)
    _say("6. secure-keys rotate internal-billing")
    rotate("internal-billing", DEMO_NAMESPACE, load_target(cluster.kubeconfig))
    _wait(
        "version 2 of internal-billing",
        lambda: (
            (get_apikey(api, DEMO_NAMESPACE, "internal-billing").get("status") or {}).get(
                "currentVersion"
            )
            == 2
        ),
    )
    _kubectl(cluster, "get", "apikeys", "-n", DEMO_NAMESPACE)
    _kubectl(
        cluster,
        "get",
        "apikey",
        "internal-billing",
        "-n",
        DEMO_NAMESPACE,
        "-o",
        "custom-columns=VERSION:.status.versions[*].version,"
        "STATE:.status.versions[*].state,FINGERPRINT:.status.versions[*].fingerprint",
    )
    _kubectl(
        cluster,
        "get",
        "events",
        "-n",
        DEMO_NAMESPACE,
        "--field-selector=involvedObject.name=internal-billing",
    )


def _gateway_demo(
    cluster: LocalCluster,
    api: client.ApiClient,
    workdir: Path,
    stack: contextlib.ExitStack,
    kms_config: Path | None,
) -> None:
    """Step 7: the gateway's webhook injects a bound pod and denies an unbound one. The
    gateway stays up (in ``stack``) so that ``--keep`` leaves injection to try by hand.
    With ``kms_config`` it also runs the key broker, for the pod of step 8."""
    _say("7. the gateway: its webhook injects opted-in pods and denies unbound ones")
    ca_pem = write_gateway_tls(workdir / "gateway-tls", "127.0.0.1")
    bind_gateway_identity(api, "secure-keys-gateway", broker=kms_config is not None)
    gateway = GatewayProcess(
        cluster.user_kubeconfig("secure-keys-gateway"),
        workdir / "gateway-tls",
        workdir / "gateway.log",
        port=free_port(),
        kms_config=kms_config,
        extra_args=("--image-pull-policy=Never",) if kms_config is not None else (),
    )
    stack.enter_context(gateway)
    register_gateway_webhook(api, gateway.url, ca_pem)
    print(f"gateway running as an unprivileged user; log {workdir / 'gateway.log'}")
    _admission_demo(cluster, api)


def _admission_demo(cluster: LocalCluster, api: client.ApiClient) -> None:
    """A bound pod is injected, an unbound one refused at CREATE."""
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(
        DEMO_NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="payments-api"))
    )

    def pod(name: str, account: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "labels": {"securekeys.io/inject": "true"},
                "annotations": {"securekeys.io/keys": "stripe-live"},
            },
            "spec": {
                "serviceAccountName": account,
                "containers": [{"name": "app", "image": "example.invalid/app"}],
            },
        }

    def create(name: str, account: str) -> str | None:
        """None if created, else the API server's message."""
        try:
            core.create_namespaced_pod(DEMO_NAMESPACE, pod(name, account))
        except client.ApiException as exc:
            return str(json.loads(exc.body).get("message", exc.body))
        return None

    probes = iter(range(1000))

    def webhook_active() -> bool:
        name = f"probe-{next(probes)}"
        if create(name, "default") is not None:
            return True  # denied: the webhook answered
        core.delete_namespaced_pod(name, DEMO_NAMESPACE)  # admitted before it was in place
        return False

    # The webhook reaches the API server's admission chain within a second or so.
    _wait("the webhook in the admission chain", webhook_active)
    _wait("payments-api admitted", lambda: create("payments-api", "payments-api") is None)
    print("a pod of ServiceAccount payments-api (bound by examples/keyrole.yaml) is injected:")
    _kubectl(
        cluster,
        "get",
        "pod",
        "payments-api",
        "-n",
        DEMO_NAMESPACE,
        "-o",
        "custom-columns=INIT:.spec.initContainers[*].name,CONTAINERS:.spec.containers[*].name,"
        "INJECTED:.metadata.annotations.securekeys\\.io/injected",
    )
    print("a pod of ServiceAccount default asking for the same key is refused at CREATE:")
    print(f"  {create('unbound', 'default')}")
    if cluster.node is not None:
        # Its image is a placeholder: on a real node it would only fail to pull.
        core.delete_namespaced_pod("payments-api", DEMO_NAMESPACE, grace_period_seconds=0)


def _reader_pod(*, host_network: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "name": READER,
            "labels": {"securekeys.io/inject": "true"},
            "annotations": {"securekeys.io/keys": READER_KEY},
        },
        "spec": {
            "serviceAccountName": READER,
            "hostNetwork": host_network,  # True when the local node has no pod network
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "app",
                    "image": image.BUSYBOX_REFERENCE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", IDLE],
                }
            ],
        },
    }


def _pod_demo(cluster: LocalCluster, api: client.ApiClient, *, host_network: bool) -> None:
    """Step 8: a real pod on the local node reads its key from the sidecar's files, then
    a rotation arrives in them. Shown as the meta file and digests, never the key."""
    _say(f"8. a real pod reads {READER_KEY} and sees a rotation arrive")
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(
        DEMO_NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=READER))
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "securekeys.io",
        "v1alpha1",
        DEMO_NAMESPACE,
        "keyroles",
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "KeyRole",
            "metadata": {"name": "reader-keys"},
            "spec": {
                "subjects": [{"kind": "ServiceAccount", "name": READER}],
                "keys": {"names": [READER_KEY]},
                "permissions": ["read"],
            },
        },
    )

    def created() -> bool:
        try:
            made = core.create_namespaced_pod(
                DEMO_NAMESPACE, _reader_pod(host_network=host_network)
            )
        except client.ApiException as exc:
            if exc.status == 403:  # the gateway's caches have not seen the KeyRole yet
                return False
            raise
        return "securekeys.io/injected" in (made.metadata.annotations or {})

    _wait("the reader pod admitted and injected", created)

    def app_running() -> bool:
        pod = core.read_namespaced_pod(READER, DEMO_NAMESPACE)
        statuses = pod.status.container_statuses or []
        return any(s.name == "app" and s.state.running for s in statuses)

    started = time.monotonic()
    _wait("the reader's app running (its key on disk)", app_running, timeout=120)
    print(f"the sidecar delivered the key; the app started {time.monotonic() - started:.1f} s")
    exec_app = ("exec", "-n", DEMO_NAMESPACE, READER, "-c", "app", "--")
    spec = get_apikey(api, DEMO_NAMESPACE, READER_KEY)["spec"]
    file = (spec.get("delivery") or {}).get("fileName") or READER_KEY
    show = f"cd {KEYS_DIR} && ls && cat {file}.meta.json && echo && sha256sum {file}*"
    print(f"$ kubectl exec {READER} -c app -- sh -c '{show}'")
    _kubectl(cluster, *exec_app, "sh", "-c", show)

    before = (get_apikey(api, DEMO_NAMESPACE, READER_KEY).get("status") or {})["currentVersion"]
    print(f"secure-keys rotate {READER_KEY}  (the pod holds version {before})")
    rotated_at = time.monotonic()
    # Step 6 rotated it moments ago: the controller spaces on-demand rotations 10 s
    # apart, so this one may wait out the rest of that spacing.
    rotate(READER_KEY, DEMO_NAMESPACE, load_target(cluster.kubeconfig))

    def in_pod() -> bool:
        text = _kubectl_output(cluster, *exec_app, "cat", f"{KEYS_DIR}/{file}.meta.json")
        return text is not None and json.loads(text).get("version", 0) > before

    _wait(f"the new version of {READER_KEY} in the pod", in_pod, timeout=90)
    print(f"the new version reached the pod's files {time.monotonic() - rotated_at:.1f} s later")
    print(f"$ kubectl exec {READER} -c app -- sh -c '{show}'")
    _kubectl(cluster, *exec_app, "sh", "-c", show)
    print(f"the pod read {READER_KEY} and saw the rotation arrive; .previous holds the old one")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m secure_keys_dev.demo",
        description="local demo: a control plane, the controller, examples/, a rotation",
    )
    parser.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C")
    return run_demo(keep=parser.parse_args(argv).keep)


if __name__ == "__main__":
    raise SystemExit(main())
