"""People and pipelines read keys: ``secure-keys get``, ``list`` and ``run`` through
KeyAccessReviews, on the real API server with real identities.

The controller (session fixture) seals the keys; the gateway runs with the webhook, the
broker and the access webhook (``POST /v1/access``), registered from
deploy/gateway-webhook.yaml; deploy/access-policy.yaml (the dry-run-only policy and the
reader ClusterRole bound to ``system:authenticated``) comes with the CRDs. The CLI runs
as a subprocess (``python -m secure_keys.cli``) with:

* a user made through the CertificateSigningRequest API (a client-certificate
  kubeconfig), granted by a KeyRole subject of kind User, and another granted through
  a Group;
* a kubeconfig whose exec credential plugin returns a ServiceAccount token (what EKS's
  and GKE's plugins do with their own tokens), granted by a ServiceAccount subject;
* a ServiceAccount in a real pod running the project image's ``secure-keys get`` as a
  CI job would (skipped where the cluster cannot run pods).

Each reads the key it is bound to and is refused one it is not, with a message that
says what would grant it; each read and refusal leaves an aggregated Event on the
ApiKey. A create that is not a dry run is refused and nothing is stored. The canary
(a sealed key whose plaintext only this test knows) read by ``get`` and ``run`` is on
their stdout (the positive control) and nowhere in etcd's files, any object, Event, the
gateway's log, or a process's argv.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev import access, image, kubeconfig
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GROUP,
    VERSION,
    GatewayProcess,
    eventually,
)
from tests.e2e.conftest import PodEnvironment, Target, delivery_gateway
from tests.e2e.leaks import leaked
from tests.support.delivery import create_object, seal_for_cluster, wait_ready

CANARY_NAME = "canary"
OTHER = "other"


def _keyrole(name: str, subjects: list[dict[str, str]], keys: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KeyRole",
        "metadata": {"name": name},
        "spec": {"subjects": subjects, "keys": {"names": keys}, "permissions": ["read"]},
    }


@pytest.fixture(scope="module")
def access_namespace(admin_api: client.ApiClient) -> Iterator[str]:
    name = f"access-{secrets.token_hex(3)}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def canary() -> str:
    return "sk-access-canary-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def keys(
    kube: Target,
    admin_api: client.ApiClient,
    controller: object,
    access_namespace: str,
    canary: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """Two ApiKeys: ``canary`` (sealed, plaintext known here) and ``other`` (generated),
    and KeyRoles: User alice and Group team-a and ServiceAccount pipeline may read
    ``canary``; nobody but ``other-reader`` may read ``other``."""
    ns = access_namespace
    core = client.CoreV1Api(admin_api)

    def published() -> bool:
        try:
            core.read_namespaced_config_map("secure-keys-recipient", CONTROLLER_NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    eventually(published, 60, "the controller's recipient ConfigMap")
    manifest = seal_for_cluster(
        kube, admin_api, ns, CANARY_NAME, canary, tmp_path_factory.mktemp("seal")
    )
    create_object(admin_api, ns, "apikeys", manifest)
    create_object(
        admin_api,
        ns,
        "apikeys",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApiKey",
            "metadata": {"name": OTHER},
            "spec": {"source": {"generate": {"length": 32}}},
        },
    )
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="pipeline"))
    )
    subjects = [
        {"kind": "User", "name": "alice"},
        {"kind": "Group", "name": "team-a"},
        {"kind": "ServiceAccount", "name": "pipeline"},
    ]
    create_object(admin_api, ns, "keyroles", _keyrole("canary-readers", subjects, [CANARY_NAME]))
    create_object(
        admin_api,
        ns,
        "keyroles",
        _keyrole("other-readers", [{"kind": "User", "name": "zed"}], [OTHER]),
    )
    for name in (CANARY_NAME, OTHER):
        wait_ready(admin_api, ns, name)
    return ns


@pytest.fixture(scope="module")
def gateway(
    kube: Target,
    admin_api: client.ApiClient,
    controller_setup: tuple[Path, Path],
    keys: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The gateway with the broker and the access webhook; no node needed."""
    work = tmp_path_factory.mktemp("access-gateway")
    with delivery_gateway(kube, admin_api, controller_setup[1], work, "access") as process:
        yield process


@pytest.fixture(scope="module")
def csr_user(kube: Target, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice, issued by the cluster's signer through the CertificateSigningRequest API."""
    out = tmp_path_factory.mktemp("alice") / "alice.kubeconfig"
    return access.csr_user_kubeconfig(kube.kubeconfig, "alice", (), out)


@pytest.fixture(scope="module")
def exec_plugin_user(
    kube: Target, admin_api: client.ApiClient, keys: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig whose exec plugin prints an ExecCredential holding a token of the
    ServiceAccount ``pipeline`` (from the TokenRequest API), as a cloud's plugin prints
    its own token."""
    work = tmp_path_factory.mktemp("exec")
    token = access.request_token(admin_api, keys, "pipeline", [], expiration_seconds=3600)
    credential = work / "credential.json"
    credential.write_text(
        json.dumps(
            {
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": token},
            }
        )
    )
    credential.chmod(0o600)
    plugin = work / "plugin.sh"
    plugin.write_text(f"#!/bin/sh\nexec cat {credential}\n")
    plugin.chmod(0o700)
    server, ca_pem, _ = kubeconfig.current_cluster(kube.kubeconfig)
    assert ca_pem is not None
    document = kubeconfig.build(server=server, ca_pem=ca_pem, user="pipeline", token="unused")
    document["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    return kubeconfig.write(work / "exec.kubeconfig", document)


def _cli(config: Path, *args: str, namespace: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "secure_keys.cli", f"--kubeconfig={config}", *args, "-n", namespace],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "SECUREKEYS_STORE": "cluster"},
    )


def _get_when_ready(config: Path, namespace: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``get``, retried while the gateway's caches catch up with this module's objects
    (a refusal for a key the caches do not know yet)."""
    result: list[subprocess.CompletedProcess[bytes]] = []

    def attempt() -> bool:
        done = _cli(config, "get", *args, namespace=namespace)
        result.append(done)
        return done.returncode == 0

    try:
        eventually(attempt, 30, f"get {args}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last stderr: {result[-1].stderr[-400:]!r}") from None
    return result[-1]


def test_a_csr_user_reads_the_key_a_user_subject_grants_and_is_refused_another(
    gateway: GatewayProcess, csr_user: Path, keys: str, canary: str
) -> None:
    done = _get_when_ready(csr_user, keys, CANARY_NAME)
    assert done.stdout == canary.encode()
    assert b"version 1" in done.stderr

    refused = _cli(csr_user, "get", OTHER, namespace=keys)
    assert refused.returncode == 1
    assert refused.stdout == b""
    message = refused.stderr.decode()
    assert "KeyNotGranted" in message
    assert 'user "alice"' in message
    assert "would grant it" in message
    assert "Traceback" not in message


def test_a_group_subject_grants_to_a_member(
    gateway: GatewayProcess, kube: Target, keys: str, canary: str, tmp_path: Path
) -> None:
    bob = access.csr_user_kubeconfig(kube.kubeconfig, "bob", ("team-a",), tmp_path / "bob")
    assert _get_when_ready(bob, keys, CANARY_NAME).stdout == canary.encode()
    carol = access.csr_user_kubeconfig(kube.kubeconfig, "carol", ("team-b",), tmp_path / "carol")
    refused = _cli(carol, "get", CANARY_NAME, namespace=keys)
    assert refused.returncode == 1
    assert b"KeyNotGranted" in refused.stderr


def test_an_exec_plugin_identity_reads_through_its_service_account_subject(
    gateway: GatewayProcess, exec_plugin_user: Path, keys: str, canary: str
) -> None:
    done = _get_when_ready(exec_plugin_user, keys, CANARY_NAME, "--format", "env")
    assert done.stdout == f"CANARY={canary}\n".encode()
    refused = _cli(exec_plugin_user, "get", OTHER, namespace=keys)
    assert refused.returncode == 1
    assert b"system:serviceaccount:" in refused.stderr


def test_list_shows_only_what_the_caller_may_read_and_no_material(
    gateway: GatewayProcess, csr_user: Path, keys: str, canary: str
) -> None:
    _get_when_ready(csr_user, keys, CANARY_NAME)
    done = _cli(csr_user, "list", "--json", namespace=keys)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [k["name"] for k in listed] == [CANARY_NAME]
    assert listed[0]["currentVersion"] == 1
    assert listed[0]["versions"][0]["fingerprint"]
    assert not leaked(done.stdout, canary)


def test_run_puts_the_key_only_in_the_childs_environment(
    gateway: GatewayProcess, csr_user: Path, keys: str, canary: str
) -> None:
    _get_when_ready(csr_user, keys, CANARY_NAME)
    script = 'printf "%s|" "$API_KEY"; tr "\\0" " " < /proc/self/cmdline'
    done = subprocess.run(  # noqa: S603 - our interpreter and module
        [
            sys.executable,
            "-m",
            "secure_keys.cli",
            f"--kubeconfig={csr_user}",
            "run",
            "-n",
            keys,
            "--key",
            f"{CANARY_NAME}=API_KEY",
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "SECUREKEYS_STORE": "cluster"},
    )
    assert done.returncode == 0, done.stderr
    value, _, argv = done.stdout.partition(b"|")
    assert value == canary.encode()
    assert not leaked(argv, canary)
    assert "API_KEY" not in os.environ


def test_a_review_that_is_not_a_dry_run_is_refused_and_nothing_is_stored(
    gateway: GatewayProcess, kube: Target, admin_api: client.ApiClient, keys: str
) -> None:
    custom = client.CustomObjectsApi(admin_api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KeyAccessReview",
        "metadata": {"name": "stored"},
        "spec": {"operation": "list"},
    }
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, keys, "keyaccessreviews", body)
    assert refused.value.status in (400, 422)
    assert "dry run" in str(refused.value.body)
    stored = custom.list_namespaced_custom_object(GROUP, VERSION, keys, "keyaccessreviews")
    assert stored["items"] == []


def test_a_read_and_a_refusal_leave_events_on_the_apikey(
    gateway: GatewayProcess, csr_user: Path, admin_api: client.ApiClient, keys: str
) -> None:
    _get_when_ready(csr_user, keys, CANARY_NAME)
    _cli(csr_user, "get", OTHER, namespace=keys)
    core = client.CoreV1Api(admin_api)

    def reasons(name: str) -> set[str]:
        events = core.list_namespaced_event(keys, field_selector=f"involvedObject.name={name}")
        return {e.reason for e in events.items if e.involved_object.kind == "ApiKey"}

    eventually(lambda: "KeyRead" in reasons(CANARY_NAME), 30, "KeyRead on canary")
    eventually(lambda: "KeyReadDenied" in reasons(OTHER), 30, "KeyReadDenied on other")


def test_the_canary_is_on_stdout_and_nowhere_else(
    gateway: GatewayProcess,
    kube: Target,
    admin_api: client.ApiClient,
    csr_user: Path,
    keys: str,
    canary: str,
) -> None:
    done = _get_when_ready(csr_user, keys, CANARY_NAME)
    assert leaked(done.stdout, canary)  # the positive control: the search sees it
    assert not leaked(done.stderr, canary)
    core = client.CoreV1Api(admin_api)
    custom = client.CustomObjectsApi(admin_api)
    objects = json.dumps(
        [
            admin_api.sanitize_for_serialization(core.list_namespaced_event(keys)),
            admin_api.sanitize_for_serialization(core.list_namespaced_secret(keys)),
            custom.list_namespaced_custom_object(GROUP, VERSION, keys, "apikeys"),
            custom.list_namespaced_custom_object(GROUP, VERSION, keys, "keyroles"),
        ]
    ).encode()
    assert not leaked(objects, canary)
    assert not leaked(gateway.log().encode(), canary)
    if kube.cluster is not None:
        for path in sorted(kube.cluster.etcd_data_dir.rglob("*")):
            if path.is_file():
                assert not leaked(path.read_bytes(), canary), path


def test_a_service_account_in_a_real_pod_reads_as_a_ci_job_would(
    gateway: GatewayProcess,
    kube: Target,
    admin_api: client.ApiClient,
    pods: PodEnvironment,
    keys: str,
    canary: str,
) -> None:
    """A pod of ServiceAccount ``pipeline`` runs the project image's ``secure-keys get``
    with its in-cluster credentials (its projected token): the key it is bound to comes
    back (the pod prints only its SHA-256, so the key is in no log), the other is
    refused with the message. On the local node pods share the host's network, so the
    pod is pointed at the API server's loopback address (kind needs no such override)."""
    core = client.CoreV1Api(admin_api)
    env = []
    if kube.cluster is not None:
        host, port = kube.cluster.server.removeprefix("https://").rsplit(":", 1)
        env = [
            {"name": "KUBERNETES_SERVICE_HOST", "value": host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": port},
        ]
    digest = "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    script = (
        f"secure-keys get {CANARY_NAME} | /opt/secure-keys/bin/python -c '{digest}'; "
        f"secure-keys get {OTHER}; echo exit=$?"
    )
    core.create_namespaced_pod(
        keys,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "ci-job"},
            "spec": {
                "serviceAccountName": "pipeline",
                "hostNetwork": pods.host_network,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "job",
                        "image": image.PROJECT_REFERENCE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", script],
                        "env": [*env, {"name": "SECUREKEYS_STORE", "value": "cluster"}],
                    }
                ],
            },
        },
    )

    def finished() -> str | None:
        pod = core.read_namespaced_pod("ci-job", keys)
        if pod.status.phase not in ("Succeeded", "Failed"):
            return None
        text: str = core.read_namespaced_pod_log("ci-job", keys, container="job")
        return text

    log = eventually(finished, 120, "the CI pod finished")
    expected = hashlib.sha256(canary.encode()).hexdigest()
    assert expected in log, log
    assert "KeyNotGranted" in log, log
    assert "exit=1" in log, log
    assert "Traceback" not in log
    assert not leaked(log.encode(), canary)
