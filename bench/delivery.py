"""Benchmark: keys delivered into real pods by the key broker and the sidecar.

Starts a local cluster with a node (real etcd, kube-apiserver, kubelet, containerd), the
controller and the gateway (webhook and broker) as subprocesses under their shipped RBAC
and the local KMS, then runs ``--pods`` real pods (default 20) whose injected sidecar
(the project image) holds one key. It measures, in one run:

- rotation propagation: from the rotate request (the annotation ``secure-keys rotate``
  writes) to the new version on disk in each pod, p50/p99/max over every (pod, rotation)
  pair, and the per-rotation time until every pod had it. "On disk" is the timestamp of
  the sidecar's ``key-state`` log line, which it writes right after the atomic swap (same
  host clock; microseconds). Rotations are spaced 11 s apart: the controller honours at
  most one rotate request per key per 10 s, and a sooner request would time that wait;
- rollout status (docs/rollout.md): from the rotate request to ``status.rollout``
  saying every consuming pod holds the new version (``RolledOut=True``), p50/p99, as a
  ratio to the same rotations' time until the last pod had the file (the baseline); and
  the rollout status writes the gateway sent per rotation (its
  ``securekeys_gateway_rollout_writes_total``; the goal is O(1) per replica, not O(pods));
- broker deliveries per second and p99 latency (one ``POST /v1/stream`` with a token
  bound to a pod, up to the first state line with the sealed material), against a bare
  aiohttp endpoint (a subprocess) over the same certificate and key, same client, same
  concurrency, interleaved rounds. The broker's rate limits (per pod burst 10, per
  ServiceAccount burst 100) cap the requests: pods are spread over several
  ServiceAccounts and each pod's token is used at most ``--reads-per-pod`` times;
- KMS calls per 1,000 reads: the gateway's ``securekeys_gateway_kms_calls_total``
  differenced around the read rounds, per successful broker request (a read; each
  delivers the current version and, in its grace period, the previous one, which
  ``securekeys_gateway_deliveries_total`` counts separately);
- the sidecar's memory in each real pod: working set as Kubernetes counts it (the
  container's memory cgroup ``memory.usage_in_bytes`` less ``total_inactive_file`` from
  ``memory.stat``, read-only, under the node's own cgroup root) and RSS of its process
  (``VmRSS``); the largest over the pods is reported.

With ``--burst N`` (issue 23, goal 4), first, on the empty node: a Deployment of the same
pods scaled from 0 to N at once, without the opt-in (the baseline) and then with it (one
ServiceAccount, as a Deployment has): the time from the scale to the last pod Ready
(with the opt-in, Ready means its key is on disk: the app starts after the key
container's startup probe), whether every pod was admitted (no FailedCreate on the
ReplicaSet), and the gateway's CPU seconds, peak CPU (cores, over 1 s windows) and peak
RSS during each burst, from ``/proc`` of its process.

Last line: JSON with ``propagation_p99_s``, ``pods``, ``real_pods``,
``kms_calls_per_1000_reads``, ``sidecar_working_set_mib``, ``sidecar_rss_mib``,
``delivery_p99_ratio`` (broker p99 / bare p99) and the other figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.core.delivery import AUDIENCE, STREAM_PATH, StreamRequest
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys_dev import access, image
from secure_keys_dev.cluster import Binaries, LocalCluster, free_port
from secure_keys_dev.localkms import write_local_kms
from secure_keys_dev.node import node_arguments
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GROUP,
    VERSION,
    ControllerProcess,
    GatewayProcess,
    bind_controller_identity,
    bind_gateway_identity,
    ensure_namespace,
    eventually,
    get_apikey,
    install_crds,
    register_gateway_webhook,
    request_rotation,
    write_gateway_tls,
)

NAMESPACE = "bench-delivery"
KEY = "rotating"
SIDECAR = "securekeys-sidecar"
ACCOUNTS = 4
SPACING_S = 11.0
IDLE = 'trap "exit 0" TERM; while true; do sleep 1; done'


# -- pure helpers ----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def key_state_times(log: str, key: str, version: int) -> list[datetime.datetime]:
    """When the sidecar logged ``key-state`` for ``key`` at ``version``."""
    found = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            record.get("event") == "key-state"
            and record.get("key") == key
            and record.get("version") == version
        ):
            found.append(datetime.datetime.fromisoformat(record["timestamp"]))
    return found


def working_set(usage: int, stat: str) -> int:
    """Kubernetes' working set: usage less inactive file pages (cgroup v1 names)."""
    fields = dict(line.split() for line in stat.splitlines() if line.strip())
    inactive = int(fields.get("total_inactive_file", fields.get("inactive_file", "0")))
    return max(0, usage - inactive)


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


STAGES = ("review_ms", "body_ms", "pod_ms", "compute_ms", "write_ms", "total_ms")
"""The stages of a first delivery the broker's ``broker.stream`` log line times."""


def stage_summary(log: str) -> dict[str, dict[str, float]]:
    """p50/p99 of each stage over the ``broker.stream`` lines of ``log``, split by
    whether the token needed a TokenReview (``reviewed``) or was found in the cache."""
    found: dict[str, dict[str, list[float]]] = {}
    for line in log.splitlines():
        if '"broker.stream"' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "total_ms" not in record:
            continue
        arm = "reviewed" if record.get("reviewed") else "cached"
        for stage in STAGES:
            found.setdefault(arm, {}).setdefault(stage, []).append(float(record[stage]))
    return {
        f"{arm}_{stage}": {
            "n": len(values),
            "p50": round(percentile(values, 50), 3),
            "p99": round(percentile(values, 99), 3),
        }
        for arm, stages in found.items()
        for stage, values in stages.items()
    }


# -- the bare endpoint (a subprocess) ----------------------------------------------------


def bare_server(port: int, cert: str, key: str, size: int, kubeconfig: str = "") -> None:
    """An aiohttp endpoint answering ``POST /v1/stream`` with one NDJSON line of ``size``
    bytes, over TLS: the floor the broker is compared to. With ``kubeconfig``, it first
    authenticates the bearer token as the broker does (``TokenReviewer``: a TokenReview
    per new token, cached), and answers 401 if it is refused: the floor of any broker
    that keeps the TokenReview of a new token."""
    import asyncio

    from aiohttp import web

    body = (b'{"type":"state","pad":"' + b"x" * max(0, size - 26) + b'"}')[:size] + b"\n"

    async def main() -> None:
        from secure_keys.gateway.broker.tokenreview import (
            KubeTokenReviews,
            TokenRejected,
            TokenReviewer,
        )
        from secure_keys.kube.client import Credentials, KubeApi

        async with contextlib.AsyncExitStack() as stack:
            reviewer = None
            if kubeconfig:
                api = KubeApi(Credentials.discover(Path(kubeconfig)), user_agent="bench-floor")
                reviewer = TokenReviewer(KubeTokenReviews(await stack.enter_async_context(api)))

            async def handle(request: web.Request) -> web.StreamResponse:
                if reviewer is not None:
                    header = request.headers.get("Authorization", "")
                    result = await reviewer.review(header.removeprefix("Bearer "))
                    if isinstance(result, TokenRejected):
                        return web.Response(status=401)
                await request.read()
                response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await response.prepare(request)
                await response.write(body)
                await response.write_eof()
                return response

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            app = web.Application()
            app.router.add_post(STREAM_PATH, handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


def start_bare(port: int, tls: Path, size: int, kubeconfig: Path | None) -> subprocess.Popen[bytes]:
    """``bare_server`` in a subprocess of this file, once it listens."""
    process = subprocess.Popen(  # noqa: S603 - our interpreter and this file
        [
            sys.executable,
            __file__,
            "--bare-server",
            str(port),
            str(tls / "tls.crt"),
            str(tls / "tls.key"),
            str(size),
            str(kubeconfig or ""),
        ],
        stdout=subprocess.PIPE,
    )
    if process.stdout is None or process.stdout.readline().strip() != b"ready":
        raise SystemExit("the bare endpoint did not start")
    return process


# -- the client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reads:
    latencies: list[float]
    per_second: float
    refused: dict[int, int]
    line_size: int


def read_once(port: int, ca: Path, token: str) -> tuple[int, float, int]:
    """One request as a sidecar makes it: (status, seconds, size of the first line)."""
    context = ssl.create_default_context(cafile=str(ca))
    body = StreamRequest(keys=(KEY,), recipient=RecipientPrivateKey.generate().public()).to_json()
    started = time.perf_counter()
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request(
            "POST",
            STREAM_PATH,
            body=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "User-Agent": "bench-delivery",
            },
        )
        response = connection.getresponse()
        line = response.readline() if response.status == 200 else response.read()
        return response.status, time.perf_counter() - started, len(line)
    finally:
        connection.close()


def read_many(port: int, ca: Path, tokens: list[str], concurrency: int) -> Reads:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda t: read_once(port, ca, t), tokens))
    elapsed = time.perf_counter() - started
    ok = [r for r in results if r[0] == 200]
    refused: dict[int, int] = {}
    for status, _, _ in results:
        if status != 200:
            refused[status] = refused.get(status, 0) + 1
    return Reads([r[1] for r in ok], len(ok) / elapsed, refused, max((r[2] for r in ok), default=0))


# -- the cluster side --------------------------------------------------------------------


def create(api: client.ApiClient, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, plural, body
    )


def pod_body(index: int, busybox: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"reader-{index}",
            "labels": {"securekeys.io/inject": "true", "app": "bench-reader"},
            "annotations": {"securekeys.io/keys": KEY},
        },
        "spec": {
            "serviceAccountName": f"app-{index % ACCOUNTS}",
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "app",
                    "image": busybox,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", IDLE],
                }
            ],
        },
    }


def deployment_body(name: str, busybox: str, *, opted_in: bool) -> dict[str, Any]:
    """A Deployment of ``pod_body``'s pods with no replicas; ``opted_in``: labelled and
    annotated for the key (ServiceAccount app-0, which the role binds)."""
    template = pod_body(0, busybox)
    template["metadata"].pop("name")
    template["metadata"]["labels"] = {"app": name}
    template["metadata"]["annotations"] = {}
    template["spec"]["serviceAccountName"] = "app-0"
    if opted_in:
        template["metadata"]["labels"]["securekeys.io/inject"] = "true"
        template["metadata"]["annotations"]["securekeys.io/keys"] = KEY
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    }


@dataclass
class ProcessSample:
    cpu_s: float
    rss_mib: float


def process_sample(pid: int) -> ProcessSample:
    """CPU seconds (user + system) and RSS of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return ProcessSample(cpu, rss)


def burst(
    api: client.ApiClient,
    name: str,
    replicas: int,
    busybox: str,
    gateway_pid: int,
    *,
    opted_in: bool,
    timeout: float,
) -> dict[str, Any]:
    """Scale a Deployment from 0 to ``replicas`` and wait for every pod Ready; then back
    to 0 and wait for the pods to go. The gateway's CPU and RSS are sampled every 0.25 s."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(NAMESPACE, deployment_body(name, busybox, opted_in=opted_in))
    samples = [(time.monotonic(), process_sample(gateway_pid))]
    started = time.monotonic()
    apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": replicas}})
    ready, done_at = 0, None
    while time.monotonic() - started < timeout:
        time.sleep(0.25)
        samples.append((time.monotonic(), process_sample(gateway_pid)))
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items
        ready = sum(
            any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ())
            for p in pods
        )
        if ready >= replicas:
            done_at = time.monotonic()
            break
    failed = [
        e
        for e in core.list_namespaced_event(NAMESPACE).items
        if e.reason == "FailedCreate" and (e.involved_object.name or "").startswith(name)
    ]
    peak_cores = 0.0
    for (t0, a), (t1, b) in zip(samples, samples[4:], strict=False):  # about 1 s windows
        peak_cores = max(peak_cores, (b.cpu_s - a.cpu_s) / (t1 - t0))
    apps.delete_namespaced_deployment(name, NAMESPACE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if not core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items:
            break
        time.sleep(1)
    return {
        "ready": ready,
        "seconds": round(done_at - started, 2) if done_at is not None else None,
        "failed_creates": len(failed),
        "gateway_cpu_s": round(samples[-1][1].cpu_s - samples[0][1].cpu_s, 2),
        "gateway_peak_cores": round(peak_cores, 2),
        "gateway_peak_rss_mib": round(max(s.rss_mib for _, s in samples), 1),
    }


def set_up_keys(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ensure_namespace(api, NAMESPACE)
    for i in range(ACCOUNTS):
        core.create_namespaced_service_account(
            NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=f"app-{i}"))
        )
    create(
        api,
        "apikeys",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApiKey",
            "metadata": {"name": KEY},
            "spec": {"source": {"generate": {"length": 32}}, "rotation": {"gracePeriod": "1h"}},
        },
    )
    create(
        api,
        "keyroles",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KeyRole",
            "metadata": {"name": "readers"},
            "spec": {
                "subjects": [
                    {"kind": "ServiceAccount", "name": f"app-{i}"} for i in range(ACCOUNTS)
                ],
                "keys": {"names": [KEY]},
                "permissions": ["read"],
            },
        },
    )
    eventually(lambda: current_version(api) >= 1, 60, "the ApiKey sealed")


def current_version(api: client.ApiClient) -> int:
    status = get_apikey(api, NAMESPACE, KEY).get("status") or {}
    version: int = status.get("currentVersion") or 0
    return version


def start_pods(api: client.ApiClient, count: int, busybox: str, timeout: float) -> list[str]:
    """Create the pods once a dry run comes back injected; the names of those whose app
    runs (keys on disk) within ``timeout``."""
    core = client.CoreV1Api(api)

    def injected() -> bool:
        try:
            made = core.create_namespaced_pod(NAMESPACE, pod_body(0, busybox), dry_run="All")
        except ApiException:
            return False
        return "securekeys.io/injected" in (made.metadata.annotations or {})

    eventually(injected, 60, "the webhook injecting")
    for i in range(count):
        core.create_namespaced_pod(NAMESPACE, pod_body(i, busybox))
    deadline = time.monotonic() + timeout
    running: list[str] = []
    while time.monotonic() < deadline:
        listed = core.list_namespaced_pod(NAMESPACE, label_selector="app=bench-reader").items
        running = sorted(
            p.metadata.name
            for p in listed
            if any(s.name == "app" and s.state.running for s in p.status.container_statuses or [])
        )
        if len(running) == count:
            break
        time.sleep(2)
    return running


def sidecar_log(api: client.ApiClient, pod: str) -> str:
    raw = client.CoreV1Api(api).read_namespaced_pod_log(
        pod, NAMESPACE, container=SIDECAR, since_seconds=600, _preload_content=False
    )
    text: str = raw.data.decode(errors="replace")
    return text


def rolled_out_after(api: client.ApiClient, before: int, deadline_s: float = 90) -> float | None:
    """Seconds until ``status.rollout`` says every consuming pod holds a version newer
    than ``before`` (``RolledOut=True``), polled every 0.1 s; ``None`` past the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        status = get_apikey(api, NAMESPACE, KEY).get("status") or {}
        rollout = status.get("rollout") or {}
        if (
            rollout.get("version", 0) > before
            and rollout.get("version") == status.get("currentVersion")
            and rollout.get("consumers", 0) > 0
            and rollout.get("current") == rollout.get("consumers")
        ):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


ROLLOUT: dict[str, list[float]] = {"seconds": [], "writes": []}
"""Per rotation: seconds from the request to RolledOut=True, and the gateway's rollout
status writes (``securekeys_gateway_rollout_writes_total`` differenced)."""


def propagate(
    api: client.ApiClient, pods: list[str], rounds: int, metrics_port: int | None = None
) -> tuple[list[float], list[float]]:
    """Per (pod, rotation) delays, and per rotation the delay until every pod had it."""
    samples: list[float] = []
    everyone: list[float] = []
    pool = ThreadPoolExecutor(1)
    for _ in range(rounds):
        before = current_version(api)
        writes_before = (
            metric_sum(metrics(metrics_port), "securekeys_gateway_rollout_writes_total")
            if metrics_port
            else 0.0
        )
        asked = datetime.datetime.now(datetime.UTC)
        request_rotation(api, NAMESPACE, KEY)
        rolled = pool.submit(rolled_out_after, api, before)
        eventually(lambda b=before: current_version(api) > b, 60, "the controller to rotate")  # type: ignore[misc]
        status_s = (datetime.datetime.now(datetime.UTC) - asked).total_seconds()
        version = current_version(api)
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(seen) < len(pods) and time.monotonic() < deadline:
            time.sleep(0.5)
            for pod in pods:
                if pod not in seen:
                    times = key_state_times(sidecar_log(api, pod), KEY, version)
                    if times:
                        seen[pod] = (min(times) - asked).total_seconds()
        if len(seen) < len(pods):
            raise SystemExit(f"version {version} reached only {len(seen)} of {len(pods)} pods")
        samples += seen.values()
        everyone.append(max(seen.values()))
        print(
            f"rotation to v{version}: all {len(pods)} pods in {everyone[-1]:.3f} s "
            f"(first {min(seen.values()):.3f} s; status seen after {status_s:.2f} s)",
            flush=True,
        )
        # The controller honours at most one rotate request per key per 10 s
        # (rotation.REQUEST_SPACING); a request sooner would measure that wait instead.
        time.sleep(SPACING_S)
        rolled_s = rolled.result()
        if rolled_s is not None:
            ROLLOUT["seconds"].append(rolled_s)
        if metrics_port:
            after = metric_sum(metrics(metrics_port), "securekeys_gateway_rollout_writes_total")
            ROLLOUT["writes"].append(after - writes_before)
        print(f"  RolledOut=True after {rolled_s} s; rollout writes {ROLLOUT['writes'][-1:]}")
    pool.shutdown()
    return samples, everyone


def remove_pods(api: client.ApiClient, timeout: float = 180) -> None:
    """Delete the bench's pods and wait for the kubelet to stop them, so that the node
    stops within its own timeout even after a hundred pods (their processes would
    otherwise all be left to the node's cgroup sweep at once)."""
    core = client.CoreV1Api(api)
    with contextlib.suppress(ApiException):
        # Their own 2 s grace, not 0: a pod object then stays until the kubelet has
        # stopped its containers, which is what this waits for.
        core.delete_collection_namespaced_pod(NAMESPACE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not core.list_namespaced_pod(NAMESPACE).items:
            return
        time.sleep(1)
    print(f"pods still listed {timeout:.0f} s after their deletion", flush=True)


def pod_tokens(api: client.ApiClient, pods: list[str]) -> dict[str, str]:
    """A TokenRequest (audience securekeys.io) bound to each pod."""
    core = client.CoreV1Api(api)
    tokens = {}
    for name in pods:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[AUDIENCE],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=name, uid=pod.metadata.uid
                ),
            )
        )
        made = core.create_namespaced_service_account_token(
            pod.spec.service_account_name, NAMESPACE, request
        )
        tokens[name] = made.status.token
    return tokens


def sidecar_memory(
    api: client.ApiClient, pods: list[str], cgroup_name: str
) -> list[dict[str, float]]:
    """Working set and RSS (MiB) of each pod's sidecar, read-only from its cgroup."""
    core = client.CoreV1Api(api)
    root = Path("/sys/fs/cgroup/memory") / cgroup_name
    found = []
    for name in pods:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        )
        ids = [s.container_id for s in statuses if s.name == SIDECAR and s.container_id]
        if not ids:
            continue
        container = ids[0].rpartition("://")[2]
        matches = list(root.glob(f"**/{container}"))
        if not matches:
            continue
        cgroup = matches[0]
        usage = int((cgroup / "memory.usage_in_bytes").read_text())
        ws = working_set(usage, (cgroup / "memory.stat").read_text())
        rss_kib = 0
        for pid in (cgroup / "cgroup.procs").read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss_kib += int(line.split()[1])
        found.append({"working_set_mib": ws / 2**20, "rss_mib": rss_kib / 1024})
    return found


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse_metrics(response.read().decode())


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    settings = node_arguments(Binaries.find().etcd.parent, work / "images")
    with LocalCluster(**settings) as cluster:
        if cluster.node is None:
            raise SystemExit("the local node did not start")
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
            extra_args=("--image-pull-policy=Never",),
        )
        bare_port, floor_port = free_port(), free_port()
        with ControllerProcess(
            cluster.user_kubeconfig("bench-controller"), kms, work / "controller.log"
        ):
            gateway.start(timeout=120)
            bare: subprocess.Popen[bytes] | None = None
            floor: subprocess.Popen[bytes] | None = None
            try:
                register_gateway_webhook(api, gateway.url, ca_pem, name="bench-delivery")
                set_up_keys(api)
                bursts: dict[str, dict[str, Any]] = {}
                if args.burst:
                    assert gateway.process is not None  # noqa: S101 - started above
                    for arm, opted_in in (("plain", False), ("opted_in", True)):
                        bursts[arm] = burst(
                            api, f"burst-{arm.replace('_', '-')}", args.burst,
                            image.BUSYBOX_REFERENCE, gateway.process.pid,
                            opted_in=opted_in, timeout=args.start_timeout,
                        )  # fmt: skip
                        print(f"burst {arm}: {bursts[arm]}", flush=True)
                pods = start_pods(api, args.pods, image.BUSYBOX_REFERENCE, args.start_timeout)
                print(f"{len(pods)} of {args.pods} pods running with their key", flush=True)
                if not pods:
                    raise SystemExit(f"no pod started; gateway log:\n{gateway.log()[-3000:]}")
                samples, everyone = propagate(api, pods, args.rotations, metrics_port)
                log_offset = len(gateway.log())

                tokens = pod_tokens(api, pods)
                per_round = max(1, args.reads_per_pod // args.read_rounds)
                batch = [tokens[p] for _ in range(per_round) for p in pods]
                line_size = read_once(gateway.port, work / "tls" / "ca.crt", batch[0])[2]
                bare = start_bare(bare_port, work / "tls", line_size, None)
                # The floor reviews its own tokens: the API server keeps a token's
                # authentication for 10 s, and the broker's must be as new as ever.
                floor_tokens = pod_tokens(api, pods)
                floor_batch = [floor_tokens[p] for _ in range(per_round) for p in pods]
                floor = start_bare(
                    floor_port, work / "tls", line_size, cluster.user_kubeconfig("bench-gateway")
                )
                before = metrics(metrics_port)
                broker_lat: list[float] = []
                bare_lat: list[float] = []
                floor_lat: list[float] = []
                broker_rates, bare_rates = [], []
                refused: dict[int, int] = {}
                for _ in range(args.read_rounds):
                    b = read_many(bare_port, work / "tls" / "ca.crt", batch, args.concurrency)
                    f = read_many(
                        floor_port, work / "tls" / "ca.crt", floor_batch, args.concurrency
                    )
                    g = read_many(gateway.port, work / "tls" / "ca.crt", batch, args.concurrency)
                    bare_lat += b.latencies
                    floor_lat += f.latencies
                    broker_lat += g.latencies
                    bare_rates.append(b.per_second)
                    broker_rates.append(g.per_second)
                    if f.refused:
                        raise SystemExit(f"the floor endpoint refused tokens: {f.refused}")
                    for status, n in g.refused.items():
                        refused[status] = refused.get(status, 0) + n
                after = metrics(metrics_port)
                kms_calls = metric_sum(after, "securekeys_gateway_kms_calls_total") - metric_sum(
                    before, "securekeys_gateway_kms_calls_total"
                )
                deliveries = metric_sum(after, "securekeys_gateway_deliveries_total") - metric_sum(
                    before, "securekeys_gateway_deliveries_total"
                )
                kms_total = metric_sum(after, "securekeys_gateway_kms_calls_total")
                stages = stage_summary(gateway.log()[log_offset:])

                time.sleep(args.idle)
                memory = sidecar_memory(api, pods, cluster.node.layout.cgroup_name)
            finally:
                for process in (bare, floor):
                    if process is not None:
                        process.send_signal(signal.SIGTERM)
                        process.wait(10)
                gateway.stop()
                remove_pods(api)

    reads = len(broker_lat)
    result: dict[str, Any] = {
        "bench": "delivery",
        "pods": len(pods),
        "pods_asked": args.pods,
        "real_pods": True,
        "rotations": args.rotations,
        "propagation_p50_s": _p(samples, 50),
        "propagation_p99_s": _p(samples, 99),
        "propagation_max_s": round(max(samples), 3) if samples else None,
        "propagation_all_pods_max_s": round(max(everyone), 3) if everyone else None,
        # Rollout status (docs/rollout.md): request -> RolledOut=True, against the same
        # rotations' request -> last pod's file on disk (the baseline, this run).
        "rolled_out_p50_s": _p(ROLLOUT["seconds"], 50),
        "rolled_out_p99_s": _p(ROLLOUT["seconds"], 99),
        "rolled_out_vs_all_pods_on_disk_p50": (
            round(percentile(ROLLOUT["seconds"], 50) / percentile(everyone, 50), 2)
            if ROLLOUT["seconds"] and everyone
            else None
        ),
        "rollout_writes_per_rotation_max": max(ROLLOUT["writes"], default=None),
        "rollout_writes_per_rotation_median": (
            statistics.median(ROLLOUT["writes"]) if ROLLOUT["writes"] else None
        ),
        "broker_reads": reads,
        "broker_refused": refused,
        "broker_deliveries_per_s": round(statistics.median(broker_rates), 1),
        "broker_p99_ms": round(percentile(broker_lat, 99) * 1000, 2) if broker_lat else None,
        "bare_per_s": round(statistics.median(bare_rates), 1),
        "broker_p50_ms": round(percentile(broker_lat, 50) * 1000, 2) if broker_lat else None,
        "bare_p50_ms": round(percentile(bare_lat, 50) * 1000, 2),
        "bare_p99_ms": round(percentile(bare_lat, 99) * 1000, 2),
        "delivery_p99_ratio": (
            round(percentile(broker_lat, 99) / percentile(bare_lat, 99), 2) if broker_lat else None
        ),
        # The floor: the bare endpoint plus the TokenReview of each new token, as the
        # broker makes it (the review stays: docs/gateway.md, "First delivery").
        "floor_p50_ms": round(percentile(floor_lat, 50) * 1000, 2),
        "floor_p99_ms": round(percentile(floor_lat, 99) * 1000, 2),
        "floor_p99_ratio": round(percentile(floor_lat, 99) / percentile(bare_lat, 99), 2),
        "delivery_p99_over_floor": (
            round(percentile(broker_lat, 99) / percentile(floor_lat, 99), 2) if broker_lat else None
        ),
        "broker_stages_ms": stages,
        "deliveries_counted": deliveries,
        "kms_calls_during_reads": kms_calls,
        "kms_calls_total": kms_total,
        "kms_calls_per_1000_reads": round(1000 * kms_calls / reads, 3) if reads else None,
        "sidecars_measured": len(memory),
        "sidecar_working_set_mib": (
            round(max(m["working_set_mib"] for m in memory), 1) if memory else None
        ),
        "sidecar_working_set_median_mib": (
            round(statistics.median(m["working_set_mib"] for m in memory), 1) if memory else None
        ),
        "sidecar_rss_mib": round(max(m["rss_mib"] for m in memory), 1) if memory else None,
        "sidecar_rss_median_mib": (
            round(statistics.median(m["rss_mib"] for m in memory), 1) if memory else None
        ),
    }
    if bursts:
        plain, opted = bursts["plain"], bursts["opted_in"]
        result["burst"] = bursts
        result["burst_pods"] = args.burst
        result["burst_all_admitted"] = opted["failed_creates"] == 0
        result["burst_ratio"] = (
            round(opted["seconds"] / plain["seconds"], 2)
            if opted["seconds"] and plain["seconds"]
            else None
        )
    return result


def _p(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--rotations", type=int, default=5, help="0: delivery figures only")
    parser.add_argument("--reads-per-pod", type=int, default=8, help="under the burst of 10")
    parser.add_argument("--read-rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--start-timeout", type=float, default=240)
    parser.add_argument("--idle", type=float, default=10, help="seconds before memory")
    parser.add_argument("--burst", type=int, default=0, help="pods in the burst; 0: none")
    parser.add_argument(
        "--bare-server", nargs=5, metavar=("PORT", "CERT", "KEY", "SIZE", "KUBECONFIG")
    )
    args = parser.parse_args(argv)
    if args.bare_server:
        port, cert, key, size, kubeconfig = args.bare_server
        bare_server(int(port), cert, key, int(size), kubeconfig)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as work:
        result = run(args, Path(work))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
