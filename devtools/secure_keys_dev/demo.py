"""``make demo`` (``python -m secure_keys_dev.demo``): the whole flow on a local cluster.

1. start a real etcd + kube-apiserver + kube-controller-manager (``cluster``);
2. install the CRDs and the controller's RBAC;
3. run the controller under that RBAC with the local KMS (a password-derived keyring);
4. apply ``examples/`` and a manifest made by ``secure-keys seal``;
5. show ``kubectl get apikeys`` with every key Ready, then rotate one and show it again.

Everything runs from this repository's own files; nothing needs Docker or a network.
The demo's working directory (the local KMS password among other things) records its
owner's pid: a run killed outright leaves it behind, and the next run removes it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys.cli.kubeapi import fetch_recipient, load_target
from secure_keys.cli.rotate import rotate
from secure_keys.cli.seal import seal_command
from secure_keys.core.logs import configure
from secure_keys.core.memory import random_secret, zero
from secure_keys.core.sealing import Recipient
from secure_keys_dev import access
from secure_keys_dev.cluster import (
    LocalCluster,
    claim_workdir,
    free_port,
    repository_root,
    sweep_stale_workdirs,
)
from secure_keys_dev.localkms import write_local_kms
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


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _kubectl(cluster: LocalCluster, *args: str) -> None:
    subprocess.run(  # noqa: S603 - our kubectl, our arguments
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args], check=True
    )


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


def run_demo(*, keep: bool = False) -> int:
    configure(json=False)
    root = repository_root()
    with demo_workdir() as workdir:
        _say("1. starting a local control plane (etcd, kube-apiserver, kube-controller-manager)")
        with LocalCluster() as cluster, contextlib.ExitStack() as stack:
            print(f"ready in {cluster.started_in:.1f} s; kubeconfig {cluster.kubeconfig}")
            api = access.api_client(cluster.kubeconfig)
            stack.callback(api.close)
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
                _say(f"4. applying examples/ and a sealed key to namespace {DEMO_NAMESPACE}")
                ensure_namespace(api, DEMO_NAMESPACE)
                _bootstrap_secret(api)
                _kubectl(cluster, "apply", "-n", DEMO_NAMESPACE, "-f", str(root / "examples"))
                # A fresh cluster each run: its recipient is not pinned (secure-keys seal
                # would pin it in the user's known-recipients file).
                fetched = fetch_recipient(cluster.kubeconfig, CONTROLLER_NAMESPACE)
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
                        (
                            get_apikey(api, DEMO_NAMESPACE, "internal-billing").get("status") or {}
                        ).get("currentVersion")
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
                _gateway_demo(cluster, api, workdir, stack)
                if keep:
                    _say(f"running; export KUBECONFIG={cluster.kubeconfig}  (Ctrl-C stops it)")
                    try:
                        while True:
                            time.sleep(3600)
                    except KeyboardInterrupt:
                        pass
        _say("done: controller and control plane stopped, nothing left running")
    return 0


def _gateway_demo(
    cluster: LocalCluster, api: client.ApiClient, workdir: Path, stack: contextlib.ExitStack
) -> None:
    """Step 7: the gateway's webhook injects a bound pod and denies an unbound one. The
    gateway stays up (in ``stack``) so that ``--keep`` leaves injection to try by hand."""
    _say("7. the gateway: its webhook injects opted-in pods and denies unbound ones")
    ca_pem = write_gateway_tls(workdir / "gateway-tls", "127.0.0.1")
    bind_gateway_identity(api, "secure-keys-gateway")
    gateway = GatewayProcess(
        cluster.user_kubeconfig("secure-keys-gateway"),
        workdir / "gateway-tls",
        workdir / "gateway.log",
        port=free_port(),
    )
    stack.enter_context(gateway)
    register_gateway_webhook(api, gateway.url, ca_pem)
    print(f"gateway running as an unprivileged user; log {workdir / 'gateway.log'}")
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
