"""The local node: containerd, a kubelet registered as node `127.0.0.1`, and kube-scheduler.

`LocalNode` owns the node half of a `LocalCluster(node=True)`: its directory
(`<cluster workdir>/node`), its processes, the images it imports, and every
piece of host state it creates. The design keeps the host as it was found:

- containerd runs in a private mount namespace (`unshare --mount --propagation
  private`) and the kubelet joins it (`nsenter --mount=/proc/<pid>/ns/mnt`), so
  overlay, tmpfs and bind mounts never reach the host's mount table and vanish
  with the namespace's last process. Inside it, `/run` and `/var/log` are fresh
  tmpfs (containerd's shim sockets and the kubelet's `/var/log/containers` are
  hard-coded there), and the host sysctls the kubelet rewrites at start are
  shielded by bind-mounting files with their current values over `/proc/sys`.
- The kubelet's cgroups live under one cgroup root per node,
  ``/securekeys-node-<owner pid>-<token>`` in each v1 hierarchy (two nodes on one
  machine never see each other's pods as orphans). `stop()` kills what runs in
  it and removes it depth first. Nothing is ever created, changed or removed
  under the cgroups of PID 1 or of this process (the machine's supervisor).
- Every process gets PR_SET_PDEATHSIG. containerd's shims and the containers
  cannot (they are reparented on purpose), so `reap_stale_nodes()` finds those
  of a node whose owner died (by socket path and cgroup root name), kills them
  by PID and removes the cgroups; `LocalCluster.start()` calls it.

The pure builders (configuration files, argv, the namespace script) are
separate from the I/O at the edges (cgroups, /proc, processes).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from secure_keys_dev import image, podnet

NODE_NAME = "127.0.0.1"
CGROUP_PREFIX = "securekeys-node-"
INSTALL_PACKAGES = "sudo scripts/install-node-packages.sh"
BUILD_BINARIES = "make control-plane (or: scripts/build-control-plane.sh)"
# The kubelet writes these at start (setupKernelTunables); inside the node's mount
# namespace each one is a bind-mounted file, so the host's values never change.
SHIELDED_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# The v1 controllers the kubelet checks for its cgroup root (cgroup_manager_linux.go).
KUBELET_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids")
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_CAP_SYS_ADMIN = 21
_CGROUP_NAME = re.compile(re.escape(CGROUP_PREFIX) + r"(\d+)-[0-9a-f]+$")


# -- errors ------------------------------------------------------------------------------
class NodeError(RuntimeError):
    """The local node could not start, or its host state could not be restored."""


@dataclass(frozen=True)
class Missing:
    """One missing prerequisite and the command (or action) that provides it."""

    what: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}" if self.fix else self.what


class NodeUnavailable(NodeError):
    """Prerequisites of the node are missing; the message names each one and its fix."""

    def __init__(self, missing: Sequence[Missing]) -> None:
        lines = "\n".join(f"  - {m}" for m in missing)
        super().__init__(f"the local node cannot start here:\n{lines}")
        self.missing = tuple(missing)


class UnsafeCgroup(NodeError):
    """Refused to touch a cgroup path that is not the node's own."""


# -- prerequisites -----------------------------------------------------------------------
@dataclass(frozen=True)
class NodeTools:
    """Every executable the node runs, found and checked."""

    kubelet: Path
    kube_scheduler: Path
    containerd: Path
    containerd_shim: Path
    runc: Path
    ctr: Path
    unshare: Path
    nsenter: Path
    cni_bin_dir: Path

    @classmethod
    def find(cls, bin_dir: Path) -> NodeTools:
        """The tools, or `NodeUnavailable` listing every missing prerequisite."""
        missing = check_prerequisites(
            bin_dir=bin_dir,
            euid=os.geteuid(),
            effective_capabilities=_effective_capabilities(),
            cgroup_controllers={c for m in cgroup_mounts() for c in m.controllers},
            which=shutil.which,
            is_executable=lambda p: os.access(p, os.X_OK),
        )
        if missing:
            raise NodeUnavailable(missing)
        cni = next(d for d in CNI_BIN_DIRS if os.access(d / "loopback", os.X_OK))

        def path(name: str) -> Path:
            found = shutil.which(name)
            if found is None:  # it was there a moment ago
                raise NodeUnavailable([Missing(name, f"run {INSTALL_PACKAGES}")])
            return Path(found)

        return cls(
            kubelet=bin_dir / "kubelet",
            kube_scheduler=bin_dir / "kube-scheduler",
            containerd=path("containerd"),
            containerd_shim=path("containerd-shim-runc-v2"),
            runc=path("runc"),
            ctr=path("ctr"),
            unshare=path("unshare"),
            nsenter=path("nsenter"),
            cni_bin_dir=cni,
        )


# Each executable the node needs from the system, and the Debian package that has it.
SYSTEM_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}


def check_prerequisites(
    *,
    bin_dir: Path,
    euid: int,
    effective_capabilities: int,
    cgroup_controllers: Iterable[str],
    which: Callable[[str], str | None],
    is_executable: Callable[[Path], bool],
) -> list[Missing]:
    """Every missing prerequisite of the node, each with the command that fixes it."""
    missing: list[Missing] = []
    built = [n for n in ("kubelet", "kube-scheduler") if not is_executable(bin_dir / n)]
    if built:
        missing.append(
            Missing(f"{', '.join(built)} not built in {bin_dir}", f"run {BUILD_BINARIES}")
        )
    packages: dict[str, list[str]] = {}
    for tool, package in SYSTEM_TOOLS.items():
        if which(tool) is None:
            packages.setdefault(package, []).append(tool)
    if not any(is_executable(d / "loopback") for d in CNI_BIN_DIRS):
        packages.setdefault("containernetworking-plugins", []).append("the loopback CNI plugin")
    for package, tools in packages.items():
        fix = f"run {INSTALL_PACKAGES}"
        if package == "util-linux":
            fix = "install util-linux (apt-get install util-linux)"
        missing.append(Missing(f"{', '.join(tools)} (Debian package {package})", fix))
    if euid != 0:
        missing.append(
            Missing(
                "not running as root", "run the tests as root (containerd and the kubelet need it)"
            )
        )
    elif not effective_capabilities & (1 << _CAP_SYS_ADMIN):
        missing.append(
            Missing(
                "CAP_SYS_ADMIN is not in the effective capability set",
                "run as root with CAP_SYS_ADMIN (mount namespaces and mounts need it)",
            )
        )
    absent = sorted(set(KUBELET_CONTROLLERS) - set(cgroup_controllers))
    if absent:
        missing.append(
            Missing(
                f"cgroup v1 controllers not mounted under /sys/fs/cgroup: {', '.join(absent)}",
                "run on a machine with cgroup v1 hierarchies (the node supports only those)",
            )
        )
    return missing


def _effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


@dataclass(frozen=True)
class NetworkTools:
    """What a node with a pod network runs besides `NodeTools`."""

    kube_proxy: Path
    coredns: Path
    ip: Path
    iptables: Path

    @classmethod
    def find(cls, bin_dir: Path, cni_bin_dir: Path) -> NetworkTools:
        """The tools, or `NodeUnavailable` listing every missing one and its fix."""
        missing = [
            Missing(f"{name} not built in {bin_dir}", f"run {BUILD_BINARIES}")
            for name in ("kube-proxy", "coredns")
            if not os.access(bin_dir / name, os.X_OK)
        ]
        found = {name: shutil.which(name) for name in ("ip", "iptables")}
        missing += [
            Missing(
                f"{name} (Debian package {'iproute2' if name == 'ip' else name})",
                f"run {INSTALL_PACKAGES}",
            )
            for name, path in found.items()
            if path is None
        ]
        missing += [
            Missing(
                f"the {plugin} CNI plugin (Debian package containernetworking-plugins)",
                f"run {INSTALL_PACKAGES}",
            )
            for plugin in ("bridge", "host-local")
            if not os.access(cni_bin_dir / plugin, os.X_OK)
        ]
        if missing:
            raise NodeUnavailable(missing)
        return cls(
            kube_proxy=bin_dir / "kube-proxy",
            coredns=bin_dir / "coredns",
            ip=Path(found["ip"] or "ip"),
            iptables=Path(found["iptables"] or "iptables"),
        )


# -- layout and pure builders ------------------------------------------------------------
@dataclass(frozen=True)
class NodeLayout:
    """Where everything of one node lives, under ``<cluster workdir>/node``."""

    root: Path
    cgroup_name: str

    @classmethod
    def new(cls, workdir: Path) -> NodeLayout:
        name = f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        return cls(workdir / "node", name)

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.json"

    @property
    def sysctl_dir(self) -> Path:
        return self.root / "sysctl"

    @property
    def namespace_script(self) -> Path:
        return self.root / "enter-namespace.sh"

    @property
    def cgroup_root(self) -> str:
        return "/" + self.cgroup_name

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy-config.json"

    @property
    def corefile(self) -> Path:
        return self.root / "Corefile"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"


@dataclass(frozen=True)
class NodeCredentials:
    """Files the cluster wrote for the node: identities and the kubelet's serving cert."""

    ca_cert: Path
    kubelet_kubeconfig: Path
    kubelet_cert: Path
    kubelet_key: Path
    scheduler_kubeconfig: Path
    kube_proxy_kubeconfig: Path | None = None
    """With a pod network: user system:kube-proxy, through the node's API forwarder."""
    coredns_kubeconfig: Path | None = None
    """With a pod network: user `COREDNS_USER`, through the node's API forwarder."""


def containerd_config(layout: NodeLayout, tools: NodeTools, sandbox_image: str) -> str:
    """containerd 1.6 configuration (version 2): CRI on, cgroupfs, overlayfs, private paths."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    q = json.dumps  # TOML basic strings accept JSON string escapes
    return "\n".join(
        [
            "version = 2",
            f"root = {q(str(layout.containerd_dir / 'root'))}",
            f"state = {q(str(layout.containerd_dir / 'state'))}",
            # opt writes /opt/containerd on the host; the others are unused here.
            "disabled_plugins = ["
            + ", ".join(
                q(p)
                for p in (
                    "io.containerd.internal.v1.opt",
                    "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp",
                )
            )
            + "]",
            "[grpc]",
            f"  address = {q(str(layout.socket))}",
            "[debug]",
            '  level = "warn"',
            f"[{cri}]",
            f"  sandbox_image = {q(sandbox_image)}",
            # The sandbox's oom_score_adj of -998 needs CAP_SYS_RESOURCE, which we may lack.
            "  restrict_oom_score_adj = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  disable_apparmor = true",
            "  enable_selinux = false",
            "  enable_unprivileged_ports = false",
            "  enable_unprivileged_icmp = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            f"  BinaryName = {q(str(tools.runc))}",
            f"  Root = {q(str(layout.containerd_dir / 'runc'))}",
            "  SystemdCgroup = false",
            f"[{cri}.cni]",
            f"  bin_dir = {q(str(tools.cni_bin_dir))}",
            f"  conf_dir = {q(str(layout.cni_conf_dir))}",
            "  max_conf_num = 1",
            "",
        ]
    )


def cni_conflist() -> dict[str, Any]:
    """Loopback only: enough for NetworkReady; pods here use hostNetwork."""
    return {
        "cniVersion": "1.0.0",
        "name": "securekeys-loopback",
        "plugins": [{"type": "loopback"}],
    }


def kubelet_configuration(
    layout: NodeLayout,
    credentials: NodeCredentials,
    port: int,
    network: podnet.PodNetwork | None = None,
) -> dict[str, Any]:
    """The KubeletConfiguration: authenticated, everything under the node dir; on loopback,
    or with a pod network on the node's address with the cluster DNS for pods."""
    endpoint = f"unix://{layout.socket}"
    dns: dict[str, Any] = {"resolvConf": "/etc/resolv.conf"}
    if network is not None:
        # No upstream servers: nothing leaves the machine, names outside the cluster fail.
        dns = {"resolvConf": str(layout.resolv_conf), "clusterDNS": [network.dns_service_ip]}
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1" if network is None else network.node_address,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(credentials.kubelet_cert),
        "tlsPrivateKeyFile": str(credentials.kubelet_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(credentials.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "cgroupsPerQOS": True,
        # 1.35+ refuses cgroup v1 unless told otherwise; our machines are v1.
        "failCgroupV1": False,
        "failSwapOn": False,
        "podLogsDir": str(layout.kubelet_dir / "pod-logs"),
        # Its default (/usr/libexec/kubernetes/...) would be created on the host.
        "volumePluginDir": str(layout.kubelet_dir / "volume-plugins"),
        **dns,
        "clusterDomain": podnet.CLUSTER_DOMAIN,
        # Images come from `ctr import`, not a registry: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
            "nodefs.inodesFree": "2%",
        },
        "shutdownGracePeriod": "0s",
        "staticPodPath": "",
        "registerNode": True,
    }


def enter_argv(tools: NodeTools, namespace_pid: int, *, network: bool) -> list[str]:
    """nsenter into containerd's mount namespace (and its network namespace, if it has one)."""
    argv = [str(tools.nsenter), f"--mount=/proc/{namespace_pid}/ns/mnt"]
    if network:
        argv.append(f"--net=/proc/{namespace_pid}/ns/net")
    return [*argv, "--"]


def kubelet_argv(
    tools: NodeTools,
    layout: NodeLayout,
    credentials: NodeCredentials,
    namespace_pid: int,
    network: podnet.PodNetwork | None = None,
) -> list[str]:
    """The kubelet, run inside containerd's namespaces."""
    node_ip = [] if network is None else [f"--node-ip={network.node_address}"]
    return [
        *enter_argv(tools, namespace_pid, network=network is not None),
        str(tools.kubelet),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={credentials.kubelet_kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        *node_ip,
        f"--root-dir={layout.kubelet_dir}",
        f"--cert-dir={layout.kubelet_dir / 'pki'}",
        "--v=1",
    ]


def kube_proxy_argv(
    tools: NodeTools, network_tools: NetworkTools, layout: NodeLayout, namespace_pid: int
) -> list[str]:
    """kube-proxy in the node's namespaces, where its iptables rules stay."""
    return [
        *enter_argv(tools, namespace_pid, network=True),
        str(network_tools.kube_proxy),
        f"--config={layout.kube_proxy_config}",
        "--v=1",
    ]


def coredns_argv(
    tools: NodeTools, network_tools: NetworkTools, layout: NodeLayout, namespace_pid: int
) -> list[str]:
    return [
        *enter_argv(tools, namespace_pid, network=True),
        str(network_tools.coredns),
        "-conf",
        str(layout.corefile),
    ]


def scheduler_argv(
    tools: NodeTools, credentials: NodeCredentials, port: int, cert_dir: Path
) -> list[str]:
    kubeconfig = str(credentials.scheduler_kubeconfig)
    return [
        str(tools.kube_scheduler),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def namespace_script(
    layout: NodeLayout, tools: NodeTools, shields: Mapping[str, Path], *, network: bool = False
) -> str:
    """Runs as PID <n> in the fresh mount namespace: private /run and /var/log, shielded
    sysctls, then exec containerd (same PID, so PR_SET_PDEATHSIG still holds). In a fresh
    network namespace, loopback comes up first (containerd's stream server binds it)."""
    lines = [
        "set -eu",
        "mount -t tmpfs -o mode=0755,size=64m securekeys-run /run",
        "mount -t tmpfs -o mode=0755,size=64m securekeys-log /var/log",
    ]
    if network:
        lines.append("ip link set lo up")
    for key, source in sorted(shields.items()):
        target = Path("/proc/sys") / key
        lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
    lines.append(
        f"exec {shlex.quote(str(tools.containerd))} "
        f"--config {shlex.quote(str(layout.containerd_config))}"
    )
    return "\n".join(lines) + "\n"


def namespace_argv(tools: NodeTools, layout: NodeLayout, *, network: bool = False) -> list[str]:
    """containerd's parent: a new mount namespace, and a new network namespace for a node
    with a pod network (it lives exactly as long as the processes in it)."""
    return [
        str(tools.unshare),
        "--mount",
        "--propagation",
        "private",
        *(["--net"] if network else []),
        "/bin/sh",
        str(layout.namespace_script),
    ]


def import_argv(tools: NodeTools, layout: NodeLayout, archive: Path) -> list[str]:
    return [
        str(tools.ctr),
        f"--address={layout.socket}",
        "--namespace=k8s.io",
        "images",
        "import",
        "--no-unpack=false",
        str(archive),
    ]


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """Ready, and the not-ready taint removed (else nothing schedules)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = (node.get("spec") or {}).get("taints") or []
    return ready and not any(t.get("key") == NOT_READY_TAINT for t in taints)


# -- cgroups (I/O edge) ------------------------------------------------------------------
@dataclass(frozen=True)
class CgroupMount:
    path: Path
    controllers: tuple[str, ...]  # empty for cgroup2


def parse_cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup (v1) and cgroup2 hierarchies in a /proc/<pid>/mountinfo text."""
    mounts: list[CgroupMount] = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        if fields[3] != "/":
            continue  # a bind mount of a sub-cgroup, not a hierarchy's root
        controllers: tuple[str, ...] = ()
        if tail[0] == "cgroup":
            options = tail[2].split(",")
            controllers = tuple(
                o.removeprefix("name=")
                for o in options
                if o
                in {
                    "cpu",
                    "cpuacct",
                    "cpuset",
                    "memory",
                    "pids",
                    "devices",
                    "freezer",
                    "blkio",
                    "hugetlb",
                    "net_cls",
                    "net_prio",
                    "perf_event",
                    "rdma",
                    "misc",
                }
                or o.startswith("name=")
            )
        mounts.append(CgroupMount(Path(fields[4].replace("\\040", " ")), controllers))
    return mounts


def cgroup_mounts() -> list[CgroupMount]:
    return parse_cgroup_mounts(Path("/proc/self/mountinfo").read_text())


def parse_proc_cgroup(text: str) -> set[str]:
    """The non-root cgroup paths in a /proc/<pid>/cgroup text."""
    return {
        line.split(":", 2)[2]
        for line in text.splitlines()
        if line.count(":") >= 2 and line.split(":", 2)[2] not in ("", "/")
    }


def protected_cgroups() -> set[str]:
    """The cgroups of PID 1 and of this process: the machine's supervisor's; never ours."""
    protected: set[str] = set()
    for pid in ("1", "self"):
        with contextlib.suppress(OSError):
            protected |= parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    return protected


def check_owned_cgroup(relative: str, protected: Iterable[str]) -> None:
    """Refuse unless ``relative`` is a node cgroup (or below one) and shares no path with a
    protected cgroup (neither inside one, nor an ancestor of one)."""
    parts = [p for p in relative.split("/") if p]
    if not parts or not _CGROUP_NAME.match(parts[0]) or ".." in parts:
        raise UnsafeCgroup(f"{relative!r} is not a node cgroup")
    path = "/" + "/".join(parts)
    for other in protected:
        other = "/" + other.strip("/")
        if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
            raise UnsafeCgroup(f"{relative!r} overlaps the supervisor's cgroup {other!r}")


def create_cgroup_root(name: str) -> None:
    """The kubelet's cgroup root in every v1 hierarchy (the kubelet checks that it exists)."""
    check_owned_cgroup(name, protected_cgroups())
    for mount in cgroup_mounts():
        if not mount.controllers:
            continue  # cgroup2 in hybrid mode: runc manages it on its own
        directory = mount.path / name
        directory.mkdir(exist_ok=True)
        if "cpuset" in mount.controllers:
            # A new cpuset is empty: no task could join it. Inherit the hierarchy's sets.
            for key in ("cpuset.cpus", "cpuset.mems"):
                if not (directory / key).read_text().strip():
                    (directory / key).write_text((mount.path / key).read_text())


def node_cgroup_roots() -> dict[str, list[Path]]:
    """Every node cgroup root on the machine, by name, with its directory per hierarchy."""
    found: dict[str, list[Path]] = {}
    for mount in cgroup_mounts():
        with contextlib.suppress(OSError):
            for entry in mount.path.iterdir():
                if entry.is_dir() and _CGROUP_NAME.match(entry.name):
                    found.setdefault(entry.name, []).append(entry)
    return found


def cgroup_tree_pids(name: str) -> set[int]:
    """Processes in any cgroup at or below the node cgroup root ``name``."""
    check_owned_cgroup(name, protected_cgroups())
    pids: set[int] = set()
    for mount in cgroup_mounts():
        top = mount.path / name
        if not top.is_dir():
            continue
        for directory, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                text = (Path(directory) / "cgroup.procs").read_text()
                pids.update(int(p) for p in text.split())
    return pids


def kill_cgroup_tree(name: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in the node's cgroups until none is left."""
    deadline = time.monotonic() + timeout
    while pids := cgroup_tree_pids(name):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NodeError(f"processes {sorted(pids)} in cgroup {name} did not die")
        time.sleep(0.05)


def remove_cgroup_tree(name: str, timeout: float = 10.0) -> None:
    """Remove the node cgroup root ``name`` in every hierarchy, deepest directories first."""
    protected = protected_cgroups()
    check_owned_cgroup(name, protected)
    deadline = time.monotonic() + timeout
    for mount in cgroup_mounts():
        top = mount.path / name
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):
            check_owned_cgroup(str(Path(directory).relative_to(mount.path)), protected)
            while True:  # an exiting task keeps its cgroup busy for a moment
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise NodeError(f"cannot remove cgroup {directory}: {exc}") from exc
                    time.sleep(0.05)


# -- processes (I/O edge) ----------------------------------------------------------------
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def shim_sockets() -> dict[int, Path]:
    """containerd-shim-runc-v2 processes, by pid, with the containerd socket they serve."""
    shims: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if not argv or Path(argv[0]).name != "containerd-shim-runc-v2" or "-address" not in argv:
            continue
        index = argv.index("-address") + 1
        if index < len(argv):
            shims[int(entry.name)] = Path(argv[index])
    return shims


def kill_pids(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL each pid and wait until none is alive (a zombie counts as gone)."""
    pending = set(pids)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pending := {p for p in pending if _running(p)}:
        if time.monotonic() > deadline:
            raise NodeError(f"processes {sorted(pending)} did not die")
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def is_stale_node_socket(socket: Path) -> bool:
    """Whether ``socket`` is a node's containerd socket (``<workdir>/node/containerd/
    containerd.sock``) whose cluster workdir has no live owner (or is gone)."""
    if (socket.name, socket.parent.name, socket.parent.parent.name) != (
        "containerd.sock",
        "containerd",
        "node",
    ):
        return False  # not ours: a system containerd, say
    try:
        return not _pid_alive(int((socket.parents[2] / "owner.pid").read_text()))
    except (OSError, ValueError):
        return True


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: its owner is dead, only not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _running(pid)


def reap_stale_nodes() -> list[str]:
    """Clean up after nodes whose owner died without stopping them (SIGKILL, crash).

    Their kubelet, containerd and scheduler died with the owner (PR_SET_PDEATHSIG);
    shims and containers did not. Kill the shims serving a socket in a directory
    with no live owner, then every process in a node cgroup root whose owner pid
    (part of its name) is gone, then remove those roots. The dead nodes' mount
    namespaces vanish with their last process. Returns the cgroup roots removed.
    """
    stale_shims = [pid for pid, sock in shim_sockets().items() if is_stale_node_socket(sock)]
    kill_pids(stale_shims)
    removed: list[str] = []
    for name in node_cgroup_roots():
        match = _CGROUP_NAME.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        kill_cgroup_tree(name)
        remove_cgroup_tree(name)
        removed.append(name)
    # Their network namespaces went with their last process, and the veth pairs with
    # them; a pair whose node end never left the host (the owner died during start-up)
    # is deleted here.
    podnet.reap_stale_links(_pid_alive)
    return removed


# -- what a LocalCluster needs for a node --------------------------------------------------
def node_arguments(bin_dir: Path, link_dir: Path) -> dict[str, Any]:
    """`LocalCluster` keyword arguments for a node with the project's images.

    Raises `NodeUnavailable` naming every missing prerequisite (of the node or of the
    image build); a failing build raises `image.ImageBuildError`. The archives are
    hard-linked into ``link_dir``: the image cache keeps one archive per image, and a
    rebuild elsewhere (another session, changed sources) removes the old one, maybe
    between our build and our import. Other files in ``link_dir`` are removed.
    """
    missing: list[Missing] = []
    try:
        NodeTools.find(bin_dir)
    except NodeUnavailable as exc:
        missing += exc.missing
    missing += [Missing(f"image build: {line}") for line in image.missing_prerequisites()]
    if missing:
        raise NodeUnavailable(missing)
    link_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        images = image.ensure_images()
        try:
            archives = [_link_into(link_dir, built.archive) for built in images.all()]
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue
        for old in set(link_dir.iterdir()) - set(archives):
            old.unlink()  # links to earlier builds: this directory is ours alone
        return {"node": True, "node_images": archives, "sandbox_image": images.pause.reference}
    raise AssertionError("unreachable")


def _link_into(directory: Path, archive: Path) -> Path:
    link = directory / archive.name
    if not link.exists():
        try:
            os.link(archive, link)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            shutil.copyfile(archive, link)  # another filesystem: copy instead
    return link


# -- the node ----------------------------------------------------------------------------
class Process(Protocol):
    """What the cluster's spawner hands back (`cluster._Component`)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 25) -> str: ...


P = TypeVar("P", bound=Process)
ApiGet = Callable[[str], tuple[int, bytes]]


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    scheduler: int
    apiserver: int = 0
    """The API server's port on the host's loopback (a pod network forwards it)."""


def _read_sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key).read_text()
    except OSError:
        return None


def read_shielded_sysctls() -> dict[str, str]:
    """The current host values of the sysctls the kubelet would rewrite."""
    values = {key: _read_sysctl(key) for key in SHIELDED_SYSCTLS}
    return {key: value for key, value in values.items() if value is not None}


class LocalNode:
    """containerd, kubelet and kube-scheduler for one LocalCluster; see the module docstring."""

    def __init__(
        self,
        tools: NodeTools,
        layout: NodeLayout,
        credentials: NodeCredentials,
        ports: NodePorts,
        *,
        sandbox_image: str,
        images: Sequence[Path] = (),
        network: podnet.PodNetwork | None = None,
        network_tools: NetworkTools | None = None,
    ) -> None:
        """With ``network`` (and ``network_tools``) the node gets a pod network (see
        `secure_keys_dev.podnet`); its host end must already exist (`podnet.claim`)."""
        if (network is None) != (network_tools is None):
            raise NodeError("a pod network needs both network and network_tools")
        self.network = network
        self.network_tools = network_tools
        self.kube_proxy: Process | None = None
        self.coredns: Process | None = None
        self.forwarder: Process | None = None
        self.tools = tools
        self.layout = layout
        self.credentials = credentials
        self.ports = ports
        self.sandbox_image = sandbox_image
        self.images = tuple(images)
        self.containerd: Process | None = None
        self.kubelet: Process | None = None
        self.scheduler: Process | None = None
        self.ready_in: float | None = None
        self.imported_in: float | None = None
        self.kubelet_ready_in: float | None = None
        """Seconds from starting the kubelet to the node Ready and untainted."""
        self._cgroup_created = False

    @property
    def socket(self) -> Path:
        return self.layout.socket

    def start(
        self,
        spawn: Callable[[str, Sequence[str]], P],
        wait: Callable[[P, float, Callable[[], bool]], None],
        api_get: ApiGet,
        deadline: float,
    ) -> None:
        """Start scheduler, containerd (then import the images) and kubelet; return once
        the node is Ready without the not-ready taint. ``spawn`` and ``wait`` are the
        cluster's: they give each process PR_SET_PDEATHSIG and a log file."""
        began = time.monotonic()
        self._write_files()
        create_cgroup_root(self.layout.cgroup_name)
        self._cgroup_created = True
        scheduler = self.scheduler = spawn(
            "kube-scheduler",
            scheduler_argv(
                self.tools, self.credentials, self.ports.scheduler, self.layout.root / "scheduler"
            ),
        )
        self.containerd = containerd = spawn(
            "containerd", namespace_argv(self.tools, self.layout, network=self.network is not None)
        )
        wait(containerd, deadline, self._containerd_ready)
        if self.network is not None:
            self._start_network(spawn, wait, containerd.process.pid, deadline)
        imports_began = time.monotonic()
        for archive in self.images:
            self._import(archive, deadline)
        self.imported_in = time.monotonic() - imports_began
        kubelet_began = time.monotonic()
        kubelet = self.kubelet = spawn(
            "kubelet",
            kubelet_argv(
                self.tools, self.layout, self.credentials, containerd.process.pid, self.network
            ),
        )
        if self.network is not None and self.network_tools is not None:
            self.kube_proxy = spawn(
                "kube-proxy",
                kube_proxy_argv(
                    self.tools, self.network_tools, self.layout, containerd.process.pid
                ),
            )
            coredns = self.coredns = spawn(
                "coredns",
                coredns_argv(self.tools, self.network_tools, self.layout, containerd.process.pid),
            )
        wait(scheduler, deadline, self._scheduler_healthy)
        wait(kubelet, deadline, lambda: self._node_ready(api_get))
        self.kubelet_ready_in = time.monotonic() - kubelet_began
        if self.network is not None:
            wait(coredns, deadline, self._coredns_ready)  # DNS answers: the network is up
        self.ready_in = time.monotonic() - began

    def import_image(self, archive: Path, timeout: float = 60.0) -> None:
        """Load an OCI archive into the node's containerd (namespace k8s.io)."""
        self._import(archive, time.monotonic() + timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node and restore host state: no process, cgroup or mount left.

        Order matters: the kubelet first (else it restarts what we kill), then every
        container (by cgroup), containerd, its shims (by socket), and the cgroups.
        """
        for component in (self.kubelet, self.kube_proxy, self.coredns, self.scheduler):
            _terminate(component, timeout)
        if self._cgroup_created:
            kill_cgroup_tree(self.layout.cgroup_name, timeout)
        _terminate(self.containerd, timeout)
        kill_pids(
            (pid for pid, sock in shim_sockets().items() if sock == self.layout.socket), timeout
        )
        if self._cgroup_created:
            kill_cgroup_tree(self.layout.cgroup_name, timeout)
            remove_cgroup_tree(self.layout.cgroup_name, timeout)
            self._cgroup_created = False

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of the node's own processes (kubelet, containerd, scheduler)."""
        sizes: dict[str, int] = {}
        for component in (
            self.kubelet,
            self.containerd,
            self.scheduler,
            self.kube_proxy,
            self.coredns,
            self.forwarder,
        ):
            if component is None:
                continue
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{component.process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[component.name] = int(line.split()[1])
        return sizes

    # -- internals ---------------------------------------------------------------------
    def _write_files(self) -> None:
        layout = self.layout
        for directory in (
            layout.root,
            layout.containerd_dir,
            layout.cni_conf_dir,
            layout.kubelet_dir,
            layout.sysctl_dir,
            layout.root / "scheduler",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        (layout.root / "cgroup").write_text(layout.cgroup_name + "\n")
        layout.containerd_config.write_text(
            containerd_config(layout, self.tools, self.sandbox_image)
        )
        network = self.network
        if network is None:
            (layout.cni_conf_dir / "10-loopback.conflist").write_text(json.dumps(cni_conflist()))
        else:
            conflist = podnet.cni_conflist(network, layout.root / "cni-ipam")
            (layout.cni_conf_dir / "10-pods.conflist").write_text(json.dumps(conflist))
            self._write_network_files(network)
        layout.kubelet_config.write_text(
            json.dumps(kubelet_configuration(layout, self.credentials, self.ports.kubelet, network))
        )
        shields: dict[str, Path] = {}
        for key, value in read_shielded_sysctls().items():
            shield = layout.sysctl_dir / key.replace("/", ".")
            shield.write_text(value)
            shields[key] = shield
        layout.namespace_script.write_text(
            namespace_script(layout, self.tools, shields, network=network is not None)
        )

    def _write_network_files(self, network: podnet.PodNetwork) -> None:
        layout, credentials = self.layout, self.credentials
        if credentials.kube_proxy_kubeconfig is None or credentials.coredns_kubeconfig is None:
            raise NodeError("a pod network needs kube-proxy's and CoreDNS's kubeconfigs")
        layout.kube_proxy_config.write_text(
            json.dumps(
                podnet.kube_proxy_configuration(
                    network, credentials.kube_proxy_kubeconfig, NODE_NAME
                )
            )
        )
        layout.corefile.write_text(podnet.corefile(network, credentials.coredns_kubeconfig))
        layout.resolv_conf.write_text(
            "# The node's namespace has no route off the machine: no upstream servers.\n"
        )

    def _start_network(
        self,
        spawn: Callable[[str, Sequence[str]], P],
        wait: Callable[[P, float, Callable[[], bool]], None],
        namespace_pid: int,
        deadline: float,
    ) -> None:
        """The node end of the pair into containerd's network namespace, then the API
        server's forwarder there (the kubelet, kube-proxy and CoreDNS dial it)."""
        network = self.network
        if network is None:
            raise NodeError("no pod network to start")
        try:
            podnet.move_into(network, namespace_pid)
        except podnet.PodNetworkError as exc:
            raise NodeError(str(exc)) from exc
        port = self.ports.apiserver
        forwarder = self.forwarder = spawn(
            "forward-apiserver",
            forwarder_argv(namespace_pid, [f"{network.node_address}:{port}={port}"]),
        )
        wait(forwarder, deadline, lambda: _accepts(network.node_address, port))

    def _coredns_ready(self) -> bool:
        if self.network is None:
            return True
        connection = http.client.HTTPConnection(self.network.node_address, 8181, timeout=2)
        try:
            connection.request("GET", "/ready")
            return connection.getresponse().status == 200
        finally:
            connection.close()

    def _containerd_ready(self) -> bool:
        if not self.layout.socket.exists():
            return False
        try:
            result = subprocess.run(  # noqa: S603 - our own paths
                [str(self.tools.ctr), f"--address={self.layout.socket}", "version"],
                capture_output=True,
                timeout=5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def _import(self, archive: Path, deadline: float) -> None:
        result = subprocess.run(  # noqa: S603 - our own paths
            import_argv(self.tools, self.layout, archive),
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(
                f"ctr could not import {archive} into the node: "
                f"{(result.stderr or result.stdout).strip()}"
            )

    def _scheduler_healthy(self) -> bool:
        context = ssl.create_default_context()
        # Its serving certificate is self-signed; this only asks whether it is up.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.ports.scheduler, context=context, timeout=2
        )
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            return response.status == 200 and response.read() == b"ok"
        finally:
            connection.close()

    def _node_ready(self, api_get: ApiGet) -> bool:
        status, body = api_get(f"/api/v1/nodes/{NODE_NAME}")
        return status == 200 and node_is_ready(json.loads(body))


def forwarder_argv(namespace_pid: int, rules: Sequence[str]) -> list[str]:
    """`secure_keys_dev.forward` (stdlib only, so it runs by path) for ``rules``."""
    return [
        sys.executable,
        str(Path(__file__).with_name("forward.py")),
        f"--netns=/proc/{namespace_pid}/ns/net",
        *rules,
    ]


def _accepts(address: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``address`` (inside the node)."""
    with socket.create_connection((address, port), timeout=1):
        return True


def _terminate(component: Process | None, timeout: float) -> None:
    if component is None or component.process.poll() is not None:
        return
    component.process.terminate()
    try:
        component.process.wait(timeout)
    except subprocess.TimeoutExpired:
        component.process.kill()
        component.process.wait()
