"""Benchmark: the local cluster's pod network against host networking, in one run.

Starts a local cluster with a node and host networking (the baseline), then one with
`pod_network=True` (the node in its own network namespace, kube-proxy, CoreDNS), and
measures for each: node Ready (from starting the kubelet, and from starting the node),
the first pod from create to Running, and the node's resident memory (kubelet,
containerd, scheduler; kube-proxy, CoreDNS and the API forwarder with a pod network).
On the pod network it also measures, from inside a pod (the project image's Python,
`time.perf_counter`), ``--rounds`` HTTP GETs to a busybox server through its ClusterIP
Service and directly at its pod address, and ``--rounds`` lookups of the Service's name
(the resolver's search path included) against lookups that /etc/hosts answers.

Last line: JSON with ``node_ready_s``, ``pod_running_s`` (both clusters),
``service_p50_ms``/``pod_ip_p50_ms`` and their ratio, ``dns_p50_ms``/``hosts_p50_ms``,
``rss_mib`` per component.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from secure_keys_dev import access, image
from secure_keys_dev.cluster import Binaries, LocalCluster
from secure_keys_dev.node import NodeUnavailable, node_arguments

IDLE = 'trap "exit 0" TERM; while true; do sleep 1; done'
MEASURE = """
import json, socket, sys, time, urllib.request
rounds, service, pod_ip = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def timed(call):
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples
get = lambda url: urllib.request.urlopen(url, timeout=5).read()
print(json.dumps({
    "service": timed(lambda: get(f"http://{service}/")),
    "pod_ip": timed(lambda: get(f"http://{pod_ip}:8080/")),
    "dns": timed(lambda: socket.getaddrinfo(service, 80, type=socket.SOCK_STREAM)),
    "hosts": timed(lambda: socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)),
}))
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def pod(name: str, command: list[str], image_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image_name,
                    "imagePullPolicy": "Never",
                    "command": command,
                }
            ],
            **spec,
        },
    }


def first_pod_running(core: client.CoreV1Api, host_network: bool) -> float:
    wait_for(
        "the default ServiceAccount",
        lambda: core.list_namespaced_service_account("default").items,
    )
    began = time.monotonic()
    core.create_namespaced_pod(
        "default",
        pod("first", ["/bin/sh", "-c", IDLE], image.BUSYBOX_REFERENCE, hostNetwork=host_network),
    )
    wait_for(
        "the first pod to run",
        lambda: core.read_namespaced_pod("first", "default").status.phase == "Running",
    )
    return time.monotonic() - began


def rss_mib(cluster: LocalCluster) -> dict[str, float]:
    if cluster.node is None:
        return {}
    return {name: round(kib / 1024, 1) for name, kib in cluster.node.rss_kib().items()}


def in_pod_latencies(core: client.CoreV1Api, rounds: int) -> dict[str, list[float]]:
    core.create_namespaced_pod(
        "default",
        pod(
            "web",
            [
                "/bin/sh",
                "-c",
                "mkdir /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www",
            ],
            image.BUSYBOX_REFERENCE,
        ),
    )
    web = wait_for(
        "the web pod",
        lambda: (
            (p := core.read_namespaced_pod("web", "default")).status.pod_ip
            and p.status.phase == "Running"
            and p
        ),
    )
    core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    name = f"measure-{secrets.token_hex(3)}"
    command = ["python3", "-c", MEASURE, str(rounds), "web", web.status.pod_ip]
    core.create_namespaced_pod(
        "default", pod(name, command, image.PROJECT_REFERENCE, restartPolicy="Never")
    )
    phase = wait_for(
        "the measuring pod",
        lambda: (
            core.read_namespaced_pod(name, "default").status.phase in ("Succeeded", "Failed")
            and core.read_namespaced_pod(name, "default").status.phase
        ),
    )
    log = core.read_namespaced_pod_log(name, "default", _preload_content=False).data.decode()
    if phase != "Succeeded":
        raise RuntimeError(f"the measuring pod failed: {log[-2000:]}")
    samples: dict[str, list[float]] = json.loads(log.strip().splitlines()[-1])
    return samples


def run(rounds: int) -> dict[str, Any]:
    binaries = Binaries.find()
    settings = node_arguments(binaries.etcd.parent, binaries.etcd.parent.parent / "bench-images")
    result: dict[str, Any] = {"node_ready_s": {}, "kubelet_ready_s": {}, "pod_running_s": {}}
    result["rss_mib"] = {}
    for label, pod_network in (("host_network", False), ("pod_network", True)):
        with LocalCluster(binaries=binaries, pod_network=pod_network, **settings) as cluster:
            if cluster.node is None:
                raise RuntimeError("the cluster started without its node")
            result["node_ready_s"][label] = round(cluster.node.ready_in or 0, 2)
            result["kubelet_ready_s"][label] = round(cluster.node.kubelet_ready_in or 0, 2)
            with access.api_client(cluster.kubeconfig) as api:
                core = client.CoreV1Api(api)
                result["pod_running_s"][label] = round(
                    first_pod_running(core, host_network=not pod_network), 2
                )
                if pod_network:
                    samples = in_pod_latencies(core, rounds)
                    for key, values in samples.items():
                        result[f"{key}_p50_ms"] = round(statistics.median(values), 3)
                    result["service_over_pod_ip"] = round(
                        result["service_p50_ms"] / result["pod_ip_p50_ms"], 2
                    )
            result["rss_mib"][label] = rss_mib(cluster)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    try:
        result = run(args.rounds)
    except NodeUnavailable as exc:
        print(f"pod network bench skipped: {exc}")
        return 0
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
