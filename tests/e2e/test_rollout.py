"""Knowing when a rotation is complete, on real pods (issue 21, docs/rollout.md).

The controller (session fixture) rotates the key; gateway A (this module's
``gateway``) and later gateway B run the webhook and the broker as subprocesses under
the shipped RBAC (which now includes ``patch`` on ``apikeys/status``); the real sidecar
runs in every pod on the local node. The CLI runs as a subprocess, as a user would run
it. In order:

1. a Deployment of 5 replicas, all on gateway A: ``rotate --wait`` returns once all 5
   hold the new version and says so; ``kubectl get ak`` shows ``5/5``;
2. gateway B starts and a second Deployment of 2 is injected by it (its sidecars
   connect to B): the counts of both replicas add up to ``7/7``, and a rotation rolls
   out to all 7;
3. gateway B stops: its 2 pods cannot reach a broker. They hold the rollout:
   ``rotate --wait --timeout`` names them and fails; ``revoke`` is refused and names
   them; ``revoke --force`` removes ``.previous`` from the 5 others by push, audited;
4. a user who may read ApiKeys but not their keys sees counts and pod names only, a
   user who may patch ApiKeys cannot write the rollout status, and an edit of the
   status by someone who may is rewritten by the gateway.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from secure_keys_dev.stack import (
    GROUP,
    VERSION,
    GatewayProcess,
    create_apikey,
    eventually,
    get_apikey,
)
from tests.e2e.conftest import IDLE, KEYS, PodEnvironment, Target, delivery_gateway
from tests.support.delivery import create_object, wait_ready

KEY = "rotating"


@dataclass
class _World:
    namespace: str
    gateway_a: GatewayProcess
    gateway_b: GatewayProcess | None = None
    b_context: contextlib.AbstractContextManager[GatewayProcess] | None = None
    b_pods: tuple[str, ...] = ()

    def stop_b(self) -> None:
        if self.b_context is not None:
            context, self.b_context = self.b_context, None
            context.__exit__(None, None, None)


def _template(pods: PodEnvironment, app: str) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"app": app, "securekeys.io/inject": "true"},
            "annotations": {"securekeys.io/keys": KEY},
        },
        "spec": {
            "serviceAccountName": "app",
            "hostNetwork": pods.host_network,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "app",
                    "image": pods.busybox_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", IDLE],
                }
            ],
        },
    }


def _deploy(
    api: client.ApiClient, pods: PodEnvironment, namespace: str, app: str, n: int
) -> tuple[str, ...]:
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app},
            "spec": {
                "replicas": n,
                "selector": {"matchLabels": {"app": app}},
                "template": _template(pods, app),
            },
        },
    )
    core = client.CoreV1Api(api)

    def running() -> tuple[str, ...] | None:
        items = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        names = [
            p.metadata.name
            for p in items
            if p.metadata.deletion_timestamp is None
            and any(s.name == "app" and s.state.running for s in p.status.container_statuses or [])
        ]
        return tuple(sorted(names)) if len(names) == n else None

    started = time.monotonic()
    names = eventually(running, 240, f"{n} pods of {app} running (keys on disk)")
    print(f"{n} pods of {app} running {time.monotonic() - started:.1f} s after the Deployment")
    return names


def _cli(
    kube: Target, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our interpreter and module
        [
            sys.executable,
            "-m",
            "secure_keys.cli",
            f"--kubeconfig={kubeconfig or kube.kubeconfig}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _rollout(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return dict((get_apikey(api, namespace, KEY).get("status") or {}).get("rollout") or {})


def _ls(kube: Target, namespace: str, pod: str) -> str:
    done = kube.kubectl("exec", "-n", namespace, pod, "-c", "app", "--", "ls", KEYS)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def world(
    kube: Target, admin_api: client.ApiClient, pods: PodEnvironment, gateway: GatewayProcess
) -> Iterator[_World]:
    core = client.CoreV1Api(admin_api)
    namespace = f"sk-rollout-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        eventually(
            lambda: any(
                sa.metadata.name == "default"
                for sa in core.list_namespaced_service_account(namespace).items
            ),
            60,
            "the default ServiceAccount",
        )
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app"))
        )
        create_apikey(
            admin_api,
            namespace,
            KEY,
            {
                "source": {"generate": {"length": 32}},
                "rotation": {"gracePeriod": "30m"},
            },
        )
        create_object(
            admin_api,
            namespace,
            "keyroles",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "KeyRole",
                "metadata": {"name": "app-keys"},
                "spec": {
                    "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                    "keys": {"names": [KEY]},
                    "permissions": ["read"],
                },
            },
        )
        wait_ready(admin_api, namespace, KEY)
        state = _World(namespace, gateway)
        yield state
        state.stop_b()
    finally:
        core.delete_namespace(namespace)


def test_rotate_wait_returns_once_five_replicas_hold_the_new_version(
    kube: Target, admin_api: client.ApiClient, pods: PodEnvironment, world: _World
) -> None:
    namespace = world.namespace
    _deploy(admin_api, pods, namespace, "five", 5)
    eventually(lambda: _rollout(admin_api, namespace).get("pods") == "5/5", 60, "5/5 before")
    before = get_apikey(admin_api, namespace, KEY)["status"]["currentVersion"]

    done = _cli(kube, "rotate", KEY, "-n", namespace, "--wait", "--timeout", "2m", "-o", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["version"] == before + 1
    assert (report["current"], report["consumers"], report["complete"]) == (5, 5, True)
    print(f"rotate --wait: 5 pods in {report['seconds']} s")
    text = _cli(kube, "rotate", KEY, "-n", namespace, "--wait", "--timeout", "2m")
    assert text.returncode == 0, text.stderr
    assert "rolled out to 5/5 pods" in text.stdout

    table = kube.kubectl("get", "ak", KEY, "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert "PODS" in header.split()
    assert "5/5" in row.split()
    conditions = get_apikey(admin_api, namespace, KEY)["status"]["conditions"]
    rolled = next(c for c in conditions if c["type"] == "RolledOut")
    assert (rolled["status"], rolled["reason"]) == ("True", "AllCurrent")
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_two_gateway_replicas_with_the_sidecars_split_between_them_count_right(
    kube: Target,
    admin_api: client.ApiClient,
    pods: PodEnvironment,
    world: _World,
    controller_setup: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    namespace = world.namespace
    work = tmp_path_factory.mktemp("rollout-b")
    # B's webhook configuration sorts before A's, so B injects the next pods and their
    # sidecars connect to B.
    context = delivery_gateway(kube, admin_api, controller_setup[1], work, "rollout-b")
    world.gateway_b = context.__enter__()
    world.b_context = context
    world.b_pods = _deploy(admin_api, pods, namespace, "two", 2)

    def split() -> dict[str, Any] | None:
        rollout = _rollout(admin_api, namespace)
        replicas = rollout.get("replicas") or {}
        connected = sorted(v["connected"] for v in replicas.values())
        return rollout if rollout.get("pods") == "7/7" and connected == [2, 5] else None

    eventually(split, 60, "7/7 over two replicas (5 + 2)")
    done = _cli(kube, "rotate", KEY, "-n", namespace, "--wait", "--timeout", "2m", "-o", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["current"], report["consumers"]) == (7, 7)
    assert sorted(v["current"] for v in report["replicas"].values()) == [2, 5]


def test_pods_that_cannot_reach_a_broker_hold_the_rollout_and_revoke(
    kube: Target, admin_api: client.ApiClient, world: _World
) -> None:
    namespace = world.namespace
    assert world.gateway_b is not None, "runs after the two-replica test"
    world.stop_b()
    # B withdrew its entry as it drained; its two sidecars cannot reach a broker now.
    eventually(lambda: _rollout(admin_api, namespace).get("pods") == "5/7", 60, "5/7")
    old = get_apikey(admin_api, namespace, KEY)["status"]["currentVersion"]

    waited = _cli(kube, "rotate", KEY, "-n", namespace, "--wait", "--timeout", "10s", "-o", "json")
    assert waited.returncode == 1
    report = json.loads(waited.stdout)
    assert report["version"] == old + 1
    assert (report["current"], report["consumers"]) == (5, 7)
    assert sorted(report["stragglers"]) == sorted(world.b_pods)
    text = _cli(kube, "rollout", "status", KEY, "-n", namespace)
    assert text.returncode == 1
    for pod in world.b_pods:
        assert f"{pod}\tbehind" in text.stdout

    refused = _cli(kube, "revoke", KEY, "-n", namespace, "--version", str(old))
    assert refused.returncode == 1
    for pod in world.b_pods:
        assert pod in refused.stderr
    a_pods = [
        p.metadata.name
        for p in client.CoreV1Api(admin_api)
        .list_namespaced_pod(namespace, label_selector="app=five")
        .items
    ]
    for pod in a_pods:
        assert f"{KEY}.previous" in _ls(kube, namespace, pod)

    forced = _cli(kube, "revoke", KEY, "-n", namespace, "--version", str(old), "--force")
    assert forced.returncode == 0, forced.stderr
    for pod in a_pods:
        eventually(
            lambda pod=pod: f"{KEY}.previous" not in _ls(kube, namespace, pod),  # type: ignore[misc]
            20,
            f".previous removed from {pod}",
        )
    eventually(
        lambda: world.gateway_a.log().count('"key.grace_ended"') >= len(a_pods),
        20,
        "one key.grace_ended audit record per pod",
    )


def test_a_reader_learns_counts_and_names_only_and_a_patcher_cannot_fake_it(
    kube: Target, admin_api: client.ApiClient, world: _World, attacker: Any
) -> None:
    namespace = world.namespace
    reader = attacker(namespace, f"rollout-reader-{secrets.token_hex(2)}", (
        {"apiGroups": [GROUP], "resources": ["apikeys"], "verbs": ["get", "list", "patch"]},
    ))  # fmt: skip
    seen = kube.kubectl(
        "get", "ak", KEY, "-n", namespace, "-o", "json", kubeconfig=reader.kubeconfig
    )
    assert seen.returncode == 0, seen.stderr
    rollout = json.loads(seen.stdout)["status"]["rollout"]
    text = json.dumps(rollout)
    assert "hs256:" not in text  # no fingerprint
    assert set(rollout) <= {
        "version", "consumers", "current", "pods", "stragglers", "unnamedStragglers",
        "rolledOutAt", "replicas",
    }  # fmt: skip
    # patch on the ApiKey is not patch on its status: the status subresource drops it.
    faked = kube.kubectl(
        "patch", "ak", KEY, "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"rollout": {"pods": "7/7", "current": 7}}}),
        kubeconfig=reader.kubeconfig,
    )  # fmt: skip
    assert faked.returncode == 0, faked.stderr
    assert _rollout(admin_api, namespace)["pods"] == "5/7"
    direct = kube.kubectl(
        "patch", "ak", KEY, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"rollout": {"pods": "7/7"}}}),
        kubeconfig=reader.kubeconfig,
    )  # fmt: skip
    assert direct.returncode != 0
    assert "forbidden" in direct.stderr.lower()

    # Whoever may patch apikeys/status (not a user role of the chart) can write a lie;
    # the gateway sees the event, finds the facts differ from its view, and rewrites.
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "apikeys", KEY,
        {"status": {"rollout": {"pods": "7/7", "current": 7, "stragglers": []}}},
    )  # fmt: skip
    eventually(
        lambda: _rollout(admin_api, namespace).get("pods") == "5/7",
        30,
        "the gateway rewrites the edited facts",
    )
