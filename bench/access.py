"""Benchmark: a person's or a pipeline's read, ``secure-keys get``, against ``kubectl``.

Starts a local control plane (no node), the controller and the gateway (webhook, broker,
access webhook) as subprocesses under their shipped RBAC with the local KMS, one
generated ApiKey, a KeyRole granting it to a client-certificate user, and a plain Secret
that user may ``get``. Then, in one run, interleaved round by round:

- the command as a user or a pipeline experiences it, process start included:
  ``secure-keys get KEY`` against ``kubectl get secret S -o jsonpath={.data.k}``, same
  user, same API server, ``--rounds`` each; p50 and p99 of each and their ratio;
- in-process: ``KeyManager("cluster").get_key`` against a plain GET of the Secret with
  our own client (``cli.kubeapi.run_api``, which also opens one connection per call),
  paced under the gateway's per-user rate limit;
- KMS calls during the reads: the gateway's ``securekeys_gateway_kms_calls_total``
  differenced around the rounds (the DEK cache should make it 0 in steady state);
- where the command's time goes: the interpreter alone (``python -c pass``), the imports
  a ``get`` makes (``secure_keys.cli.main`` and the verb's module, ``cli.access``), and
  the rest (the kubeconfig, TLS, the review's round trip through the API server and the
  gateway, opening the answer).

Also the floor any Python client of this design starts from: an interpreter importing
only the libraries a read cannot do without (``time_floor_ms``, and ``floor_p50_ratio``
against kubectl's whole run).

Last line: JSON with ``p99_ratio`` (get p99 / kubectl p99), ``p50_ratio``,
``inprocess_p99_ratio`` and the other figures. The goal (issue 20) is ``p99_ratio`` <= 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys.gateway.access.reviews import UserLimits
from secure_keys_dev import access
from secure_keys_dev.cluster import LocalCluster, free_port
from secure_keys_dev.localkms import write_local_kms
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    GatewayProcess,
    bind_controller_identity,
    bind_gateway_identity,
    ensure_namespace,
    eventually,
    install_crds,
    is_ready,
    register_gateway_webhook,
    write_gateway_tls,
)

NAMESPACE = "bench-access"
USER = "bench-reader"
KEY = "bench-key"
SECRET = "bench-plain"  # noqa: S105 - a Secret's name
FLOOR_IMPORTS = (
    "import argparse, dataclasses, json, ssl, http.client, yaml\n"
    "from cryptography.hazmat.primitives.asymmetric import x25519\n"
    "from cryptography.hazmat.primitives.ciphers import aead"
)
PACE = 1.25 / UserLimits().rate
"""Seconds between in-process reads: a fifth under the gateway's per-user rate."""


def _metrics(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("securekeys_gateway_kms_calls_total"):
            total += float(line.rpartition(" ")[2])
    return total


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)  # noqa: S603 - ours
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {done.stderr[-500:]!r}")
    return elapsed


def _succeeds(argv: list[str]) -> bool:
    done = subprocess.run(argv, capture_output=True, check=False)  # noqa: S603 - ours
    return done.returncode == 0


def set_up(api: client.ApiClient) -> None:
    ensure_namespace(api, NAMESPACE)
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "securekeys.io",
        "v1alpha1",
        NAMESPACE,
        "apikeys",
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": KEY},
            "spec": {"source": {"generate": {"length": 40}}},
        },
    )
    custom.create_namespaced_custom_object(
        "securekeys.io",
        "v1alpha1",
        NAMESPACE,
        "keyroles",
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "KeyRole",
            "metadata": {"name": "bench-readers"},
            "spec": {
                "subjects": [{"kind": "User", "name": USER}],
                "keys": {"names": [KEY]},
                "permissions": ["read"],
            },
        },
    )
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(metadata=client.V1ObjectMeta(name=SECRET), string_data={"k": "x" * 40}),
    )
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        NAMESPACE,
        {
            "metadata": {"name": "plain-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        NAMESPACE,
        {
            "metadata": {"name": "plain-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "plain-reader",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
    )

    def ready() -> bool:
        obj = custom.get_namespaced_custom_object(
            "securekeys.io", "v1alpha1", NAMESPACE, "apikeys", KEY
        )
        return is_ready(obj)

    eventually(ready, 120, "the ApiKey Ready")


def in_process(kubeconfig: Path, rounds: int) -> tuple[list[float], list[float]]:
    from secure_keys.cli import kubeapi
    from secure_keys.cli.manager import KeyManager
    from secure_keys.core.memory import zero
    from secure_keys.kube.client import SECRETS

    km = KeyManager("cluster", kubeconfig=kubeconfig, namespace=NAMESPACE)
    target = kubeapi.load_target(kubeconfig)
    ours, plain = [], []
    for _ in range(rounds):
        # Paced under the gateway's per-user limit (``UserLimits``): a faster loop
        # measures the 429s and their Retry-After waits, not a read.
        time.sleep(PACE)
        started = time.perf_counter()
        value = km.get_key(KEY)
        ours.append(time.perf_counter() - started)
        zero(value)
        started = time.perf_counter()
        kubeapi.run_api(target, lambda api: api.get(SECRETS, NAMESPACE, SECRET))
        plain.append(time.perf_counter() - started)
    return ours, plain


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with LocalCluster() as cluster:
        api = access.api_client(cluster.kubeconfig)
        install_crds(api)
        ensure_namespace(api, CONTROLLER_NAMESPACE)
        bind_controller_identity(api, "bench-controller")
        kms = write_local_kms(work / "kms")
        bind_gateway_identity(api, "bench-gateway", broker=True)
        ca_pem = write_gateway_tls(work / "tls", "127.0.0.1")
        metrics_port = free_port()
        gateway = GatewayProcess(
            cluster.user_kubeconfig("bench-gateway"),
            work / "tls",
            work / "gateway.log",
            port=free_port(),
            metrics_port=metrics_port,
            kms_config=kms,
        )
        with ControllerProcess(
            cluster.user_kubeconfig("bench-controller"), kms, work / "controller.log"
        ):
            gateway.start(timeout=120)
            try:
                register_gateway_webhook(api, gateway.url, ca_pem, name="bench-access")
                set_up(api)
                reader = cluster.user_kubeconfig(USER)
                get = [
                    sys.executable,
                    "-m",
                    "secure_keys.cli",
                    f"--kubeconfig={reader}",
                    "--store=cluster",
                    "get",
                    KEY,
                    "-n",
                    NAMESPACE,
                ]
                kubectl = [
                    str(cluster.binaries.kubectl),
                    f"--kubeconfig={reader}",
                    "get",
                    "secret",
                    SECRET,
                    "-n",
                    NAMESPACE,
                    "-o",
                    "jsonpath={.data.k}",
                ]
                eventually(lambda: _succeeds(get), 60, "a first read")
                for _ in range(args.warmup):
                    _timed(get)
                    _timed(kubectl)
                before = _metrics(metrics_port)
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(_timed(get))
                    theirs.append(_timed(kubectl))
                kms_calls = _metrics(metrics_port) - before
                inproc_ours, inproc_plain = in_process(reader, args.rounds)
                python = [_timed([sys.executable, "-c", "pass"]) for _ in range(10)]
                # The floor of any Python client of this design: the interpreter and the
                # libraries a read cannot do without (TLS and HTTP, the kubeconfig's YAML,
                # X25519 and AES-GCM, dataclasses), none of ours.
                floor = [_timed([sys.executable, "-c", FLOOR_IMPORTS]) for _ in range(10)]
                # What a `get` imports: main, then the verb's module (cli/args.py).
                get_imports = "import secure_keys.cli.main, secure_keys.cli.access"
                imports = [_timed([sys.executable, "-c", get_imports]) for _ in range(10)]
            finally:
                gateway.stop()
    get_p50, get_p99 = statistics.median(ours), _pct(ours, 0.99)
    kubectl_p50, kubectl_p99 = statistics.median(theirs), _pct(theirs, 0.99)
    interpreter, imported = statistics.median(python), statistics.median(imports)
    floor_p50 = statistics.median(floor)
    return {
        "rounds": args.rounds,
        "get_p50_ms": round(get_p50 * 1000, 1),
        "get_p99_ms": round(get_p99 * 1000, 1),
        "kubectl_p50_ms": round(kubectl_p50 * 1000, 1),
        "kubectl_p99_ms": round(kubectl_p99 * 1000, 1),
        "p50_ratio": round(get_p50 / kubectl_p50, 2),
        "p99_ratio": round(get_p99 / kubectl_p99, 2),
        "inprocess_get_key_p50_ms": round(statistics.median(inproc_ours) * 1000, 1),
        "inprocess_get_key_p99_ms": round(_pct(inproc_ours, 0.99) * 1000, 1),
        "inprocess_plain_get_p50_ms": round(statistics.median(inproc_plain) * 1000, 1),
        "inprocess_plain_get_p99_ms": round(_pct(inproc_plain, 0.99) * 1000, 1),
        "inprocess_p99_ratio": round(_pct(inproc_ours, 0.99) / _pct(inproc_plain, 0.99), 2),
        "kms_calls_during_reads": kms_calls,
        "time_python_start_ms": round(interpreter * 1000, 1),
        "time_cli_imports_ms": round((imported - interpreter) * 1000, 1),
        "time_rest_ms": round((get_p50 - imported) * 1000, 1),
        "time_floor_ms": round(floor_p50 * 1000, 1),
        "floor_p50_ratio": round(floor_p50 / kubectl_p50, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        result = run(args, Path(tmp))
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
