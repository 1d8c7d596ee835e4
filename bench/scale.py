"""Scale: memory, restarts and writes at 1k, 5k and 10k ApiKeys (issue 23, goals 2 and 5).

Runs on the local control plane (real etcd, kube-apiserver) with the controller and the
gateway (webhook and broker) as subprocesses under their shipped RBAC and the local
KMS. For each size in ``--sizes`` (cumulative: the next size adds to the last), in one
namespace:

1. ApiKeys (``generate``, ``rotation.interval: 720h``: none falls due during the run)
   and one KeyRole per ten ApiKeys are created, and the run waits until every ApiKey is
   Ready (one list, then a watch).
2. ``controller_rss_mib`` and ``gateway_rss_mib``: each process's RSS (``VmRSS``) with
   everything synced (the gateway's caches hold every ApiKey, KeyRole and
   ServiceAccount: its ``/readyz`` answers, and a pod's admission names the last key).
3. A controller restart (SIGTERM, then a new process): ``restart_s`` from the new
   process's start to steady state (every ApiKey reconciled once since the start and
   the work queue empty, from its metrics); ``restart_kms_calls``, the data-key calls
   it made for ApiKeys (its DEK cache's misses, versions sealed and rewrapped: the
   process's own counters from zero; opening the controller's own keys at start, one
   unwrap, is not an ApiKey's and not counted); ``restart_writes``, every change to the
   namespace's ApiKeys (metadata or status), blob Secrets and Events seen by watches
   opened before the restart and read until steady state plus ``--quiet`` seconds (the
   leader Lease is not in the namespace and not counted).
4. A gateway restart: ``gateway_restart_s`` to ``/readyz`` and its KMS calls once synced
   (``gateway_restart_kms_calls``, from its ``securekeys_gateway_kms_calls_total``): a
   key costs a KMS call only when a pod is delivered it.

Then, at the largest size, rotation hygiene (goal 5): ``--rotating`` more ApiKeys with
``rotation.interval: --interval``, watched for ``--window`` seconds beside the idle ones.
``idle_writes`` are the writes to the idle keys' objects (goal 0); ``writes_per_rotation``
and ``events_per_rotation`` the rotating keys' writes and Events over the rotations done;
the hourly figures are the window's counts scaled to an hour.

Last line: JSON with ``keys``, ``controller_rss_mib``, ``gateway_rss_mib``, ``restart_s``,
``restart_kms_calls``, ``restart_writes`` for the largest size, ``sizes`` with each size's
figures, and ``hygiene``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from secure_keys.kube.client import APIKEYS, KEYROLES, SECRETS, Credentials, KubeApi, Resource
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
    write_gateway_tls,
)

NAMESPACE = "scale"
EVENTS = Resource("", "v1", "events")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
BLOB_SELECTOR = "app.kubernetes.io/managed-by=secure-keys"
IDLE_INTERVAL = "720h"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's series whose labels include ``labels``."""
    found = 0.0
    for series, value in samples.items():
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            found += value
    return found


def apikey(name: str, interval: str) -> dict[str, Any]:
    return {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name},
        "spec": {"source": {"generate": {"length": 32}}, "rotation": {"interval": interval}},
    }


def keyrole(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "KeyRole",
        "metadata": {"name": f"role-{index}"},
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": f"sa-{index % 50}"}],
            "keys": {"names": [f"key-{10 * index + j}" for j in range(10)]},
            "permissions": ["read"],
        },
    }


async def bounded(concurrency: int, jobs: list[Any]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Any) -> None:
        async with gate:
            await job

    await asyncio.gather(*(run(j) for j in jobs))


def ready(item: dict[str, Any]) -> bool:
    for condition in (item.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


async def wait_ready(api: KubeApi, names: set[str], timeout: float) -> None:
    page = await api.list(APIKEYS, NAMESPACE)
    done = {i["metadata"]["name"] for i in page.get("items") or [] if ready(i)} & names
    version = page["metadata"]["resourceVersion"]
    deadline = time.monotonic() + timeout
    while len(done) < len(names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names) - len(done)} ApiKeys not Ready in time")
        async for event in api.watch(APIKEYS, NAMESPACE, resource_version=version):
            obj = event["object"]
            version = obj["metadata"]["resourceVersion"]
            name = obj["metadata"].get("name")
            if event["type"] in ("ADDED", "MODIFIED") and name in names and ready(obj):
                done.add(name)
            if len(done) >= len(names) or time.monotonic() > deadline:
                break


class Writes:
    """Changes seen by watches on the namespace's ApiKeys, blob Secrets and Events, by
    (resource, object name); a blob Secret counts under its ApiKey's name, an Event
    under its involved object's."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, api: KubeApi) -> None:
        for resource, selector in ((APIKEYS, None), (SECRETS, BLOB_SELECTOR), (EVENTS, None)):
            page = await api.list(resource, NAMESPACE, label_selector=selector, limit=1)
            version = page["metadata"]["resourceVersion"]
            self._tasks.append(asyncio.create_task(self._watch(api, resource, selector, version)))

    async def _watch(
        self, api: KubeApi, resource: Resource, selector: str | None, version: str
    ) -> None:
        while True:
            async for event in api.watch(
                resource, NAMESPACE, resource_version=version, label_selector=selector
            ):
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                name = obj["metadata"].get("name", "")
                if resource is EVENTS:
                    name = (obj.get("involvedObject") or {}).get("name", "")
                elif resource is SECRETS:
                    name = name.removesuffix(".sealed")
                self.seen[(resource.plural, name)] += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def count(self, names: set[str] | None = None, resource: str | None = None) -> int:
        return sum(
            n
            for (plural, name), n in self.seen.items()
            if (names is None or name in names) and (resource is None or plural == resource)
        )


def restart_controller(controller: ControllerProcess, count: int, timeout: float) -> float:
    """Stop and start the controller; seconds from the new start to steady state."""
    controller.stop()
    started = time.perf_counter()
    controller.start(timeout=timeout)
    port = controller.metrics_port
    if port is None:
        raise RuntimeError("the controller needs a metrics port")

    def steady() -> bool:
        try:
            samples = scrape(port)
        except OSError:
            return False
        reconciled = total(samples, "securekeys_reconciles_total", kind="apikey")
        return reconciled >= count and total(samples, "securekeys_queue_depth") == 0

    eventually(steady, timeout, "the restarted controller's steady state")
    return time.perf_counter() - started


def kms_calls(samples: dict[str, float]) -> float:
    return (
        total(samples, "securekeys_dek_cache_lookups_total", result="miss")
        + total(samples, "securekeys_versions_sealed_total")
        + total(samples, "securekeys_versions_rewrapped_total")
    )


def gateway_ready(gateway: GatewayProcess, context: ssl.SSLContext) -> bool:
    try:
        url = f"{gateway.url}/readyz"
        with urllib.request.urlopen(url, timeout=5, context=context) as r:  # noqa: S310 - https
            return bool(r.status == 200)
    except OSError:
        return False


async def measure_size(
    api: KubeApi,
    size: int,
    created: int,
    controller: ControllerProcess,
    gateway: GatewayProcess,
    context: ssl.SSLContext,
    args: argparse.Namespace,
) -> dict[str, Any]:
    names = [f"key-{i}" for i in range(created, size)]
    started = time.perf_counter()
    await bounded(
        args.concurrency,
        [api.create(APIKEYS, NAMESPACE, apikey(n, IDLE_INTERVAL)) for n in names]
        + [api.create(KEYROLES, NAMESPACE, keyrole(i)) for i in range(created // 10, size // 10)],
    )
    await wait_ready(api, {f"key-{i}" for i in range(size)}, args.timeout)
    sealed_s = time.perf_counter() - started
    await asyncio.sleep(args.quiet)  # the last status writes and Events land
    if controller.process is None or gateway.process is None:
        raise RuntimeError("a process is not running")
    figures: dict[str, Any] = {
        "keys": size,
        "keyroles": size // 10,
        "sealed_per_s": round((size - created) / sealed_s, 1),
        "controller_rss_mib": round(rss_mib(controller.process.pid), 1),
        "gateway_rss_mib": round(rss_mib(gateway.process.pid), 1),
    }
    writes = Writes()
    await writes.start(api)
    restart_s = await asyncio.to_thread(restart_controller, controller, size, args.timeout)
    await asyncio.sleep(args.quiet)
    await writes.stop()
    if controller.metrics_port is None or controller.process is None:
        raise RuntimeError("the controller needs a metrics port")
    samples = scrape(controller.metrics_port)
    figures |= {
        "restart_s": round(restart_s, 2),
        "restart_kms_calls": int(kms_calls(samples)),
        "restart_writes": writes.count(),
        "restart_writes_by_resource": {
            plural: writes.count(resource=plural) for plural in ("apikeys", "secrets", "events")
        },
        "controller_rss_after_restart_mib": round(rss_mib(controller.process.pid), 1),
    }
    gateway.stop()
    started = time.perf_counter()
    await asyncio.to_thread(gateway.start, args.timeout)
    await asyncio.to_thread(
        eventually, lambda: gateway_ready(gateway, context), args.timeout, "the gateway's readyz"
    )
    figures["gateway_restart_s"] = round(time.perf_counter() - started, 2)
    if gateway.metrics_port is None or gateway.process is None:
        raise RuntimeError("the gateway needs a metrics port")
    figures["gateway_restart_kms_calls"] = int(
        total(scrape(gateway.metrics_port), "securekeys_gateway_kms_calls_total")
    )
    figures["gateway_rss_after_restart_mib"] = round(rss_mib(gateway.process.pid), 1)
    print(f"{size} ApiKeys: {json.dumps(figures)}", flush=True)
    return figures


async def hygiene(api: KubeApi, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--rotating`` keys rotating every ``--interval`` beside ``size`` idle ones."""
    rotating = {f"rot-{i}" for i in range(args.rotating)}
    await bounded(
        args.concurrency,
        [api.create(APIKEYS, NAMESPACE, apikey(n, args.interval)) for n in rotating],
    )
    await wait_ready(api, rotating, args.timeout)
    before = await api.list(APIKEYS, NAMESPACE, label_selector=None)
    versions = {
        i["metadata"]["name"]: (i.get("status") or {}).get("currentVersion", 0)
        for i in before.get("items") or []
        if i["metadata"]["name"] in rotating
    }
    writes = Writes()
    await writes.start(api)
    await asyncio.sleep(args.window)
    await writes.stop()
    after = await api.list(APIKEYS, NAMESPACE)
    rotations = sum(
        (i.get("status") or {}).get("currentVersion", 0) - versions.get(i["metadata"]["name"], 0)
        for i in after.get("items") or []
        if i["metadata"]["name"] in rotating
    )
    idle = {f"key-{i}" for i in range(size)}
    hour = 3600 / args.window
    writes_rotating = writes.count(rotating)
    events_rotating = writes.count(rotating, "events")
    return {
        "idle_keys": size,
        "rotating_keys": args.rotating,
        "interval": args.interval,
        "window_s": args.window,
        "rotations": rotations,
        "idle_writes": writes.count(idle),
        "writes_per_rotation": round(writes_rotating / rotations, 2) if rotations else None,
        "events_per_rotation": round(events_rotating / rotations, 2) if rotations else None,
        "writes_per_hour": round(writes.count() * hour),
        "events_per_hour": round(writes.count(resource="events") * hour),
        "rotations_per_hour": round(rotations * hour),
    }


async def run(
    kubeconfig: Path,
    controller: ControllerProcess,
    gateway: GatewayProcess,
    context: ssl.SSLContext,
    args: argparse.Namespace,
) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    async with KubeApi(Credentials.from_kubeconfig(kubeconfig), limit=args.concurrency) as api:
        for index in range(50):
            await api.create(
                SERVICEACCOUNTS,
                NAMESPACE,
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"sa-{index}"}},
            )
        figures = []
        created = 0
        for size in sizes:
            figures.append(
                await measure_size(api, size, created, controller, gateway, context, args)
            )
            created = size
        hygiene_figures = await hygiene(api, created, args) if args.rotating else None
    last = figures[-1]
    return {
        "bench": "scale",
        **{
            k: last[k]
            for k in (
                "keys",
                "controller_rss_mib",
                "gateway_rss_mib",
                "restart_s",
                "restart_kms_calls",
                "restart_writes",
                "gateway_restart_s",
                "gateway_restart_kms_calls",
            )
        },
        "sizes": figures,
        "hygiene": hygiene_figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--quiet", type=float, default=5, help="seconds after steady state")
    parser.add_argument("--rotating", type=int, default=10, help="0: no hygiene part")
    parser.add_argument("--interval", default="20s")
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        help="run the controller with its Lease (off by default: on a loaded machine a "
        "renewal can time out, and the controller then exits, as it should, with no "
        "Deployment here to start it again)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="securekeys-scale-") as tmp, LocalCluster() as cluster:
        work = Path(tmp)
        with access.api_client(cluster.kubeconfig) as admin:
            install_crds(admin)
            ensure_namespace(admin, CONTROLLER_NAMESPACE)
            ensure_namespace(admin, NAMESPACE)
            bind_controller_identity(admin, "secure-keys-controller")
            bind_gateway_identity(admin, "secure-keys-gateway", broker=True)
        kms = write_local_kms(work / "kms")
        ca_pem = write_gateway_tls(work / "tls", "127.0.0.1")
        context = ssl.create_default_context(cadata=ca_pem.decode())
        controller = ControllerProcess(
            cluster.user_kubeconfig("secure-keys-controller"),
            kms,
            work / "controller.log",
            workers=args.workers,
            metrics_port=free_port(),
            lease="secure-keys-controller" if args.leader_elect else None,
        )
        gateway = GatewayProcess(
            cluster.user_kubeconfig("secure-keys-gateway"),
            work / "tls",
            work / "gateway.log",
            port=free_port(),
            metrics_port=free_port(),
            kms_config=kms,
        )
        with controller:
            gateway.start(timeout=120)
            try:
                result = asyncio.run(run(cluster.kubeconfig, controller, gateway, context, args))
            finally:
                gateway.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
