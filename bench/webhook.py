"""The gateway's webhook: AdmissionReview latency, pod create latency, memory.

Runs on the local control plane with the gateway as a subprocess under its shipped RBAC,
its caches holding 1,000 ApiKeys and 1,000 KeyRoles (plus the cluster's
ServiceAccounts).

1. AdmissionReview latency for a representative pod (a Deployment's: two containers,
   two keys, the native sidecar injected, the answer logged every time) at concurrency
   1, 16 and 64, p50 and p99. The baseline, measured in the same run over the same TLS
   certificate and keep-alive connections, is a bare aiohttp endpoint (its own process)
   that parses the review and answers ``allowed: true``. Each round runs the two servers
   back to back (alternating which goes first); a ratio is the median over the rounds of
   each round's gateway / bare, so that a slow spell of the shared machine weighs on
   both sides of a pair alike (the medians of each side are printed too). Also the CPU
   each server spends per request (from /proc), the steadier measure of its cost. The
   load generator is this process (aiohttp), on the same 2 cores as the servers.

   Two workloads, each a pool of bodies sent in turn:
   * ``replicas`` (the representative one): the pods of one Deployment as the API
     server sends them, each with its own request uid and its own token volume name
     (``kube-api-access-xxxxx``). The gateway reuses one answer for them
     (``gateway.webhook.answers``).
   * ``rollouts``: the first pods of 1,000 rollouts of one Deployment: each with its
     own ``pod-template-hash`` label. The gateway reads no label but
     ``securekeys.io/inject``, so they share one answer too.
   * ``distinct``: 1,000 pods of 1,000 different Deployments (each with its own
     ``pod-template-hash`` and its own app container name), more shapes than the gateway
     keeps, so every answer is computed afresh: the pipeline's own cost.
2. Pod create latency through the API server (sequential creates of an opted-in pod,
   which stays Pending: the cluster has no node) with the webhook registered and without
   it, in alternating blocks; the difference of the p99s is what the webhook adds. Two
   more arms tell the API server's share from the gateway's: the bare endpoint in the
   gateway's place (what calling any webhook costs), and the bare endpoint answering
   with the gateway's patch for that pod, given beforehand (what applying the patch and
   storing the larger pod cost).
3. Hostile bodies (issue 16): for each annotation, its worst-case value in a review of
   ``HOSTILE_SIZE`` bytes (about the API server's request limit), sent one at a time on
   one keep-alive connection, each followed by its benign twin: the representative pod
   grown to the same size and the same number of items with unrelated annotations (the
   same bytes and objects to read, a valid pod), in the same run. ``hostile_ratio`` is
   the largest median(hostile) / median(twin) over the kinds (goal <= 2: the pipeline is
   linear and bounded, so a hostile body costs what any body of its shape costs);
   ``hostile_vs_plain`` the slowest hostile body over the plain representative pod
   (what reading 3 MiB costs at all).
4. Peak RSS of the gateway (VmHWM), after everything above.

Last line: {"bench": "webhook", "p99_ratio": p99 gateway / p99 bare at concurrency 16
(replicas), "p99_ratio_distinct": the same for distinct pods, "p99_ratio_rollouts": for
the first pods of rollouts, "cpu_ratio", "cpu_ratio_distinct", "cpu_ratio_rollouts": CPU
per request, gateway / bare, at concurrency 16, "added_create_p99_ms": ...,
"hostile_ratio": ..., "rss_mib": ..., "concurrency": {...}, ...}. ``--hostile-only``
runs part 3 alone; ``--workloads``, ``--concurrency`` and ``--skip-creates`` run less of
parts 1 and 2 (for iterating: ``--workloads distinct --concurrency 16 --skip-creates``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from secure_keys.kube.client import APIKEYS, KEYROLES, Credentials, KubeApi, Resource
from secure_keys_dev import access
from secure_keys_dev.cluster import LocalCluster, free_port
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GatewayProcess,
    bind_gateway_identity,
    ensure_namespace,
    eventually,
    install_crds,
    register_gateway_webhook,
    write_gateway_tls,
)

NAMESPACE = "bench"
PODS = Resource("", "v1", "pods")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
WEBHOOK = "secure-keys-gateway-bench"

BARE_SERVER = """
import ssl, sys
from aiohttp import web

calls = 0
canned = {}

async def mutate(request):
    global calls
    calls += 1
    review = await request.json()
    return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True}})

# Only for the pod-create arms, never measured against the gateway: how many reviews
# came in (is the API server calling this endpoint yet?), and an arm that answers with
# a patch given beforehand (what applying the gateway's patch costs the API server).
async def count(request):
    return web.Response(text=str(calls))

async def set_canned(request):
    canned["patch"] = (await request.read()).decode()
    return web.Response(text="ok")

async def mutate_canned(request):
    global calls
    calls += 1
    review = await request.json()
    return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True,
                     "patchType": "JSONPatch", "patch": canned["patch"]}})

app = web.Application(client_max_size=4 * 1024 * 1024)
app.router.add_post("/mutate", mutate)
app.router.add_get("/count", count)
app.router.add_post("/canned", set_canned)
app.router.add_post("/canned/mutate", mutate_canned)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[3], sys.argv[4])
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), ssl_context=context,
            access_log=None, print=None)
"""


def representative_review(
    uid: str,
    token_volume: str = "kube-api-access-abcde",  # noqa: S107 - a volume name
    template_hash: str = "7d4b9c",
    container: str = "web",
) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"web-{template_hash}-",
            "namespace": NAMESPACE,
            "labels": {
                "app": "web",
                "pod-template-hash": template_hash,
                "securekeys.io/inject": "true",
            },
            "annotations": {"securekeys.io/keys": "key-1,key-2"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"web-{template_hash}",
                    "uid": "4f1c0a52-0000-4000-8000-000000000001",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [
                {
                    "name": container,
                    "image": "registry.example/web:1.2.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "volumeMounts": [
                        {
                            "name": token_volume,
                            "readOnly": True,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        }
                    ],
                },
                {"name": "metrics", "image": "registry.example/exporter:0.9"},
            ],
            "volumes": [
                {
                    "name": token_volume,
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
                        ]
                    },
                }
            ],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
        },
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def _suffix(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))


def workload(name: str, size: int = 1000, seed: int = 7) -> list[bytes]:
    """``size`` review bodies of a workload (``WORKLOADS``)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(size):
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        token_volume = f"kube-api-access-{_suffix(rng, 5)}"
        template_hash = "7d4b9c" if name == "replicas" else _suffix(rng, 10)
        container = f"web-{template_hash}" if name == "distinct" else "web"
        review = representative_review(uid, token_volume, template_hash, container)
        bodies.append(json.dumps(review).encode())
    return bodies


WORKLOADS = ("replicas", "rollouts", "distinct")
HOSTILE_SIZE = 3 * 1024 * 1024


def _sized(annotations: dict[str, str], size: int = HOSTILE_SIZE) -> bytes:
    """The representative review with ``annotations`` added, the first value grown so
    the body is ``size`` bytes (its unit repeated: the value given is one unit)."""
    review = representative_review("0f6c1f4e-0000-4000-8000-00000000beef")
    metadata = review["request"]["object"]["metadata"]
    key, unit = next(iter(annotations.items()))
    metadata["annotations"].update(annotations)
    base = len(json.dumps(review))
    metadata["annotations"][key] = unit * max(1, (size - base) // len(unit))
    return json.dumps(review).encode()


def hostile_bodies() -> dict[str, tuple[bytes, bytes]]:
    """The worst body of each kind, all about ``HOSTILE_SIZE`` bytes, each with its
    benign twin: the representative pod grown to the same size and the same number of
    items with unrelated annotations (a valid pod). What issue 16 found (one name
    repeated: quadratic) and its relatives, one per annotation."""
    padded = _sized({"example.com/padding": "x"})
    bodies = {
        name: (_sized({annotation: unit}), padded)
        for name, annotation, unit in (
            ("keys: one name repeated", "securekeys.io/keys", "k,"),
            ("keys: one long name", "securekeys.io/keys", "K"),
            ("keys: only commas", "securekeys.io/keys", ","),
            ("containers: one name repeated", "securekeys.io/containers", "c,"),
            ("mount-path: long", "securekeys.io/mount-path", "/a"),
            ("volume-size: digits", "securekeys.io/volume-size", "9"),
            ("cpu-limit: digits", "securekeys.io/sidecar-cpu-limit", "1"),
            ("reload-url: long", "securekeys.io/reload-url", "a"),
            ("unknown annotation: long value", "securekeys.io/x", "1"),
        )
    }

    def many(prefix: str) -> bytes:
        review = representative_review("0f6c1f4e-0000-4000-8000-00000000beef")
        annotations = review["request"]["object"]["metadata"]["annotations"]
        annotations.update({f"{prefix}{i}": "" for i in range(HOSTILE_SIZE // 24)})
        return json.dumps(review).encode()

    bodies["unknown annotations: many"] = (many("securekeys.io/x"), many("example.com/xx"))
    return bodies


async def hostile_admission(url: str, ca_pem: bytes, repeats: int) -> dict[str, Any]:
    """Part 3: the worst hostile body against the padded and the plain pod."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    plain = json.dumps(representative_review("0f6c1f4e-0000-4000-8000-00000000cafe")).encode()
    hostile = hostile_bodies()
    times: dict[str, list[float]] = {"plain": []}
    for name in hostile:
        times[name] = []
        times[f"{name} (twin)"] = []
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: bytes, allowed: bool) -> float:
            started = time.perf_counter()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.read()
            elapsed = time.perf_counter() - started
            verdict = json.loads(answer)["response"]
            if response.status != 200 or verdict["allowed"] is not allowed:
                raise RuntimeError(f"unexpected answer: {answer[:300]!r}")
            if not allowed and len(verdict["status"]["message"]) > 2048:
                raise RuntimeError("a hostile body's denial is longer than 2 KiB")
            return elapsed

        await send(plain, True)  # the handshake
        for _ in range(repeats):
            times["plain"].append(await send(plain, True))
            for name, (body, twin) in hostile.items():
                times[name].append(await send(body, False))
                times[f"{name} (twin)"].append(await send(twin, True))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {name: medians[name] / medians[f"{name} (twin)"] for name in hostile}
    worst = max(ratios, key=lambda name: ratios[name])
    slowest = max(hostile, key=lambda name: medians[name])
    summary = {
        "size_bytes": HOSTILE_SIZE,
        "worst": worst,
        "hostile_ratio": round(ratios[worst], 2),
        "hostile_vs_plain": round(medians[slowest] / medians["plain"], 1),
        "ratios": {name: round(value, 2) for name, value in ratios.items()},
        "median_ms": {name: round(value * 1000, 2) for name, value in medians.items()},
    }
    print(f"hostile bodies: {json.dumps(summary)}", flush=True)
    return summary


@contextlib.contextmanager
def profiled(pid: int, path: str) -> Iterator[None]:
    """``py-spy record`` of process ``pid`` into ``path`` while the block runs (nothing
    when ``path`` is empty). Sampling slows the process: its figures are not the bench's."""
    if not path:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    recorder = subprocess.Popen([*command, "--output", path])  # noqa: S603 - our tool
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
        print(f"profile: {path}", flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    url: str, ca_pem: bytes, bodies: list[bytes], concurrency: int, seconds: float, pid: int
) -> dict[str, float]:
    """Closed-loop load: ``concurrency`` workers, each sending one review after another
    (the next of ``bodies``, in turn); also the server's (``pid``) CPU per request."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    turn = itertools.cycle(bodies)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(deadline: float) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                body = next(turn)
                started = time.perf_counter()
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await response.read()
                if response.status != 200 or json.loads(answer)["response"]["allowed"] is not True:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        # Warm the connections (TLS handshakes) before measuring.
        await asyncio.gather(*(worker(time.perf_counter() + 0.3) for _ in range(concurrency)))
        latencies.clear()
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu
    if errors:
        raise RuntimeError(f"{errors} failed requests against {url}")
    return {
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "rps": len(latencies) / elapsed,
        "cpu_us": cpu / len(latencies) * 1e6,
    }


def _paired(runs: dict[str, list[dict[str, float]]], key: str) -> float:
    """The median over rounds of gateway / bare, each round's two runs side by side."""
    pairs = zip(runs["gateway"], runs["bare"], strict=True)
    return round(statistics.median(g[key] / b[key] for g, b in pairs), 2)


async def admission_latency(
    servers: dict[str, tuple[str, int]],
    ca_pem: bytes,
    rounds: int,
    seconds: float,
    kind: str,
    levels: tuple[int, ...] = (1, 16, 64),
) -> dict[str, Any]:
    """``servers``: name (gateway, bare) -> (URL, pid). Each round runs both, back to
    back, in alternating order; a ratio is the median of the rounds' ratios, so that a
    slow spell of the shared machine weighs on both sides of a pair alike."""
    result: dict[str, Any] = {}
    bodies = workload(kind)
    for concurrency in levels:
        runs: dict[str, list[dict[str, float]]] = {"gateway": [], "bare": []}
        for index in range(rounds):
            order = ("gateway", "bare") if index % 2 == 0 else ("bare", "gateway")
            for name in order:
                url, pid = servers[name]
                runs[name].append(await load(url, ca_pem, bodies, concurrency, seconds, pid))
        summary: dict[str, Any] = {
            name: {
                key: round(statistics.median(r[key] for r in values), 3)
                for key in ("p50_ms", "p99_ms", "rps", "cpu_us")
            }
            for name, values in runs.items()
        }
        summary["p99_ratio"] = _paired(runs, "p99_ms")
        summary["rps_ratio"] = _paired(runs, "rps")
        summary["cpu_ratio"] = _paired(runs, "cpu_us")
        summary["p99_ratios"] = [
            round(g["p99_ms"] / b["p99_ms"], 2)
            for g, b in zip(runs["gateway"], runs["bare"], strict=True)
        ]
        result[str(concurrency)] = summary
        print(f"{kind}, concurrency {concurrency}: {json.dumps(summary)}", flush=True)
    return result


async def populate(api: KubeApi, count: int) -> None:
    await api.create(
        SERVICEACCOUNTS,
        NAMESPACE,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}},
    )
    gate = asyncio.Semaphore(16)

    async def create(resource: Resource, body: dict[str, Any]) -> None:
        async with gate:
            await api.create(resource, NAMESPACE, body)

    jobs = []
    for i in range(count):
        jobs.append(
            create(
                APIKEYS,
                {
                    "apiVersion": "securekeys.io/v1alpha1",
                    "kind": "ApiKey",
                    "metadata": {"name": f"key-{i}", "labels": {"team": f"t{i % 10}"}},
                    "spec": {
                        "source": {"generate": {"length": 32}},
                        "delivery": {"fileName": f"key-{i}.txt"},
                    },
                },
            )
        )
        jobs.append(
            create(
                KEYROLES,
                {
                    "apiVersion": "securekeys.io/v1alpha1",
                    "kind": "KeyRole",
                    "metadata": {"name": f"role-{i}"},
                    "spec": {
                        "subjects": [
                            {"kind": "ServiceAccount", "name": "app" if i < 2 else f"sa-{i}"}
                        ],
                        "keys": {"names": [f"key-{i}", f"key-{(i + 1) % count}"]},
                        "permissions": ["read"],
                    },
                },
            )
        )
    await asyncio.gather(*jobs)


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"securekeys.io/inject": "true"},
            "annotations": {"securekeys.io/keys": "key-1,key-2"},
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "web", "image": "registry.example/web:1"}],
        },
    }


async def create_latencies(api: KubeApi, prefix: str, count: int, *, injected: bool) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        created = await api.create(PODS, NAMESPACE, _pod(f"{prefix}-{i}"))
        latencies.append(time.perf_counter() - started)
        seen = "securekeys.io/injected" in (created["metadata"].get("annotations") or {})
        if seen != injected:
            raise RuntimeError(f"pod {prefix}-{i}: injected={seen}")
    return latencies


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def current_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000, help="ApiKeys and KeyRoles each")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.5, help="per round and server")
    parser.add_argument("--pods", type=int, default=200, help="pod creates per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of each arm")
    parser.add_argument("--hostile-repeats", type=int, default=5)
    parser.add_argument("--hostile-only", action="store_true", help="part 3 alone")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="of part 1, comma-separated"
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="of part 1, comma-separated (16 is reported)"
    )
    parser.add_argument(
        "--skip-creates", action="store_true", help="no part 2 (pod creates): for iterating"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="record the gateway with py-spy during each workload of part 1, into "
        "PROFILE.<workload>.txt (collapsed stacks; samples when it runs, not when idle)",
    )
    args = parser.parse_args()
    host = "127.0.0.1"
    with tempfile.TemporaryDirectory(prefix="securekeys-bench-") as tmp, LocalCluster() as cluster:
        work = Path(tmp)
        with access.api_client(cluster.kubeconfig) as admin:
            install_crds(admin)
            ensure_namespace(admin, CONTROLLER_NAMESPACE)
            ensure_namespace(admin, NAMESPACE)
            bind_gateway_identity(admin, "secure-keys-gateway")
        credentials = Credentials.from_kubeconfig(cluster.kubeconfig)

        async def setup() -> None:
            async with KubeApi(credentials) as api:
                await populate(api, args.count)

        started = time.perf_counter()
        asyncio.run(setup())
        print(
            f"{args.count} ApiKeys and {args.count} KeyRoles in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        ca_pem = write_gateway_tls(work / "tls", host)
        gateway = GatewayProcess(
            cluster.user_kubeconfig("secure-keys-gateway"),
            work / "tls",
            work / "gateway.log",
            port=free_port(),
            host=host,
        )
        bare_port = free_port()
        bare = subprocess.Popen(  # noqa: S603 - our interpreter, our script
            [
                sys.executable,
                "-c",
                BARE_SERVER,
                host,
                str(bare_port),
                str(work / "tls" / "tls.crt"),
                str(work / "tls" / "tls.key"),
            ]
        )
        try:
            with gateway:
                if gateway.process is None:
                    raise RuntimeError("the gateway is not running")
                pid = gateway.process.pid
                synced_rss = current_rss_mib(pid)
                eventually(lambda: _accepts(host, bare_port), what="the bare server")
                bare_url = f"https://{host}:{bare_port}"
                servers = {
                    "gateway": (f"{gateway.url}/mutate", pid),
                    "bare": (f"{bare_url}/mutate", bare.pid),
                }
                hostile = asyncio.run(
                    hostile_admission(f"{gateway.url}/mutate", ca_pem, args.hostile_repeats)
                )
                if args.hostile_only:
                    print(json.dumps({"bench": "webhook", **hostile}))
                    return
                levels = tuple(int(c) for c in args.concurrency.split(","))
                latency = {}
                for kind in args.workloads.split(","):
                    with profiled(pid, args.profile and f"{args.profile}.{kind}.txt"):
                        latency[kind] = asyncio.run(
                            admission_latency(
                                servers, ca_pem, args.rounds, args.seconds, kind, levels
                            )
                        )
                create: dict[str, Any] = {"added_p99_ms": None}
                if not args.skip_creates:
                    with access.api_client(cluster.kubeconfig) as admin:
                        create = asyncio.run(
                            pod_creates(admin, gateway, bare_url, ca_pem, credentials, args)
                        )
                rss = peak_rss_mib(pid)
        finally:
            bare.terminate()
            bare.wait(10)
    result = {
        "bench": "webhook",
        **{
            f"{ratio}_ratio" + ("" if kind == "replicas" else f"_{kind}"): latency[kind]
            .get("16", {})
            .get(f"{ratio}_ratio")
            for ratio in ("p99", "cpu")
            for kind in latency
        },
        "added_create_p99_ms": create["added_p99_ms"],
        "hostile_ratio": hostile["hostile_ratio"],
        "hostile": hostile,
        "rss_mib": round(rss, 1),
        "rss_synced_mib": round(synced_rss, 1),
        "cached": {"apikeys": args.count, "keyroles": args.count},
        "concurrency": latency,
        "create": create,
    }
    print(
        f"p99 ratio at concurrency 16: {result.get('p99_ratio')} (goal <= 1.5; "
        f"{result.get('p99_ratio_distinct')} for distinct pods, "
        f"{result.get('p99_ratio_rollouts')} for rollouts); pod create p99 "
        f"added: {result['added_create_p99_ms']} ms (goal <= 5); hostile ratio "
        f"{result['hostile_ratio']} (goal <= 2); gateway peak RSS "
        f"{result['rss_mib']} MiB ({result['rss_synced_mib']} MiB once synced)"
    )
    print(json.dumps(result))


def _accepts(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


async def _injected(api: KubeApi, name: str) -> bool:
    """Create an opted-in pod: was it injected (is the webhook in the chain)?"""
    created = await api.create(PODS, NAMESPACE, _pod(name))
    return "securekeys.io/injected" in (created["metadata"].get("annotations") or {})


ADDED = {"with": "added", "canned": "added_by_canned", "bare": "added_by_bare"}
ARMS = ("with", "canned", "bare", "without")
"""The pod-create arms: the gateway; the bare endpoint answering with the gateway's patch
for that pod, given beforehand; the bare endpoint; no webhook."""


async def pod_creates(
    admin: Any,
    gateway: GatewayProcess,
    bare_url: str,
    ca_pem: bytes,
    credentials: Credentials,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(admin)
    arms: dict[str, list[float]] = {arm: [] for arm in ARMS}
    probes = iter(range(100_000))
    context = ssl.create_default_context(cadata=ca_pem.decode())
    async with KubeApi(credentials) as api, aiohttp.ClientSession() as session:
        # The gateway's patch for the benchmark's pod (names aside, every one is alike).
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "canned",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": NAMESPACE,
                "object": _pod("canned"),
            },
        }
        async with session.post(f"{gateway.url}/mutate", json=review, ssl=context) as response:
            patch = (await response.json())["response"]["patch"]
        async with session.post(f"{bare_url}/canned", data=patch, ssl=context) as response:
            response.raise_for_status()

        async def bare_calls() -> int:
            async with session.get(bare_url + "/count", ssl=context) as response:
                return int(await response.text())

        async def until(check: Any) -> None:
            for _ in range(300):
                if await check():
                    return
                await asyncio.sleep(0.1)
            raise RuntimeError("the API server's webhook chain did not change")

        async def injected() -> bool:
            return await _injected(api, f"probe-{next(probes)}")

        async def not_injected() -> bool:
            return not await injected()

        async def bare_quiet() -> bool:
            """No review reaches the bare endpoint any more."""
            before = await bare_calls()
            await injected()
            return await bare_calls() == before

        async def bare_called() -> bool:
            before = await bare_calls()
            await injected()
            return await bare_calls() > before

        async def switch(arm: str) -> None:
            """Unregister whatever is registered, then register ``arm``'s endpoint and
            wait until the API server calls it."""
            with contextlib.suppress(client.ApiException):
                admission.delete_mutating_webhook_configuration(WEBHOOK)
            await until(not_injected)
            await until(bare_quiet)
            if arm == "with":
                register_gateway_webhook(admin, gateway.url, ca_pem, name=WEBHOOK)
                await until(injected)
            elif arm in ("canned", "bare"):
                url = bare_url + ("/canned" if arm == "canned" else "")
                register_gateway_webhook(admin, url, ca_pem, name=WEBHOOK)
                await until(bare_called)

        for block in range(args.blocks):
            for arm in ARMS:
                await switch(arm)
                arms[arm] += await create_latencies(
                    api, f"{arm}-{block}", args.pods, injected=arm in ("with", "canned")
                )
    summary: dict[str, Any] = {"pods_each": len(arms["with"])}
    for arm, values in arms.items():
        summary[f"{arm}_p50_ms"] = round(percentile(values, 0.5) * 1000, 2)
        summary[f"{arm}_p99_ms"] = round(percentile(values, 0.99) * 1000, 2)
    for quantile in ("p50", "p99"):
        for arm, name in ADDED.items():
            summary[f"{name}_{quantile}_ms"] = round(
                summary[f"{arm}_{quantile}_ms"] - summary[f"without_{quantile}_ms"], 2
            )
    print(f"pod create: {json.dumps(summary)}", flush=True)
    return summary


if __name__ == "__main__":
    main()
