"""Controller throughput: 1,000 ApiKeys sealed end to end, then one rotation of all.

Runs on the local control plane (real etcd, kube-apiserver, kube-controller-manager)
with the controller as a subprocess under its shipped RBAC and the local KMS.

The baseline, measured in the same run with the same client and concurrency, is the
API server creating 1,000 plain Secrets: the rate at which the cluster itself accepts
writes. Sealing a key takes several writes (the blob Secret, two status updates, an
Event), so the ratio says how close the controller gets to that floor.

A second baseline, measured after the controller has stopped, is the **write floor**:
the same requests a first seal makes, sent by this client with no controller at all (the
user's create, the finalizer patch, the blob Secret's create, the status write recording
version 1 Active, the ``Sealed`` Event), with the bodies the controller wrote for
``key-0``, at the same concurrency. ``floor_ratio`` (floor ÷ plain
Secrets) is the best ratio any controller making those writes could reach on this
cluster; ``ratio_to_floor`` (keys ÷ floor) is what the controller's own work leaves of it.

Last line: {"bench": "controller", "keys_per_s": ..., "rotations_per_s": ...,
"rss_mib": ..., "secrets_per_s": ..., "ratio": keys_per_s / secrets_per_s,
"floor_keys_per_s": ..., "floor_ratio": ..., "ratio_to_floor": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from secure_keys.controller.events import build_event
from secure_keys.kube.client import APIKEYS, EVENTS, SECRETS, Credentials, KubeApi
from secure_keys_dev import access
from secure_keys_dev.cluster import LocalCluster
from secure_keys_dev.localkms import write_local_kms
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    bind_controller_identity,
    ensure_namespace,
    install_crds,
)

NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"


async def _bounded(concurrency: int, jobs: list[Any]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Any) -> None:
        async with gate:
            await job

    await asyncio.gather(*(run(j) for j in jobs))


async def create_secrets(api: KubeApi, count: int, concurrency: int) -> float:
    started = time.perf_counter()
    await _bounded(
        concurrency,
        [
            api.create(
                SECRETS,
                NAMESPACE,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": f"plain-{i}"},
                    "stringData": {"k": f"value-{i}"},
                },
            )
            for i in range(count)
        ],
    )
    return count / (time.perf_counter() - started)


async def wait_until(api: KubeApi, predicate: Any, count: int, timeout: float) -> None:
    """Until ``count`` ApiKeys satisfy ``predicate``: one list, then a watch. Polling would
    spend the API server's CPU serialising 1,000 objects again and again."""
    page = await api.list(APIKEYS, NAMESPACE)
    done = {i["metadata"]["name"] for i in page.get("items") or [] if predicate(i)}
    version = page["metadata"]["resourceVersion"]
    deadline = time.monotonic() + timeout
    while len(done) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the controller did not finish in time")
        async for event in api.watch(APIKEYS, NAMESPACE, resource_version=version):
            obj = event["object"]
            version = obj["metadata"]["resourceVersion"]
            if event["type"] in ("ADDED", "MODIFIED") and predicate(obj):
                done.add(obj["metadata"]["name"])
            if len(done) >= count or time.monotonic() > deadline:
                break


def _ready(item: dict[str, Any]) -> bool:
    for condition in (item.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _at_version(version: int) -> Any:
    def check(item: dict[str, Any]) -> bool:
        return bool((item.get("status") or {}).get("currentVersion") == version and _ready(item))

    return check


async def create_apikeys(api: KubeApi, count: int, concurrency: int, timeout: float) -> float:
    started = time.perf_counter()
    await _bounded(
        concurrency,
        [api.create(APIKEYS, NAMESPACE, _new_apikey(f"key-{i}")) for i in range(count)],
    )
    await wait_until(api, _ready, count, timeout)
    return count / (time.perf_counter() - started)


def _new_apikey(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name},
        "spec": {"source": {"generate": {"length": 32}}},
    }


async def sealed_sample(api: KubeApi) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key-0`` as the controller left it after its first seal, and its blob Secret: the
    bodies the write floor sends."""
    key = await api.get(APIKEYS, NAMESPACE, "key-0")
    blob = await api.get(SECRETS, NAMESPACE, "key-0.sealed")
    return key, blob


async def write_floor(
    api: KubeApi, sample: tuple[dict[str, Any], dict[str, Any]], count: int, concurrency: int
) -> float:
    """Keys per second when a client makes a first seal's requests and nothing else."""
    key, blob = sample
    status = key["status"]
    blob_metadata = blob["metadata"]
    now = datetime.datetime.now(datetime.UTC)

    async def seal_like(i: int) -> None:
        name = f"floor-{i}"
        created = await api.create(APIKEYS, FLOOR_NAMESPACE, _new_apikey(name))
        meta = created["metadata"]
        patched = await api.patch(
            APIKEYS,
            FLOOR_NAMESPACE,
            name,
            {
                "metadata": {
                    "finalizers": key["metadata"].get("finalizers") or [],
                    "resourceVersion": meta["resourceVersion"],
                }
            },
        )
        owner = dict(blob_metadata["ownerReferences"][0]) | {"name": name, "uid": meta["uid"]}
        await api.create(
            SECRETS,
            FLOOR_NAMESPACE,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": blob["type"],
                "metadata": {
                    "name": f"{name}.sealed",
                    "labels": blob_metadata.get("labels") or {},
                    "annotations": blob_metadata.get("annotations") or {},
                    "ownerReferences": [owner],
                },
                "data": blob["data"],
            },
        )
        current = await api.patch(
            APIKEYS,
            FLOOR_NAMESPACE,
            name,
            {
                "status": status,
                "metadata": {"resourceVersion": patched["metadata"]["resourceVersion"]},
            },
            subresource="status",
        )
        event = build_event(
            current, "ApiKey", "Normal", "Sealed", "version 1 sealed", instance="bench", now=now
        )
        await api.create(EVENTS, FLOOR_NAMESPACE, event)

    started = time.perf_counter()
    await _bounded(concurrency, [seal_like(i) for i in range(count)])
    return count / (time.perf_counter() - started)


async def rotate_all(api: KubeApi, count: int, concurrency: int, timeout: float) -> float:
    stamp = datetime.datetime.now(datetime.UTC).isoformat()
    started = time.perf_counter()
    patch = {"metadata": {"annotations": {"securekeys.io/rotate-requested-at": stamp}}}
    await _bounded(
        concurrency, [api.patch(APIKEYS, NAMESPACE, f"key-{i}", patch) for i in range(count)]
    )
    await wait_until(api, _at_version(2), count, timeout)
    return count / (time.perf_counter() - started)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def measure(
    kubeconfig: Path, controller: ControllerProcess, args: argparse.Namespace
) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]]]:
    async with KubeApi(Credentials.from_kubeconfig(kubeconfig), limit=args.concurrency) as api:
        secrets_per_s = await create_secrets(api, args.count, args.concurrency)
        keys_per_s = await create_apikeys(api, args.count, args.concurrency, args.timeout)
        sample = await sealed_sample(api)
        rotations_per_s = await rotate_all(api, args.count, args.concurrency, args.timeout)
    if controller.process is None:
        raise RuntimeError("the controller is not running")
    result = {
        "bench": "controller",
        "count": args.count,
        "keys_per_s": round(keys_per_s, 1),
        "rotations_per_s": round(rotations_per_s, 1),
        "rss_mib": round(peak_rss_mib(controller.process.pid), 1),
        "secrets_per_s": round(secrets_per_s, 1),
        "ratio": round(keys_per_s / secrets_per_s, 3),
    }
    return result, sample


async def measure_floor(
    kubeconfig: Path,
    sample: tuple[dict[str, Any], dict[str, Any]],
    result: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    async with KubeApi(Credentials.from_kubeconfig(kubeconfig), limit=args.concurrency) as api:
        floor = await write_floor(api, sample, args.count, args.concurrency)
    return result | {
        "floor_keys_per_s": round(floor, 1),
        "floor_ratio": round(floor / result["secrets_per_s"], 3),
        "ratio_to_floor": round(result["keys_per_s"] / floor, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="securekeys-bench-") as tmp, LocalCluster() as cluster:
        workdir = Path(tmp)
        with access.api_client(cluster.kubeconfig) as admin:
            install_crds(admin)
            ensure_namespace(admin, CONTROLLER_NAMESPACE)
            ensure_namespace(admin, NAMESPACE)
            ensure_namespace(admin, FLOOR_NAMESPACE)
            bind_controller_identity(admin, "secure-keys-controller")
        identity = cluster.user_kubeconfig("secure-keys-controller")
        kms = write_local_kms(workdir / "kms")
        log = workdir / "controller.log"
        with ControllerProcess(
            identity, kms, log, workers=args.workers, lease="secure-keys-controller"
        ) as controller:
            result, sample = asyncio.run(measure(cluster.kubeconfig, controller, args))
        # The controller has stopped: nothing but this client writes from here on.
        result = asyncio.run(measure_floor(cluster.kubeconfig, sample, result, args))
        print(
            f"{args.count} plain Secrets: {result['secrets_per_s']}/s; "
            f"{args.count} ApiKeys sealed end to end: {result['keys_per_s']}/s; "
            f"rotation of all: {result['rotations_per_s']}/s; "
            f"controller peak RSS {result['rss_mib']} MiB; "
            f"a first seal's requests alone (no controller): {result['floor_keys_per_s']}/s"
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
