"""The pod network's pure parts (addresses, host routes, configurations) and the forwarder.

The forwarder test is real: it opens its listener through setns(2) into this
process's own network namespace and pumps bytes to a server on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from pathlib import Path

import pytest

from secure_keys_dev import forward, podnet

BLOCK = ipaddress.IPv4Network("10.240.16.0/20")


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_a_network_splits_its_block_into_disjoint_pod_service_and_link_ranges() -> None:
    network = podnet.PodNetwork.in_block(BLOCK, "0123abcd")
    parts = [network.pods, network.services, network.link]
    assert all(part.subnet_of(BLOCK) for part in parts)
    assert not any(a.overlaps(b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert (str(network.pods), str(network.services), str(network.link)) == (
        "10.240.16.0/21",
        "10.240.24.0/22",
        "10.240.31.252/30",
    )
    assert (network.host_address, network.node_address) == ("10.240.31.253", "10.240.31.254")
    assert network.gateway == "10.240.16.1"
    assert (network.kubernetes_service_ip, network.dns_service_ip) == (
        "10.240.24.1",
        "10.240.24.10",
    )
    # Interface names fit IFNAMSIZ (15 characters) and name the cluster.
    assert network.host_link == "skh0123abcd"
    assert len(network.host_link) <= 15


@pytest.mark.parametrize("block", ["10.240.16.0/21", "10.0.0.0/20", "192.168.0.0/20"])
def test_a_block_outside_the_pool_or_of_another_size_is_refused(block: str) -> None:
    with pytest.raises(podnet.PodNetworkError, match=r"is not a /20 of 10\.240\.0\.0/12"):
        podnet.PodNetwork.in_block(net(block))


def test_the_first_block_that_overlaps_no_host_route_is_chosen() -> None:
    assert podnet.choose_block([]) == net("10.240.0.0/20")
    # Another cluster's block, and a host route cutting into the next one.
    taken = [net("10.240.0.0/20"), net("10.240.17.0/24"), net("192.0.2.0/24")]
    assert podnet.choose_block(taken) == net("10.240.32.0/20")
    # A route around the whole pool leaves nothing.
    with pytest.raises(podnet.PodNetworkError, match="overlaps a route"):
        podnet.choose_block([net("10.0.0.0/8")])


def test_host_routes_are_read_without_the_default_route() -> None:
    document = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"type": "local", "dst": "127.0.0.1", "dev": "lo", "table": "local"},
        {"dst": "fe80::/64"},
    ]
    assert podnet.parse_routes(document) == [net("192.0.2.0/24"), net("127.0.0.1/32")]


def test_the_host_gets_one_link_named_after_its_owner_and_one_route_into_the_node() -> None:
    network = podnet.PodNetwork.in_block(BLOCK, "0123abcd")
    commands = podnet.host_setup_commands(network, 4242)
    assert commands[0] == [
        "link",
        "add",
        "skh0123abcd",
        "type",
        "veth",
        "peer",
        "name",
        "skp0123abcd",
    ]
    assert ["link", "set", "skh0123abcd", "alias", "securekeys-node owner=4242"] in commands
    routes = [c for c in commands if c[0] == "route"]
    assert routes == [
        ["route", "add", "10.240.16.0/20", "via", "10.240.31.254", "dev", "skh0123abcd", "onlink"]
    ]
    # Nothing else on the host: no sysctl, no iptables, no other device.
    assert {c[0] for c in commands} == {"link", "addr", "route"}
    assert all(network.host_link in c for c in commands)


def test_forwarding_and_bridge_netfilter_are_set_inside_the_node_only() -> None:
    script = podnet.node_setup_script(podnet.PodNetwork.in_block(BLOCK, "0123abcd"))
    assert "ip addr add 10.240.31.254/30 dev node0" in script
    assert "ip addr add 10.240.16.1/21 dev cni0" in script
    assert "echo 1 > /proc/sys/net/ipv4/ip_forward" in script
    # No default route: nothing can leave the machine from the node's namespace.
    assert "default" not in script


def test_pods_get_addresses_from_the_pod_cidr_without_masquerading(tmp_path: Path) -> None:
    network = podnet.PodNetwork.in_block(BLOCK)
    (bridge,) = podnet.cni_conflist(network, tmp_path / "ipam")["plugins"]
    assert (bridge["type"], bridge["ipMasq"], bridge["isDefaultGateway"]) == ("bridge", False, True)
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.240.16.0/21", "gateway": "10.240.16.1"}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")  # not /var/lib/cni on the host


def test_kube_proxy_leaves_host_wide_conntrack_settings_alone(tmp_path: Path) -> None:
    network = podnet.PodNetwork.in_block(BLOCK)
    config = podnet.kube_proxy_configuration(network, tmp_path / "kubeconfig", "node")
    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["tcpEstablishedTimeout"] == "0s"
    assert config["clusterCIDR"] == "10.240.16.0/21"
    assert config["nodePortAddresses"] == ["10.240.31.254/32"]


def test_coredns_serves_the_cluster_domain_and_forwards_nothing(tmp_path: Path) -> None:
    text = podnet.corefile(podnet.PodNetwork.in_block(BLOCK), tmp_path / "kubeconfig")
    assert text.startswith("cluster.local:53 ")
    assert f"kubeconfig {tmp_path / 'kubeconfig'}" in text
    assert "forward" not in text


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("10.240.31.254:443=6443", forward.Rule("10.240.31.254", 443, 6443)),
        ("127.0.0.1:1=2", forward.Rule("127.0.0.1", 1, 2)),
    ],
)
def test_forwarding_rules_are_parsed(text: str, rule: forward.Rule) -> None:
    assert forward.Rule.parse(text) == rule
    assert str(rule) == text


@pytest.mark.parametrize("text", ["10.0.0.1:443", "10.0.0.1=1", ":1=2", "a:b=c", "x" * 500])
def test_a_malformed_rule_is_refused_quoting_a_short_prefix(text: str) -> None:
    with pytest.raises(ValueError, match="not ADDRESS:PORT=HOSTPORT") as caught:
        forward.Rule.parse(text)
    assert len(str(caught.value)) < 120


@pytest.mark.skipif(os.geteuid() != 0, reason="setns(2) needs CAP_SYS_ADMIN")
def test_the_forwarder_joins_a_connection_to_the_host_loopback_port() -> None:
    async def scenario() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"echo:" + await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        host_port = server.sockets[0].getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            listen_port = probe.getsockname()[1]
        task = asyncio.ensure_future(
            forward.serve("/proc/self/ns/net", [forward.Rule("127.0.0.1", listen_port, host_port)])
        )
        for _ in range(100):
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
                break
            await asyncio.sleep(0.01)
        writer.write(b"ping")
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        task.cancel()
        server.close()
        return answer

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == b"echo:ping"


@pytest.mark.skipif(os.geteuid() != 0, reason="setns(2) needs CAP_SYS_ADMIN")
def test_the_forwarder_resets_a_connection_whose_host_port_refuses() -> None:
    """A client of a stopped server sees a reset, not a clean end of stream (which an
    HTTP client reports as a bare "EOF", naming no cause)."""

    async def scenario() -> BaseException | bytes:
        with socket.socket() as closed, socket.socket() as probe:
            closed.bind(("127.0.0.1", 0))
            probe.bind(("127.0.0.1", 0))
            host_port, listen_port = closed.getsockname()[1], probe.getsockname()[1]
        task = asyncio.ensure_future(
            forward.serve("/proc/self/ns/net", [forward.Rule("127.0.0.1", listen_port, host_port)])
        )
        for _ in range(100):
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
                break
            await asyncio.sleep(0.01)
        try:
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            return await reader.read()
        except ConnectionResetError as exc:
            return exc
        finally:
            writer.close()
            task.cancel()

    assert isinstance(asyncio.run(asyncio.wait_for(scenario(), 10)), ConnectionResetError)


def test_the_node_setup_refuses_a_process_in_the_host_namespace() -> None:
    with pytest.raises(podnet.PodNetworkError, match="in the host's network namespace"):
        podnet.check_own_namespace(os.getpid())
    with pytest.raises(podnet.PodNetworkError, match="is gone"):
        podnet.move_into(podnet.PodNetwork.in_block(BLOCK), 2**22 + 1)
