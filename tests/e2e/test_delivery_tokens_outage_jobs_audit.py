"""Delivery on real pods when something goes wrong or ends: token misuse, a gateway
outage, Jobs and init-only pods, and the audit log's chain.

Same stack as ``tests/e2e/test_delivery.py`` (the shared helpers are in
``tests/support/delivery.py``): the controller (session fixture) seals the keys, the
gateway runs the webhook and the key broker as a subprocess under its shipped RBAC, and
the webhook injects the real sidecar from the project image into pods on the local node.
The misuse cases talk to the broker from this process with the wire protocol
(``secure_keys.core.delivery``) and real tokens: read from a pod's projected token file
with ``kubectl exec``, or made with TokenRequest bound to the pod. Every refusal is
looked up in the gateway's log, where the audit records are.

The module's gateway is stopped and started again by the outage test, so its log holds
two audit chains; the audit test verifies the whole log with the key derived from the
controller's fingerprint key, then edits and deletes one record.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.core.auditchain import derive_audit_key, verify
from secure_keys.core.delivery import (
    AUDIENCE,
    STREAM_PATH,
    StateMessage,
    StreamRequest,
    open_delivered,
    parse_message,
    parse_refusal,
)
from secure_keys.core.kms.settings import KmsSettings
from secure_keys.core.memory import zero
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.gateway.broker.material import CachedProviders, MaterialSource
from secure_keys.kube.client import JsonObject
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GatewayProcess,
    eventually,
    get_apikey,
    request_rotation,
)
from tests.e2e.conftest import KEYS, SIDECAR, PodEnvironment, Target
from tests.support.delivery import (
    current_version,
    exec_in,
    injected_pod,
    seal_for_cluster,
    setup_keys,
    start_injected_pod,
    wait_admission_ready,
)

TOKEN = "/var/run/secrets/securekeys.io/serviceaccount/token"


# -- helpers ---------------------------------------------------------------------------


def _version_in_pod(kube: Target, namespace: str, pod: str, key: str) -> int:
    meta = json.loads(exec_in(kube, namespace, pod, "app", f"cat {KEYS}/{key}.meta.json"))
    version: int = meta["version"]
    return version


def _gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    reason: str | None
    first: StateMessage | None


def _ask(
    gateway: GatewayProcess,
    token: str,
    keys: tuple[str, ...],
    agent: str,
    private: RecipientPrivateKey | None = None,
) -> _Answer:
    """One ``POST /v1/stream`` as a sidecar would send it: the refusal, or the first
    state line (then the stream is dropped)."""
    context = ssl.create_default_context(cafile=str(gateway.tls_dir / "ca.crt"))
    connection = http.client.HTTPSConnection(
        gateway.host, gateway.port, context=context, timeout=20
    )
    private = private or RecipientPrivateKey.generate()
    try:
        connection.request(
            "POST",
            STREAM_PATH,
            body=StreamRequest(keys=keys, recipient=private.public()).to_json(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "User-Agent": agent,
            },
        )
        response = connection.getresponse()
        if response.status != 200:
            return _Answer(response.status, parse_refusal(response.read()).reason, None)
        message = parse_message(response.readline())
        assert isinstance(message, StateMessage), message
        return _Answer(200, None, message)
    finally:
        connection.close()


def _audit_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """Every audit record in the gateway's log, as logged."""
    records = []
    for line in gateway.log().splitlines():
        if '"audit"' not in line or not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == "audit":
            records.append(record)
    return records


def _refusal_audited(gateway: GatewayProcess, agent: str, reason: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for record in _audit_lines(gateway):
            if (
                record.get("user_agent") == agent
                and record.get("result") == "denied"
                and (record.get("additional_context") or {}).get("reason") == reason
            ):
                return record
        return None

    return eventually(find, 10, f"an audit record of {reason} for {agent}")


# -- 1. token misuse ---------------------------------------------------------------------


def test_misused_tokens_are_refused_and_audited(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    pods: PodEnvironment,
    gateway: GatewayProcess,
) -> None:
    core = client.CoreV1Api(admin_api)
    setup_keys(admin_api, namespace, {"alpha": None, "beta": None})
    start_injected_pod(core, namespace, injected_pod(pods, "pod-a", "alpha"))
    start_injected_pod(core, namespace, injected_pod(pods, "pod-b", "beta"))
    uid_a = core.read_namespaced_pod("pod-a", namespace).metadata.uid
    uid_b = core.read_namespaced_pod("pod-b", namespace).metadata.uid
    token_a = exec_in(kube, namespace, "pod-a", SIDECAR, f"cat {TOKEN}").strip()
    token_b = exec_in(kube, namespace, "pod-b", SIDECAR, f"cat {TOKEN}").strip()
    assert token_a
    assert token_b
    assert token_a != token_b

    # The positive control: A's token for A's own key is served, and the material opens
    # for this client only (sealed to its per-connection key).
    private = RecipientPrivateKey.generate()
    served = _ask(gateway, token_a, ("alpha",), "e2e-misuse-control", private)
    assert served.status == 200, served
    assert served.first is not None
    current = served.first.keys["alpha"].current
    assert current is not None
    assert current.sealed is not None
    value = open_delivered(
        private, current.sealed, namespace=namespace, apikey="alpha", version=current.version
    )
    assert len(value) >= 32
    zero(value)

    # (a) A's token for B's key: A's pod never asked for it.
    answer = _ask(gateway, token_a, ("beta",), "e2e-misuse-cross")
    assert (answer.status, answer.reason) == (403, "KeyNotRequested"), answer
    record = _refusal_audited(gateway, "e2e-misuse-cross", "KeyNotRequested")
    assert record["session_id"] == uid_a
    assert record["user_id"] == f"system:serviceaccount:{namespace}:app"
    assert record["key_id"].startswith(f"{namespace}/beta")

    # (b) A token bound to pod A for another audience.
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=["not-" + AUDIENCE],
            expiration_seconds=600,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name="pod-a", uid=uid_a
            ),
        )
    )
    other = core.create_namespaced_service_account_token("app", namespace, request)
    answer = _ask(gateway, other.status.token, ("alpha",), "e2e-misuse-audience")
    assert answer.status == 401, answer
    assert answer.reason in {"TokenInvalid", "TokenAudience"}, answer
    _refusal_audited(gateway, "e2e-misuse-audience", str(answer.reason))
    print(f"wrong audience refused as {answer.reason}")

    # (c) The token of a deleted pod (its own token, for its own key).
    core.delete_namespaced_pod("pod-b", namespace, grace_period_seconds=0)
    eventually(lambda: _gone(core, namespace, "pod-b"), 60, "pod-b gone")
    answer = _ask(gateway, token_b, ("beta",), "e2e-misuse-deleted")
    assert answer.status in {401, 403}, answer
    assert answer.reason in {"TokenInvalid", "PodNotFound"}, answer
    record = _refusal_audited(gateway, "e2e-misuse-deleted", str(answer.reason))
    print(f"deleted pod's token refused as {answer.reason} (pod uid {uid_b})")

    # Nothing in the log carries a token.
    log = gateway.log()
    for token in (token_a, token_b, other.status.token):
        assert token not in log


# -- 2. the gateway stopped and back -----------------------------------------------------


def test_gateway_outage_keeps_files_refuses_new_pods_and_catches_up(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    pods: PodEnvironment,
    gateway: GatewayProcess,
) -> None:
    core = client.CoreV1Api(admin_api)
    setup_keys(admin_api, namespace, {"alpha": None})
    start_injected_pod(core, namespace, injected_pod(pods, "steady", "alpha"))
    before = exec_in(kube, namespace, "steady", "app", f"cat {KEYS}/alpha")
    old_version, _ = current_version(get_apikey(admin_api, namespace, "alpha"))
    assert _version_in_pod(kube, namespace, "steady", "alpha") == old_version

    gateway.stop()
    try:
        # A new opted-in pod is refused at admission, naming the webhook and the cause.
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(namespace, injected_pod(pods, "newcomer", "alpha"))
        message = str(refused.value.body)
        assert 'failed calling webhook \\"inject.securekeys.io\\"' in message or (
            'failed calling webhook "inject.securekeys.io"' in message
        ), message
        # Refused by this machine; reset by the forwarder in front of a host process on
        # the local pod network (it accepts before it can know: secure_keys_dev.forward).
        assert "connection refused" in message or "connection reset by peer" in message, message
        assert _gone(core, namespace, "newcomer")

        # A rotation made meanwhile (the controller does not need the gateway).
        request_rotation(admin_api, namespace, "alpha")

        def rotated() -> dict[str, Any] | None:
            obj = get_apikey(admin_api, namespace, "alpha")
            return obj if (obj.get("status") or {}).get("currentVersion", 0) > old_version else None

        new_version, _ = current_version(eventually(rotated, 60, "the controller to rotate"))

        # The running pod keeps what it has.
        time.sleep(3)
        assert exec_in(kube, namespace, "steady", "app", f"cat {KEYS}/alpha") == before
        assert _version_in_pod(kube, namespace, "steady", "alpha") == old_version
        eventually(
            lambda: any(
                word in core.read_namespaced_pod_log("steady", namespace, container=SIDECAR)
                for word in ('"unreachable"', '"disconnected"')
            ),
            20,
            "the sidecar to log that the broker is gone",
        )
    finally:
        if gateway.exited() is not None:
            gateway.start(timeout=90)

    back = time.monotonic()
    eventually(
        lambda: _version_in_pod(kube, namespace, "steady", "alpha") == new_version,
        60,
        "the rotation made during the outage in the pod",
    )
    print(f"rotation in the pod {time.monotonic() - back:.1f} s after the gateway was back")
    after = exec_in(kube, namespace, "steady", "app", f"cat {KEYS}/alpha")
    assert after != before
    assert exec_in(kube, namespace, "steady", "app", f"cat {KEYS}/alpha.previous") == before
    # And admission works again.
    wait_admission_ready(core, namespace, injected_pod(pods, "newcomer", "alpha"))


# -- 3. a Job with a native sidecar, and init-only ---------------------------------------


def _sealed_key(
    kube: Target, admin_api: client.ApiClient, namespace: str, name: str, tmp: Path
) -> tuple[str, str]:
    """A sealed ApiKey manifest (JSON) and the SHA-256 of its plaintext, which only
    this test knows: the app prints the hash, never the key."""
    value = f"sk_job_{secrets.token_hex(16)}"
    manifest = seal_for_cluster(kube, admin_api, namespace, name, value, tmp)
    return json.dumps(manifest), hashlib.sha256(value.encode()).hexdigest()


def _app_log(core: client.CoreV1Api, namespace: str, pod: str) -> str:
    # Raw bytes: the client's str deserialisation mangles some log lines into a repr.
    raw = core.read_namespaced_pod_log(pod, namespace, container="app", _preload_content=False)
    text: str = raw.data.decode()
    return text.strip()


def test_job_with_native_sidecar_completes_and_init_only_delivers(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    pods: PodEnvironment,
    gateway: GatewayProcess,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(admin_api)
    manifest, digest = _sealed_key(kube, admin_api, namespace, "canary", tmp_path)
    setup_keys(admin_api, namespace, {"canary": manifest})
    script = f"sha256sum {KEYS}/canary | cut -d' ' -f1"

    # (a) A Job: its pod gets the native sidecar; the Job completes once the app exits.
    template = injected_pod(pods, "job-probe", "canary", script=script, restart="Never")
    wait_admission_ready(core, namespace, template)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "reader"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {k: v for k, v in template["metadata"].items() if k != "name"},
                "spec": template["spec"],
            },
        },
    }
    client.BatchV1Api(admin_api).create_namespaced_job(namespace, job)
    started = time.monotonic()

    def finished() -> str | None:
        status = client.BatchV1Api(admin_api).read_namespaced_job("reader", namespace).status
        if status.succeeded:
            return "succeeded"
        return "failed" if status.failed else None

    assert eventually(finished, 120, "the Job to finish") == "succeeded"
    print(f"Job complete {time.monotonic() - started:.1f} s after it was created")
    (job_pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=reader").items
    assert job_pod.metadata.annotations["securekeys.io/injected"] == "native"
    native = [c for c in job_pod.spec.init_containers or [] if c.name == SIDECAR]
    assert native
    assert native[0].restart_policy == "Always"
    assert _app_log(core, namespace, job_pod.metadata.name) == digest

    # (b) init-only: the key is fetched once before the app starts, no sidecar stays.
    body = injected_pod(pods, "once", "canary", mode="init-only", script=script, restart="Never")
    wait_admission_ready(core, namespace, body)
    created = core.create_namespaced_pod(namespace, body)
    assert created.metadata.annotations["securekeys.io/injected"] == "init-only"
    assert all(c.restart_policy != "Always" for c in created.spec.init_containers or [])
    assert [c.name for c in created.spec.containers] == ["app"]

    def done() -> str | None:
        phase: str | None = core.read_namespaced_pod("once", namespace).status.phase
        return phase if phase in {"Succeeded", "Failed"} else None

    assert eventually(done, 120, "the init-only pod to finish") == "Succeeded"
    assert _app_log(core, namespace, "once") == digest


# -- 4. the audit log verifies, and an edit is found -------------------------------------


class _AdminSecrets:
    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)

    async def get_secret(self, namespace: str, name: str) -> JsonObject | None:
        secret = self._core.read_namespaced_secret(name, namespace)
        return {"data": dict(secret.data or {})}


def _chained(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as chained: what the logger adds (``event``, ``level``) left out."""
    return {k: v for k, v in record.items() if k not in {"event", "level", "logger"}}


def test_the_audit_log_verifies_and_an_edit_is_found(
    admin_api: client.ApiClient,
    gateway: GatewayProcess,
    controller_setup: tuple[Path, Path],
) -> None:
    # At least one record of this test's own: a refusal of a token that is no token.
    answer = _ask(gateway, "not-a-token", ("alpha",), "e2e-audit")
    assert (answer.status, answer.reason) == (401, "TokenInvalid"), answer
    _refusal_audited(gateway, "e2e-audit", "TokenInvalid")

    source = MaterialSource(
        _AdminSecrets(admin_api),
        CachedProviders(KmsSettings.load(controller_setup[1])),
        CONTROLLER_NAMESPACE,
    )
    fingerprint_key = asyncio.run(source.fingerprint_key())
    key = derive_audit_key(fingerprint_key)
    zero(fingerprint_key)

    logged = _audit_lines(gateway)
    records = [_chained(r) for r in logged if "chain" in r]
    assert records, "no chained audit record in the gateway's log"
    chains = {r["chain"].rpartition(":")[0] for r in records}
    print(f"{len(records)} chained audit records in {len(chains)} chain(s)")
    assert verify(records, key) is None

    middle = len(records) // 2
    edited = [dict(r) for r in records]
    edited[middle]["result"] = "success" if edited[middle]["result"] == "denied" else "denied"
    broken = verify(edited, key)
    assert broken is not None
    assert broken.index == middle, broken

    deleted = records[:middle] + records[middle + 1 :]
    same_chain = middle + 1 < len(records) and (
        records[middle]["chain"].rpartition(":")[0]
        == records[middle + 1]["chain"].rpartition(":")[0]
    )
    if same_chain:
        broken = verify(deleted, key)
        assert broken is not None
        assert broken.index == middle, broken
    zero(key)
