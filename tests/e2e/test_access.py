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

import asyncio
import base64
import hashlib
import http.client
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.cli.login import cache_path
from secure_keys.core.accessreview import ReviewSpec
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys_dev import access, image, kubeconfig
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GROUP,
    VERSION,
    GatewayProcess,
    create_apikey,
    eventually,
)
from tests.e2e.conftest import PodEnvironment, Target, delivery_gateway
from tests.e2e.leaks import leaked
from tests.support.delivery import create_object, seal_for_cluster, wait_ready

CANARY_NAME = "canary"
OTHER = "other"
GUARDED = "guarded"
TOKEN_TTL = 20
"""Seconds an access token lives here (15 minutes in production): long enough for a
login and a read, short enough to see one expire."""


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
    create_apikey(admin_api, ns, OTHER, {"source": {"generate": {"length": 32}}})
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
    create_apikey(admin_api, ns, GUARDED, {"source": {"generate": {"length": 32}}})
    guarded = _keyrole(
        "guarded-readers",
        [{"kind": "User", "name": "dave"}, {"kind": "User", "name": "alice"}],
        [GUARDED],
    )
    guarded["spec"]["access"] = {"requireMFA": True}
    create_object(admin_api, ns, "keyroles", guarded)
    for name in (CANARY_NAME, OTHER, GUARDED):
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
    with delivery_gateway(
        kube,
        admin_api,
        controller_setup[1],
        work,
        "access",
        (f"--access-token-ttl={TOKEN_TTL}",),
    ) as process:
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
    # alice may read canary, and guarded only after `secure-keys login`; never other.
    assert [(k["name"], k["requireMFA"]) for k in listed] == [
        (CANARY_NAME, False),
        (GUARDED, True),
    ]
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


def _key_with_a_rotator(admin_api: client.ApiClient, namespace: str, name: str, user: str) -> int:
    """A generated ApiKey ``name`` and a KeyRole ``<name>-oncall`` granting ``user`` only
    rotate on it; its current version once Ready."""
    create_apikey(admin_api, namespace, name, {"source": {"generate": {"length": 32}}})
    role = _keyrole(f"{name}-oncall", [{"kind": "User", "name": user}], [name])
    role["spec"]["permissions"] = ["rotate"]
    create_object(admin_api, namespace, "keyroles", role)
    version: int = wait_ready(admin_api, namespace, name)["status"]["currentVersion"]
    return version


def test_a_keyrole_granting_rotate_lets_a_user_without_rbac_rotate_through_the_gateway(
    gateway: GatewayProcess,
    kube: Target,
    admin_api: client.ApiClient,
    csr_user: Path,
    keys: str,
    tmp_path: Path,
) -> None:
    """erin may not patch ApiKeys (RBAC) but a KeyRole grants her rotate: `secure-keys
    rotate` asks the gateway, which sets the annotation; the controller rotates and
    echoes the value. alice, whose roles grant read only, is refused and told why."""
    before = _key_with_a_rotator(admin_api, keys, "rotated", "erin")
    erin = access.csr_user_kubeconfig(kube.kubeconfig, "erin", (), tmp_path / "erin")
    done: list[subprocess.CompletedProcess[bytes]] = []

    def rotated() -> bool:  # retried while the gateway's caches learn the new role
        done.append(_cli(erin, "rotate", "rotated", namespace=keys))
        return done[-1].returncode == 0

    eventually(rotated, 30, "erin's rotation accepted")
    out = done[-1].stdout.decode()
    assert "granted by KeyRole rotated-oncall" in out, out
    value = out.split("requested (", 1)[1].split(",", 1)[0]
    custom = client.CustomObjectsApi(admin_api)

    def honoured() -> bool:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, keys, "apikeys", "rotated")[
            "status"
        ]
        return bool(
            status.get("lastRotationRequest") == value and status["currentVersion"] > before
        )

    eventually(honoured, 60, "the controller honours the gateway's request")
    refused = _cli(csr_user, "rotate", CANARY_NAME, namespace=keys)
    assert refused.returncode == 1
    message = refused.stderr.decode()
    assert "RotateNotGranted" in message
    assert "canary-readers names you without rotate" in message
    assert "Traceback" not in message
    core = client.CoreV1Api(admin_api)

    def reasons(name: str) -> set[str]:
        events = core.list_namespaced_event(keys, field_selector=f"involvedObject.name={name}")
        return {e.reason for e in events.items if e.involved_object.kind == "ApiKey"}

    eventually(lambda: "RotationRequested" in reasons("rotated"), 30, "RotationRequested")
    eventually(lambda: "KeyRotateDenied" in reasons(CANARY_NAME), 30, "KeyRotateDenied")


def test_a_rotate_grantee_waits_for_its_rotation_without_rbac_on_apikeys(
    gateway: GatewayProcess,
    kube: Target,
    admin_api: client.ApiClient,
    keys: str,
    tmp_path: Path,
) -> None:
    """frank may neither patch nor get ApiKeys (RBAC); a KeyRole grants him rotate.
    `rotate --wait` asks the gateway, then follows the key with list reviews until the
    new version is current and rolled out; `rollout status` answers him the same way."""
    before = _key_with_a_rotator(admin_api, keys, "waited", "frank")
    frank = access.csr_user_kubeconfig(kube.kubeconfig, "frank", (), tmp_path / "frank")
    done: list[subprocess.CompletedProcess[bytes]] = []

    def waited() -> bool:  # retried while the gateway's caches learn the new role
        done.append(
            _cli(
                frank,
                "rotate",
                "waited",
                "--wait",
                "--timeout",
                "45s",
                "-o",
                "json",
                namespace=keys,
            )
        )
        return done[-1].returncode == 0 or b"NotGranted" not in done[-1].stderr

    eventually(waited, 30, "frank's rotation accepted")
    assert done[-1].returncode == 0, done[-1].stderr.decode()
    report = json.loads(done[-1].stdout)
    assert report["rotated"] is True
    assert report["version"] == before + 1
    assert report["complete"] is True
    status = _cli(frank, "rollout", "status", "waited", "-o", "json", namespace=keys)
    assert status.returncode == 0, status.stderr.decode()
    assert json.loads(status.stdout)["version"] == before + 1


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
    refused with the message. On the pod network (the local cluster's default, kind) it
    reaches the API server through the ``kubernetes`` Service; only a local node on the
    host's network points it at the API server's loopback address."""
    core = client.CoreV1Api(admin_api)
    env = []
    if kube.cluster is not None and pods.host_network:
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


# -- MFA: enrol, log in, read a requireMFA key ------------------------------------------


def _step() -> int:
    return int(time.time()) // 30


def _code(secret: str, step: int) -> str:
    """The code of one time step (RFC 6238's T), so a test knows which step it spends."""
    return str(pyotp.TOTP(secret).generate_otp(step))


def _cli_input(
    config: Path, home: Path, stdin: str, *args: str, namespace: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "secure_keys.cli", f"--kubeconfig={config}", *args, "-n", namespace],
        input=stdin.encode(),
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "SECUREKEYS_STORE": "cluster", "XDG_CONFIG_HOME": str(home)},
    )


def _enroll(config: Path, home: Path, namespace: str) -> tuple[str, int]:
    """``mfa enroll`` as a person does it: read the URI it prints, type the code. Returns
    the secret and the step whose code confirmed it."""
    argv = [sys.executable, "-m", "secure_keys.cli", f"--kubeconfig={config}"]
    with subprocess.Popen(  # noqa: S603 - our interpreter and module
        [*argv, "mfa", "enroll", "--no-qr", "-n", namespace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SECUREKEYS_STORE": "cluster", "XDG_CONFIG_HOME": str(home)},
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        assert process.stderr is not None
        uri = ""
        for raw in process.stdout:
            if raw.startswith(b"otpauth://"):
                uri = raw.decode().strip()
                break
        assert uri, process.stderr.read()
        secret = parse_qs(urlparse(uri).query)["secret"][0]
        step = _step()
        process.stdin.write(f"{_code(secret, step)}\n".encode())
        process.stdin.close()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    return secret, step


def test_mfa_enrol_login_and_read_a_key_that_requires_it(
    gateway: GatewayProcess,
    kube: Target,
    admin_api: client.ApiClient,
    keys: str,
    tmp_path: Path,
) -> None:
    dave = access.csr_user_kubeconfig(kube.kubeconfig, "dave", (), tmp_path / "dave")
    home = tmp_path / "dave-home"
    before = _cli_input(dave, home, "", "get", GUARDED, namespace=keys)
    assert before.returncode == 1
    assert b"MfaRequired" in before.stderr
    assert b"secure-keys login" in before.stderr

    secret, confirmed = _enroll(dave, home, keys)
    again = _cli_input(dave, home, "", "mfa", "enroll", "--no-qr", namespace=keys)
    assert again.returncode == 1
    assert b"AlreadyEnrolled" in again.stderr

    wrong_step = _cli_input(
        dave, home, _code(secret, confirmed - 3) + "\n", "login", namespace=keys
    )
    assert wrong_step.returncode == 1
    assert b"CodeInvalid" in wrong_step.stderr
    # The next step's code: one step of clock skew is allowed, and the confirmation
    # spent this step's.
    login_step = confirmed + 1
    code = _code(secret, login_step)
    done = _cli_input(dave, home, code + "\n", "login", namespace=keys)
    assert done.returncode == 0, done.stderr
    cached = next((home / "secure-keys" / "tokens").glob("*.json"))
    assert cached.stat().st_mode & 0o777 == 0o600
    replayed = _cli_input(dave, home, code + "\n", "login", namespace=keys)
    assert replayed.returncode == 1
    assert b"CodeReplayed" in replayed.stderr
    # A spent code is no guess: replayed (as by whoever copied the login review) it never
    # counts toward the lockout, whose fifth failure would say MfaLocked.
    for _ in range(4):
        again = _cli_input(dave, home, code + "\n", "login", namespace=keys)
        assert b"CodeReplayed" in again.stderr, again.stderr

    read = _cli_input(dave, home, "", "get", GUARDED, namespace=keys)
    assert read.returncode == 0, read.stderr
    assert len(read.stdout) == 32

    # The token in another identity's hands: alice is granted too, but it is not hers.
    alice = access.csr_user_kubeconfig(kube.kubeconfig, "alice", (), tmp_path / "alice")
    alice_home = tmp_path / "alice-home"
    theirs = alice_home / "secure-keys" / "tokens"
    theirs.mkdir(parents=True, mode=0o700)
    target = _target(alice)
    shutil.copy(cached, theirs / cache_path(target).name)
    (theirs / cache_path(target).name).chmod(0o600)
    stolen = _cli_input(alice, alice_home, "", "get", GUARDED, namespace=keys)
    assert stolen.returncode == 1
    assert b"TokenNotYours" in stolen.stderr

    # Expired: the gateway's clock decides, whatever the cached file claims.
    data = json.loads(cached.read_text())
    data["expiresAt"] = "2999-01-01T00:00:00Z"
    cached.write_text(json.dumps(data))
    time.sleep(TOKEN_TTL + 1)
    expired = _cli_input(dave, home, "", "get", GUARDED, namespace=keys)
    assert expired.returncode == 1
    assert b"TokenExpired" in expired.stderr

    # Logout forgets it: the requireMFA key is refused as before the login.
    assert _cli_input(dave, home, "", "logout", namespace=keys).returncode == 0
    assert not cached.exists()
    assert b"MfaRequired" in _cli_input(dave, home, "", "get", GUARDED, namespace=keys).stderr

    # One code, two logins at once: accepted once (the MFA Secret is written with a
    # resourceVersion precondition, as two replicas would race).
    while _step() < login_step:
        time.sleep(1)
    racing = _code(secret, _step() + 1)
    argv = [sys.executable, "-m", "secure_keys.cli", f"--kubeconfig={dave}", "login", "-n", keys]
    environment = {**os.environ, "SECUREKEYS_STORE": "cluster", "XDG_CONFIG_HOME": str(home)}
    racers = [
        subprocess.Popen(  # noqa: S603 - our interpreter and module
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment,
        )
        for _ in range(2)
    ]
    outcomes = [racer.communicate(f"{racing}\n".encode(), timeout=60) for racer in racers]
    codes = sorted(racer.returncode for racer in racers)
    assert codes == [0, 1], outcomes
    assert any(b"CodeReplayed" in err for _, err in outcomes), outcomes

    # Lockout: five wrong codes in a row, then even a right one is refused.
    for _ in range(5):
        _cli_input(dave, home, "000000\n", "login", namespace=keys)
    locked = _cli_input(dave, home, _code(secret, _step() + 1) + "\n", "login", namespace=keys)
    assert locked.returncode == 1
    assert b"MfaLocked" in locked.stderr
    core = client.CoreV1Api(admin_api)
    eventually(
        lambda: any(
            e.reason == "MfaLocked" for e in core.list_namespaced_event(CONTROLLER_NAMESPACE).items
        ),
        30,
        "a Warning MfaLocked Event",
    )

    # What the cluster holds of it: the TOTP secret sealed, never plain.
    log = gateway.log()
    for event_type in ("auth.login", "auth.code_refused", "mfa.enrolled", "key.read"):
        assert f'"{event_type}"' in log, event_type
    assert secret not in log
    stored = json.dumps(
        admin_api.sanitize_for_serialization(core.list_namespaced_secret(CONTROLLER_NAMESPACE))
    )
    assert secret not in stored
    assert base64.b64encode(secret.encode()).decode()[:20] not in stored
    if kube.cluster is not None:
        for path in sorted(kube.cluster.etcd_data_dir.rglob("*")):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def _target(config: Path) -> Any:
    from secure_keys.cli.kubeapi import load_target

    return load_target(config)


def test_key_manager_reads_through_the_same_path_as_get(
    gateway: GatewayProcess, csr_user: Path, keys: str, canary: str
) -> None:
    _get_when_ready(csr_user, keys, CANARY_NAME)
    program = (
        "import sys\n"
        "from secure_keys import KeyManager\n"
        f"km = KeyManager('cluster', kubeconfig={str(csr_user)!r}, namespace={keys!r})\n"
        "km.authenticate()\n"
        f"with km.key({CANARY_NAME!r}) as value:\n"
        "    sys.stdout.buffer.write(value)\n"
        "assert value == bytearray(len(value))\n"
        f"print([k.name for k in km.list_keys()], file=sys.stderr)\n"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, a program of this test
        [sys.executable, "-c", program], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == canary.encode()
    assert b"'canary'" in done.stderr
    assert not leaked(done.stderr, canary)


def test_audit_shows_the_reads_and_verify_names_the_first_broken_record(
    gateway: GatewayProcess,
    kube: Target,
    csr_user: Path,
    controller_setup: tuple[Path, Path],
    keys: str,
    tmp_path: Path,
) -> None:
    _get_when_ready(csr_user, keys, CANARY_NAME)

    def shown() -> bool:
        done = _cli(kube.kubeconfig, "audit", "--key", CANARY_NAME, "--since", "1h", namespace=keys)
        return done.returncode == 0 and b"KeyRead" in done.stdout and b'"alice"' in done.stdout

    eventually(shown, 30, "secure-keys audit shows alice's read")

    exported = tmp_path / "gateway.log"
    exported.write_text(gateway.log())
    verify_args = ("audit", "verify", str(exported), f"--kms-config={controller_setup[1]}")
    intact = _cli(kube.kubeconfig, *verify_args, namespace=keys)
    assert intact.returncode == 0, intact.stderr
    assert b"intact" in intact.stderr
    lines = exported.read_text().splitlines()
    audited = [i for i, line in enumerate(lines) if '"mac"' in line and '"key.read"' in line]
    record = json.loads(lines[audited[0]])
    record["user_id"] = "someone-else"
    lines[audited[0]] = json.dumps(record)
    exported.write_text("\n".join(lines) + "\n")
    broken = _cli(kube.kubeconfig, *verify_args, namespace=keys)
    assert broken.returncode == 1
    assert f"line {audited[0] + 1} ".encode() in broken.stderr
    assert b"does not verify" in broken.stderr


def test_an_admission_review_forged_straight_to_the_gateway_gets_nothing(
    gateway: GatewayProcess, kube: Target, csr_user: Path, keys: str, tmp_path: Path
) -> None:
    """Hostile: anyone who reaches the gateway's port (every pod does, for the broker)
    can post an AdmissionReview naming any user. Without the caller's own credential
    (the proof), or with mallory's certificate claiming to be alice, nothing is read."""
    _get_when_ready(csr_user, keys, CANARY_NAME)
    attacker = RecipientPrivateKey.generate()
    spec = ReviewSpec("read", key=CANARY_NAME, recipient=attacker.public())
    mallory = access.csr_user_kubeconfig(kube.kubeconfig, "mallory", (), tmp_path / "mallory")
    mallory_proof = asyncio.run(_proof_as(mallory, keys, spec))
    context = ssl.create_default_context(cafile=str(gateway.tls_dir / "ca.crt"))
    for proof in (None, mallory_proof.to_json()):
        body = spec.to_json() | ({"proof": proof} if proof else {})
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": secrets.token_hex(8),
                "operation": "CREATE",
                "dryRun": True,
                "namespace": keys,
                "resource": {"group": GROUP, "version": VERSION, "resource": "keyaccessreviews"},
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": {"spec": body},
            },
        }
        request = urllib.request.Request(  # noqa: S310 - the gateway's https URL
            gateway.url + "/v1/access",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:  # noqa: S310
            response = json.loads(answer.read())["response"]
        patch = json.loads(base64.b64decode(response["patch"]))
        status = patch[0]["value"]
        assert status["allowed"] is False, status
        assert status["reason"] == "ProofInvalid", status
        assert "key" not in status


async def _proof_as(config: Path, namespace: str, spec: ReviewSpec) -> Any:
    from secure_keys.cli.access import with_proof
    from secure_keys.kube.client import Credentials, KubeApi

    async with KubeApi(Credentials.from_kubeconfig(config)) as api:
        return (await with_proof(api, namespace, spec)).proof


def _forge(
    gateway: GatewayProcess,
    namespace: str,
    user: str,
    spec: dict[str, Any],
    source: str | None = None,
) -> Any:
    """POST an AdmissionReview naming ``user`` straight to the gateway, as any pod can
    (from the local address ``source``, standing in for a pod's own address); the
    admission ``response``."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": secrets.token_hex(8),
            "operation": "CREATE",
            "dryRun": True,
            "namespace": namespace,
            "resource": {"group": GROUP, "version": VERSION, "resource": "keyaccessreviews"},
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": {"spec": spec},
        },
    }
    context = ssl.create_default_context(cafile=str(gateway.tls_dir / "ca.crt"))
    connection = http.client.HTTPSConnection(
        gateway.host,
        gateway.port,
        context=context,
        timeout=10,
        source_address=(source, 0) if source else None,
    )
    try:
        connection.request(
            "POST",
            "/v1/access",
            body=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        return json.loads(connection.getresponse().read())["response"]
    finally:
        connection.close()


def test_reviews_forged_in_a_users_name_neither_rate_limit_that_user_nor_leave_events(
    gateway: GatewayProcess, csr_user: Path, admin_api: client.ApiClient, keys: str
) -> None:
    """Hostile: the per-user rate limit is taken before the proof is checked, so a forger
    who floods the gateway with unproven reviews naming alice must spend its own bucket
    (per peer address and user), not alice's: her reads through the API server go on
    while the flood does. And an unproven review leaves no Event in the key's namespace
    (the user it names is only a claim; one Event per invented name was a spam lever)."""
    _get_when_ready(csr_user, keys, CANARY_NAME)
    spec = ReviewSpec(
        "read", key=CANARY_NAME, recipient=RecipientPrivateKey.generate().public()
    ).to_json()
    invented = f"forged-{secrets.token_hex(4)}"
    refused = _forge(gateway, keys, invented, spec)
    assert json.loads(base64.b64decode(refused["patch"]))[0]["value"]["reason"] == "ProofInvalid"
    if gateway.host != "127.0.0.1":
        pytest.skip("the forger needs an address of its own (here: 127.0.0.2 on loopback)")
    limited = threading.Event()
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            response = _forge(gateway, keys, "alice", spec, source="127.0.0.2")
            if (response.get("status") or {}).get("code") == 429:
                limited.set()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        assert limited.wait(60), "the forger was never rate-limited"
        during = _cli(csr_user, "get", CANARY_NAME, namespace=keys)
    finally:
        stop.set()
        flooder.join(15)
    assert during.returncode == 0, during.stderr[-400:]
    # The forged review's Event (were there one) was posted before alice's read began.
    events = client.CoreV1Api(admin_api).list_namespaced_event(keys)
    assert not [e for e in events.items if invented in (e.message or "")]


def test_a_review_copied_from_an_audit_log_and_replayed_is_refused(
    gateway: GatewayProcess, csr_user: Path, keys: str
) -> None:
    """Hostile: alice's review, proof included, as an API server audit log at
    RequestResponse level holds it, posted again straight to the gateway. The answer
    would be sealed to alice's ephemeral key (useless to the replayer), but it wrote a
    grant into alice's audit trail, and a replayed login counted her used code as a
    failure again (five replays locked her out). The recipient key is the nonce."""
    _get_when_ready(csr_user, keys, CANARY_NAME)
    spec = ReviewSpec("read", key=CANARY_NAME, recipient=RecipientPrivateKey.generate().public())
    proven = spec.to_json() | {"proof": asyncio.run(_proof_as(csr_user, keys, spec)).to_json()}
    statuses = []
    for _ in range(2):
        response = _forge(gateway, keys, "alice", proven)
        statuses.append(json.loads(base64.b64decode(response["patch"]))[0]["value"])
    assert statuses[0]["reason"] == "Granted", statuses[0]
    assert statuses[1]["reason"] == "ReviewReplayed", statuses[1]
    assert "key" not in statuses[1]


def test_a_copied_token_review_rewritten_into_another_operation_or_key_is_refused(
    gateway: GatewayProcess, exec_plugin_user: Path, keys: str
) -> None:
    """Hostile: a pipeline's read, proof included (a ServiceAccount token sealed to the
    cluster key), copied from an audit log, rewritten into a rotate (whose effect needs no
    answer) or a read of another key, and posted straight to the gateway in its name. The
    sealed token opens only under the digest of what it was made for."""
    _get_when_ready(exec_plugin_user, keys, CANARY_NAME)
    spec = ReviewSpec("read", key=CANARY_NAME, recipient=RecipientPrivateKey.generate().public())
    proof = asyncio.run(_proof_as(exec_plugin_user, keys, spec))
    assert proof.kind == "token"
    pipeline = f"system:serviceaccount:{keys}:pipeline"
    for rewritten in (
        ReviewSpec("rotate", key=CANARY_NAME, recipient=spec.recipient),
        ReviewSpec("read", key=OTHER, recipient=spec.recipient),
    ):
        response = _forge(gateway, keys, pipeline, rewritten.to_json() | {"proof": proof.to_json()})
        status = json.loads(base64.b64decode(response["patch"]))[0]["value"]
        assert status["allowed"] is False, status
        assert status["reason"] == "SealedInputInvalid", status
