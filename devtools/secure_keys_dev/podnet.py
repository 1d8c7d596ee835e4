"""The local node's pod network: its addresses, the host-side link, and their clean-up.

A cluster with a pod network runs its node (containerd, kubelet, kube-proxy,
CoreDNS) in a network namespace of its own, created by `unshare --net` together
with the node's mount namespace, so it vanishes with the node's last process.
`PodNetwork` owns everything this adds to the host, and nothing else:

- one veth pair, ``skh<token>`` on the host (with the ifalias
  ``securekeys-node owner=<pid>`` that names the owning process) and ``node0``
  inside the node's namespace, each end with one address of a /30;
- one host route: the cluster's whole address block (pods, Services and the
  /30) via the node end of the pair.

That block is a /20 from 10.240.0.0/12, the first one that overlaps no route on
the host (other clusters' blocks included: each is a route), chosen under a
lock file so that two clusters starting at once never pick the same one. The
host's own interfaces, default route, iptables and sysctls are never changed:
forwarding, bridge netfilter and kube-proxy's rules are set inside the node's
namespace only. Nothing connects to the host end's address: the node reaches
the host's loopback through `secure_keys_dev.forward`. The node's namespace has
no default route, so nothing is ever routed off the machine.

Deleting the host end deletes the pair and the route with it; `stop()` does, and
`reap_stale_links()` does for clusters whose owner died (the namespace itself
goes with its last process, which the node's sweep kills).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOL = ipaddress.IPv4Network("10.240.0.0/12")
BLOCK_PREFIX = 20
HOST_LINK_PREFIX = "skh"
NODE_LINK = "node0"
BRIDGE = "cni0"
ALIAS_PREFIX = "securekeys-node owner="
CLUSTER_DOMAIN = "cluster.local"
LOCK_FILE = Path("/run/lock/securekeys-pod-network.lock")
SYS_CLASS_NET = Path("/sys/class/net")


class PodNetworkError(RuntimeError):
    """The pod network could not be set up, or its host state could not be removed."""


@dataclass(frozen=True)
class PodNetwork:
    """The addresses of one cluster's pod network, all inside its /20 ``block``."""

    block: ipaddress.IPv4Network
    token: str

    @classmethod
    def in_block(cls, block: ipaddress.IPv4Network, token: str | None = None) -> PodNetwork:
        if block.prefixlen != BLOCK_PREFIX or not block.subnet_of(POOL):
            raise PodNetworkError(f"{block} is not a /{BLOCK_PREFIX} of {POOL}")
        return cls(block, token or secrets.token_hex(4))

    @property
    def pods(self) -> ipaddress.IPv4Network:
        """The first /21: the pod CIDR (host-local hands out its addresses)."""
        return next(self.block.subnets(new_prefix=21))

    @property
    def services(self) -> ipaddress.IPv4Network:
        """The third /22: the Service CIDR."""
        return list(self.block.subnets(new_prefix=22))[2]

    @property
    def link(self) -> ipaddress.IPv4Network:
        """The last /30: the veth pair's."""
        return list(self.block.subnets(new_prefix=30))[-1]

    @property
    def host_address(self) -> str:
        return str(self.link[1])

    @property
    def node_address(self) -> str:
        """The node's InternalIP: the kubelet, kube-proxy, CoreDNS and forwarders listen here."""
        return str(self.link[2])

    @property
    def gateway(self) -> str:
        """The bridge's address, the pods' default gateway (inside the node's namespace)."""
        return str(self.pods[1])

    @property
    def kubernetes_service_ip(self) -> str:
        return str(self.services[1])

    @property
    def dns_service_ip(self) -> str:
        return str(self.services[10])

    @property
    def host_link(self) -> str:
        return HOST_LINK_PREFIX + self.token

    @property
    def peer_link(self) -> str:
        """The node end's name until it moves into the node's namespace (as `NODE_LINK`)."""
        return "skp" + self.token


# -- pure builders -----------------------------------------------------------------------
def parse_routes(document: Iterable[dict[str, Any]]) -> list[ipaddress.IPv4Network]:
    """The destinations of ``ip -j -4 route show table all`` (the default route left out:
    it overlaps everything and is never ours to use)."""
    found = []
    for route in document:
        destination = str(route.get("dst", ""))
        if destination in ("", "default", "0.0.0.0/0"):
            continue
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(destination, strict=False))
    return found


def choose_block(taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /20 of `POOL` that overlaps none of ``taken`` (host routes)."""
    routes = list(taken)
    for block in POOL.subnets(new_prefix=BLOCK_PREFIX):
        if not any(block.overlaps(route) for route in routes):
            return block
    raise PodNetworkError(f"every /{BLOCK_PREFIX} of {POOL} overlaps a route on this host")


def host_setup_commands(network: PodNetwork, owner: int) -> list[list[str]]:
    """`ip` arguments creating the pair, the host end's address and the block's route."""
    host, peer = network.host_link, network.peer_link
    return [
        ["link", "add", host, "type", "veth", "peer", "name", peer],
        ["link", "set", host, "alias", f"{ALIAS_PREFIX}{owner}"],
        ["addr", "add", f"{network.host_address}/30", "dev", host],
        ["link", "set", host, "up"],
        # onlink: the node end has no carrier until it sits in the node's namespace.
        ["route", "add", str(network.block), "via", network.node_address, "dev", host, "onlink"],
    ]


def node_setup_script(network: PodNetwork) -> str:
    """Runs inside the node's namespace (before the kubelet): the node end, the pods'
    bridge, a route for Service addresses, and this namespace's own forwarding sysctls."""
    pods_prefix = network.pods.prefixlen
    lines = [
        "set -eu",
        f"ip link set {network.peer_link} name {NODE_LINK}",
        f"ip addr add {network.node_address}/30 dev {NODE_LINK}",
        f"ip link set {NODE_LINK} up",
        f"ip link add {BRIDGE} type bridge",
        f"ip addr add {network.gateway}/{pods_prefix} dev {BRIDGE}",
        f"ip link set {BRIDGE} up",
        # Clients inside the namespace (hostNetwork pods) need a route to Service
        # addresses for kube-proxy's OUTPUT rules to rewrite.
        f"ip route add {network.services} dev {BRIDGE}",
        # /proc/sys/net is this namespace's: the host's values do not change.
        "echo 1 > /proc/sys/net/ipv4/ip_forward",
        "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
    ]
    return "\n".join(lines) + "\n"


def cni_conflist(network: PodNetwork, ipam_dir: Path) -> dict[str, Any]:
    """bridge + host-local: each pod gets an address of the pod CIDR on `BRIDGE`, whose
    address is its default gateway. No ipMasq: nothing leaves the machine."""
    return {
        "cniVersion": "1.0.0",
        "name": "securekeys-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(network.pods), "gateway": network.gateway}]],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def kube_proxy_configuration(
    network: PodNetwork, kubeconfig: Path, node_name: str
) -> dict[str, Any]:
    """iptables mode, rules in the node's namespace only; no host-wide conntrack tuning."""
    node = network.node_address
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "bindAddress": node,
        "clusterCIDR": str(network.pods),
        "healthzBindAddress": f"{node}:10256",
        "metricsBindAddress": f"{node}:10249",
        "nodePortAddresses": [f"{node}/32"],
        "oomScoreAdj": 0,
        # nf_conntrack_max is host-wide: 0 leaves it (and the timeouts) as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
    }


def corefile(network: PodNetwork, kubeconfig: Path) -> str:
    """CoreDNS serving `CLUSTER_DOMAIN` from the API server, on the node's address."""
    node = network.node_address
    return "\n".join(
        [
            f"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{",
            "    errors",
            f"    ready {node}:8181",
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
            f"        kubeconfig {kubeconfig}",
            "        pods insecure",
            "        fallthrough in-addr.arpa ip6.arpa",
            "    }",
            "    cache 5",
            "}",
            "",
        ]
    )


# -- the host (I/O edge) -----------------------------------------------------------------
def _ip(*args: str, netns_pid: int | None = None, stdin: str | None = None) -> str:
    argv = ["ip", *args]
    if netns_pid is not None:
        argv = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--", *argv]
    result = subprocess.run(  # noqa: S603 - fixed commands, our own names and addresses
        argv, input=stdin, capture_output=True, text=True, timeout=10, check=False
    )
    if result.returncode != 0:
        raise PodNetworkError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


def host_routes() -> list[ipaddress.IPv4Network]:
    return parse_routes(json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"))


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim() -> PodNetwork:
    """Choose a free block and create the host end of the pair with its route (which is
    what marks the block as taken for the next cluster)."""
    with _host_lock():
        network = PodNetwork.in_block(choose_block(host_routes()))
        try:
            for command in host_setup_commands(network, os.getpid()):
                _ip(*command)
        except PodNetworkError:
            release(network)
            raise
    return network


def check_own_namespace(netns_pid: int) -> None:
    """Refuse unless ``netns_pid`` runs in a network namespace other than ours (the host's):
    the node's setup must never run against the host's interfaces."""
    try:
        theirs = os.stat(f"/proc/{netns_pid}/ns/net").st_ino
    except OSError as exc:
        raise PodNetworkError(f"process {netns_pid} is gone: {exc}") from exc
    if theirs == os.stat("/proc/self/ns/net").st_ino:
        raise PodNetworkError(f"process {netns_pid} is in the host's network namespace")


def move_into(network: PodNetwork, netns_pid: int) -> None:
    """Move the node end into the namespace of ``netns_pid`` and set that side up."""
    check_own_namespace(netns_pid)
    _ip("link", "set", network.peer_link, "netns", str(netns_pid))
    result = subprocess.run(  # noqa: S603 - util-linux's nsenter, our script
        [  # noqa: S607
            "nsenter",
            f"--net=/proc/{netns_pid}/ns/net",
            "--",
            "/bin/sh",
            "-c",
            node_setup_script(network),
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        raise PodNetworkError(f"the node's network setup failed: {result.stderr.strip()}")


def link_exists(name: str) -> bool:
    return (SYS_CLASS_NET / name).exists()


def release(network: PodNetwork) -> None:
    """Delete the host end (the pair and the route go with it); absent already is fine."""
    for name in (network.host_link, network.peer_link):
        if link_exists(name):
            with contextlib.suppress(PodNetworkError):
                _ip("link", "del", name)
    if link_exists(network.host_link):
        raise PodNetworkError(f"cannot delete link {network.host_link}")


def owned_links() -> dict[str, int]:
    """Host links carrying our ifalias, by name, with their owner's pid."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for entry in SYS_CLASS_NET.iterdir():
            if not entry.name.startswith(HOST_LINK_PREFIX):
                continue
            with contextlib.suppress(OSError, ValueError):
                alias = (entry / "ifalias").read_text().strip()
                if alias.startswith(ALIAS_PREFIX):
                    found[entry.name] = int(alias.removeprefix(ALIAS_PREFIX))
    return found


def reap_stale_links(alive: Any) -> list[str]:
    """Delete our host links whose owner (``alive(pid)`` is false) is gone."""
    removed = []
    for name, owner in owned_links().items():
        if alive(owner):
            continue
        with contextlib.suppress(PodNetworkError):
            _ip("link", "del", name)
        if not link_exists(name):
            removed.append(name)
    return removed
