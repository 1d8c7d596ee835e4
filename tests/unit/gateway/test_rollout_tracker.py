"""The rollout tracker (``gateway/broker/rollout.py``): two replicas, each with its own
streams, combine their views into one ApiKey status, with O(1) writes per replica per
rotation and none at steady state.

The broker's real watch caches are fed through their own ``apply``. Two stand-ins, said
so: the API server is an in-memory object store that applies JSON merge patches under a
resourceVersion precondition (and feeds the result back to both replicas' caches, as a
watch would), and a stream is a pod name and the version it was delivered (the real
``Session.holds`` is exercised over sockets by the e2e tests).
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from secure_keys.gateway.broker.caches import BrokerCaches
from secure_keys.gateway.broker.policy import RunningPod
from secure_keys.gateway.broker.replicas import ReplicaPods
from secure_keys.gateway.broker.rollout import Conflict, RolloutTracker
from secure_keys.kube.client import JsonObject
from secure_keys.kube.informer import LISTED, InformerEvent

NS = "payments"
GATEWAY_NS = "secure-keys-system"
NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies ``application/merge-patch+json``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class Store:
    """One ApiKey, its resourceVersion, and every replica's caches to feed."""

    def __init__(self, current: int) -> None:
        self.obj: JsonObject = {
            "metadata": {"name": "stripe", "namespace": NS, "uid": "u", "resourceVersion": "1"},
            "spec": {"delivery": {"format": "raw"}},
            "status": {
                "currentVersion": current,
                "versions": [{"version": current, "state": "Active"}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Active",
                                "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
        }  # fmt: skip
        self.caches: list[BrokerCaches] = []
        self.writes = 0
        self.conflicts = 0

    def publish(self) -> None:
        for caches in self.caches:
            caches.apikeys.apply(InformerEvent("MODIFIED", copy.deepcopy(self.obj)))

    def rotate(self) -> None:
        status = self.obj["status"]
        status["currentVersion"] += 1
        status["versions"] = [{"version": status["currentVersion"], "state": "Active"}]
        self.bump()

    def bump(self) -> None:
        metadata = self.obj["metadata"]
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)
        self.publish()

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        assert (namespace, name) == (NS, "stripe")
        assert set(patch) == {"metadata", "status"}, "only status, under a precondition"
        if patch["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise Conflict()
        self.obj["status"] = _merge(self.obj["status"], patch["status"])
        self.writes += 1
        self.bump()


@dataclass
class FakeStream:
    pod: RunningPod
    held: int

    def holds(self, key: str) -> int | None:
        return self.held if key in self.pod.keys else None


def _pod(name: str, account: str = "app") -> JsonObject:
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                     "annotations": {"securekeys.io/keys": "stripe"}},
        "spec": {"serviceAccountName": account},
    }  # fmt: skip


READERS: JsonObject = {
    "metadata": {"name": "readers", "namespace": NS},
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": ["stripe"]},
        "permissions": ["read"],
    },
}


def _gateway_pod(name: str, *, deleting: bool = False, **status: Any) -> JsonObject:
    metadata: JsonObject = {"name": name, "namespace": GATEWAY_NS}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-07T05:00:00Z"
    return {"metadata": metadata, "status": status}


class Replica:
    def __init__(
        self, store: Store, name: str, pods: list[str], gateways: list[str] | None = None
    ) -> None:
        """``gateways``: the live gateway pods this replica watches (``None``: it knows
        none, as a host-process gateway, and prunes nothing)."""
        self.caches = BrokerCaches(lambda _ns: None, lambda _ns, _n: None)
        for cache in self.caches.all:
            cache.apply(LISTED)
        self.caches.roles.apply(InformerEvent("ADDED", READERS))
        for pod in pods:
            self.caches.pods.apply(InformerEvent("ADDED", _pod(pod)))
        store.caches.append(self.caches)
        self.streams: dict[str, list[FakeStream]] = {NS: []}
        self.gateways = None if gateways is None else ReplicaPods(GATEWAY_NS, "app=gw")
        self.tracker = RolloutTracker(
            self.caches,
            self.streams,
            store.patch_status,
            name,
            delay=0,
            now=lambda: NOW,
            replicas=self.gateways,
        )
        if self.gateways is not None:
            for gateway in gateways or ():
                self.gateways.apply(InformerEvent("ADDED", _gateway_pod(gateway)))
            self.gateways.apply(LISTED)

    def connect(self, pod: str, held: int) -> None:
        running = self.caches.pods.get(NS, pod)
        assert running is not None
        self.streams[NS].append(FakeStream(running, held))

    def deliver(self, version: int) -> None:
        for stream in self.streams[NS]:
            stream.held = version


async def _settle(store: Store, *replicas: Replica) -> None:
    """Look until neither replica has anything left to write (conflicts retried)."""
    for _ in range(10):
        before = store.writes
        for replica in replicas:
            await replica.tracker.look(NS)
        if store.writes == before:
            return
    pytest.fail("the replicas kept writing")


def _rollout(store: Store) -> dict[str, Any]:
    return dict(store.obj["status"]["rollout"])


def _rolled_out(store: Store) -> tuple[str, str]:
    for condition in store.obj["status"]["conditions"]:
        if condition["type"] == "RolledOut":
            return condition["status"], condition["message"]
    raise AssertionError("no RolledOut condition")


def test_two_replicas_split_the_pods_and_the_counts_are_right() -> None:
    pods = [f"web-{i}" for i in range(5)]
    store = Store(current=1)
    a, b = Replica(store, "gw-a", pods), Replica(store, "gw-b", pods)
    store.publish()
    for pod in pods[:3]:
        a.connect(pod, 1)
    for pod in pods[3:]:
        b.connect(pod, 1)

    async def scenario() -> None:
        await _settle(store, a, b)
        assert _rollout(store)["pods"] == "5/5"
        assert set(_rollout(store)["replicas"]) == {"gw-a", "gw-b"}
        assert _rolled_out(store)[0] == "True"
        # the controller's condition is untouched
        assert store.obj["status"]["conditions"][0]["type"] == "Ready"

        steady = store.writes
        for _ in range(3):
            store.bump()  # unrelated watch events (a KeyRole, a label)
            await _settle(store, a, b)
        assert store.writes == steady, "no writes at steady state"

        store.rotate()
        await _settle(store, a, b)
        assert _rollout(store)["pods"] == "0/5"
        assert _rolled_out(store)[0] == "False"
        a.deliver(2)
        await _settle(store, a, b)
        assert _rollout(store)["pods"] == "3/5"
        assert sorted(_rollout(store)["stragglers"]) == ["web-3", "web-4"]
        b.deliver(2)
        await _settle(store, a, b)
        assert _rollout(store)["pods"] == "5/5"
        assert _rolled_out(store) == ("True", "5/5 pods hold version 2")
        # one rotation: a bounded number of writes per replica, whatever the pod count
        assert store.writes - steady <= 2 * 3

    asyncio.run(scenario())


def test_a_pod_without_a_stream_holds_the_rollout_and_is_named() -> None:
    store = Store(current=3)
    a = Replica(store, "gw-a", ["web-0", "web-1", "stopped"])
    store.publish()
    a.connect("web-0", 3)
    a.connect("web-1", 3)

    async def scenario() -> None:
        await _settle(store, a)
        assert _rollout(store)["pods"] == "2/3"
        assert _rollout(store)["stragglers"] == ["stopped"]
        status, message = _rolled_out(store)
        assert status == "False"
        assert "stopped" in message

    asyncio.run(scenario())


def test_a_burst_of_a_hundred_pods_costs_one_write_per_replica() -> None:
    pods = [f"web-{i:03d}" for i in range(100)]
    store = Store(current=1)
    a, b = Replica(store, "gw-a", pods), Replica(store, "gw-b", pods)
    store.publish()
    for i, pod in enumerate(pods):
        (a if i % 2 else b).connect(pod, 1)

    async def scenario() -> None:
        await _settle(store, a, b)
        before = store.writes
        store.rotate()
        a.deliver(2)  # the pushes of one burst all land before the coalesced look
        b.deliver(2)
        await _settle(store, a, b)
        assert _rollout(store)["pods"] == "100/100"
        assert store.writes - before <= 2

    asyncio.run(scenario())


def test_a_draining_replica_withdraws_its_entry() -> None:
    store = Store(current=1)
    a, b = Replica(store, "gw-a", ["p", "q"]), Replica(store, "gw-b", ["p", "q"])
    store.publish()
    a.connect("p", 1)
    b.connect("q", 1)

    async def scenario() -> None:
        await _settle(store, a, b)
        await a.tracker.withdraw()
        assert set(_rollout(store)["replicas"]) == {"gw-b"}
        assert _rollout(store)["pods"] == "1/2"
        b.connect("p", 1)  # its stream reconnected to the other replica
        await _settle(store, b)
        assert _rollout(store)["pods"] == "2/2"

    asyncio.run(scenario())


def test_a_pod_that_may_not_read_the_key_is_not_waited_for() -> None:
    """Anyone who may create a labelled pod asking for the key must not be able to hold
    the rollout: a pod the broker would refuse is not a consumer."""
    store = Store(current=1)
    a = Replica(store, "gw-a", ["web-0"])
    a.caches.pods.apply(InformerEvent("ADDED", _pod("intruder", account="mallory")))
    store.publish()
    a.connect("web-0", 1)

    async def scenario() -> None:
        await _settle(store, a)
        assert _rollout(store)["pods"] == "1/1"
        assert _rolled_out(store)[0] == "True"

    asyncio.run(scenario())


def test_a_replica_killed_outright_is_pruned_and_its_pods_are_not_counted_twice() -> None:
    """gw-a dies without withdrawing (node failure, OOM kill of the pod, eviction) and
    its pod is replaced under another name. Its stale entry would count ``p`` twice once
    ``p`` reconnects to gw-b and make 3/3 of a rollout where ``q`` has no stream."""
    store = Store(current=2)
    gateways = ["gw-a", "gw-b"]
    a = Replica(store, "gw-a", ["p", "q", "r"], gateways)
    b = Replica(store, "gw-b", ["p", "q", "r"], gateways)
    store.publish()
    a.connect("p", 2)
    a.connect("q", 2)
    b.connect("r", 2)

    async def scenario() -> None:
        await _settle(store, a, b)
        assert _rollout(store)["pods"] == "3/3"
        # gw-a is killed: no withdrawal; p reconnects to gw-b, q's stream is down
        b.connect("p", 2)
        b.tracker.dirty.clear()
        assert b.gateways is not None
        b.gateways.apply(InformerEvent("DELETED", _gateway_pod("gw-a")))
        assert b.tracker.dirty == {NS}, "the end of a gateway pod touches its keys"
        await _settle(store, b)
        assert set(_rollout(store)["replicas"]) == {"gw-b"}
        assert _rollout(store)["pods"] == "2/3"
        assert _rollout(store)["stragglers"] == ["q"]
        assert _rolled_out(store)[0] == "False"

    asyncio.run(scenario())


def test_a_fake_replica_entry_is_removed_on_the_next_look() -> None:
    """Someone with ``patch`` on ``apikeys/status`` adds an entry for a replica that
    does not exist, claiming every pod is current: it does not survive the next look
    (its own write is a watch event that touches the namespace)."""
    store = Store(current=1)
    a = Replica(store, "gw-a", ["web-0", "stopped"], ["gw-a"])
    store.publish()
    a.connect("web-0", 1)

    async def scenario() -> None:
        await _settle(store, a)
        assert _rollout(store)["pods"] == "1/2"
        fake = {"version": 1, "connected": 2, "current": 2, "behind": []}
        store.obj["status"]["rollout"]["replicas"]["gw-forged"] = fake
        store.obj["status"]["rollout"]["replicas"]["not-even-parsed"] = "junk"
        store.obj["status"]["rollout"].update(current=2, pods="2/2")
        store.bump()
        await _settle(store, a)
        assert set(_rollout(store)["replicas"]) == {"gw-a"}
        assert _rollout(store)["pods"] == "1/2"
        assert _rolled_out(store)[0] == "False"
        steady = store.writes
        store.bump()
        await _settle(store, a)
        assert store.writes == steady, "no writes at steady state after the pruning"

    asyncio.run(scenario())


def test_entries_of_live_replicas_are_kept_and_nothing_is_pruned_blind() -> None:
    """A replica prunes only what its watch of gateway pods says is dead: a live pod's
    entry, its own entry, and everything while the gateway pods are not yet listed, or
    when it knows no gateway pods at all (a host-process gateway), stay."""
    store = Store(current=1)
    a = Replica(store, "gw-a", ["p", "q"], ["gw-b"])  # its own pod not listed yet
    b = Replica(store, "gw-b", ["p", "q"], ["gw-a", "gw-b"])
    host = Replica(store, "host-123", ["p", "q"])
    unlisted = ReplicaPods(GATEWAY_NS, "app=gw")
    late = RolloutTracker(host.caches, {}, store.patch_status, "gw-c", delay=0, replicas=unlisted)
    store.publish()
    a.connect("p", 1)
    b.connect("q", 1)

    async def scenario() -> None:
        await _settle(store, a, b)
        assert set(_rollout(store)["replicas"]) == {"gw-a", "gw-b"}
        store.obj["status"]["rollout"]["replicas"]["gw-gone"] = {
            "version": 1, "connected": 0, "current": 0, "behind": []
        }  # fmt: skip
        store.bump()
        before = store.writes
        await _settle(store, host)
        assert late.gone(["gw-gone"]) == ([], None), "nothing pruned before the first list"
        assert store.writes == before, "a host-process gateway prunes nothing"
        await _settle(store, a, b)
        assert set(_rollout(store)["replicas"]) == {"gw-a", "gw-b"}

    asyncio.run(scenario())


def test_a_writer_that_is_no_gateway_pod_cannot_make_a_replica_write_in_a_loop() -> None:
    """A host-process gateway next to in-pod ones (a misconfiguration the docs warn
    about) rewrites the entry the in-pod replica prunes: the pruning backs off instead
    of trading writes with it."""
    store = Store(current=1)
    pod = Replica(store, "gw-a", ["p", "q"], ["gw-a"])
    host = Replica(store, "host-123", ["p", "q"])
    store.publish()
    pod.connect("p", 1)
    host.connect("q", 1)

    async def scenario() -> None:
        await _settle(store, pod, host)
        assert _rollout(store)["pods"] in {"1/2", "2/2"}
        pruned = store.writes
        for _ in range(5):
            await _settle(store, pod, host)
        assert store.writes == pruned, "the writes stopped"
        assert store.writes <= 6

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("event", "gone"),
    [
        (InformerEvent("MODIFIED", _gateway_pod("gw-a", phase="Failed", reason="Evicted")), True),
        (InformerEvent("MODIFIED", _gateway_pod("gw-a", deleting=True, phase="Running")), True),
        (InformerEvent("DELETED", _gateway_pod("gw-a")), True),
        (InformerEvent("MODIFIED", _gateway_pod("gw-a", phase="Running")), False),
    ],
    ids=["evicted", "deleting", "deleted", "container-restarted-in-place"],
)
def test_which_gateway_pods_end_a_replica(event: InformerEvent, gone: bool) -> None:
    replicas = ReplicaPods(GATEWAY_NS, "app=gw")
    ended: list[str] = []
    replicas.on_gone = ended.append
    replicas.apply(InformerEvent("ADDED", _gateway_pod("gw-a", phase="Running")))
    replicas.apply(LISTED)
    replicas.apply(event)
    assert ended == (["gw-a"] if gone else [])
    assert replicas.names() == (frozenset() if gone else frozenset({"gw-a"}))
