"""The local node's pure parts: prerequisites, configuration, cgroup safety, stale shims."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_keys_dev import pki
from secure_keys_dev.node import (
    CGROUP_PREFIX,
    SHIELDED_SYSCTLS,
    NodeCredentials,
    NodeLayout,
    NodeTools,
    UnsafeCgroup,
    check_owned_cgroup,
    check_prerequisites,
    containerd_config,
    is_stale_node_socket,
    kubelet_argv,
    kubelet_configuration,
    namespace_script,
    node_is_ready,
    parse_cgroup_mounts,
    parse_proc_cgroup,
)

ALL_CAPS = (1 << 41) - 1
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids")


def _prerequisites(
    tmp_path: Path,
    *,
    built: tuple[str, ...] = ("kubelet", "kube-scheduler"),
    tools: tuple[str, ...] = (
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "unshare",
        "nsenter",
    ),
    loopback: bool = True,
    euid: int = 0,
    caps: int = ALL_CAPS,
    controllers: tuple[str, ...] = CONTROLLERS,
) -> list[str]:
    executables = {tmp_path / name for name in built}
    if loopback:
        executables.add(Path("/usr/lib/cni/loopback"))
    missing = check_prerequisites(
        bin_dir=tmp_path,
        euid=euid,
        effective_capabilities=caps,
        cgroup_controllers=controllers,
        which=lambda name: f"/usr/bin/{name}" if name in tools else None,
        is_executable=lambda path: path in executables,
    )
    return [str(m) for m in missing]


def test_nothing_is_missing_when_everything_is_there(tmp_path: Path) -> None:
    assert _prerequisites(tmp_path) == []


def test_each_missing_prerequisite_names_the_command_that_fixes_it(tmp_path: Path) -> None:
    (binaries,) = _prerequisites(tmp_path, built=("kube-scheduler",))
    assert "kubelet not built" in binaries
    assert "make control-plane" in binaries

    packages = _prerequisites(tmp_path, tools=("unshare", "nsenter", "runc"), loopback=False)
    assert len(packages) == 2
    containerd, cni = packages
    assert "containerd, containerd-shim-runc-v2, ctr (Debian package containerd)" in containerd
    assert "containernetworking-plugins" in cni
    assert all("scripts/install-node-packages.sh" in line for line in packages)

    (root,) = _prerequisites(tmp_path, euid=1000)
    assert "not running as root" in root

    (capability,) = _prerequisites(tmp_path, caps=ALL_CAPS & ~(1 << 21))
    assert "CAP_SYS_ADMIN" in capability

    (cgroups,) = _prerequisites(tmp_path, controllers=("cpu", "memory"))
    assert "cpuacct, cpuset, pids" in cgroups


def test_node_tools_raise_one_error_listing_everything_missing(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="kubelet, kube-scheduler not built") as caught:
        NodeTools.find(tmp_path)
    assert "make control-plane" in str(caught.value)


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:32 /inner /mnt/memory rw,relatime - cgroup cgroup rw,memory
"""


def test_cgroup_hierarchies_are_read_from_mountinfo() -> None:
    mounts = {str(m.path): m.controllers for m in parse_cgroup_mounts(MOUNTINFO)}
    assert mounts == {
        "/sys/fs/cgroup/cpu": ("cpu",),
        "/sys/fs/cgroup/cpuset": ("cpuset",),
        "/sys/fs/cgroup/memory": ("memory",),
        "/sys/fs/cgroup/systemd": ("systemd",),
        "/sys/fs/cgroup/unified": (),
    }


SUPERVISOR = "4:memory:/process_api/ffc0\n3:cpuset:/\n0::/\n"


def test_only_node_cgroups_clear_of_the_supervisor_can_be_touched() -> None:
    protected = parse_proc_cgroup(SUPERVISOR)
    assert protected == {"/process_api/ffc0"}
    ours = f"{CGROUP_PREFIX}123-abcd"
    check_owned_cgroup(ours, protected)
    check_owned_cgroup(f"{ours}/kubepods/besteffort", protected)
    for refused in (
        "/",
        "",
        "kubepods",  # the kubelet's default root: shared with any other kubelet
        "process_api/ffc0",
        f"{ours}/../process_api",
        f"{CGROUP_PREFIX}x-abcd",
    ):
        with pytest.raises(UnsafeCgroup):
            check_owned_cgroup(refused, protected)
    # A supervisor that lived inside a node-named cgroup, or below one, stays untouchable.
    for supervisor in (f"/{ours}", f"/{ours}/inner"):
        with pytest.raises(UnsafeCgroup, match="supervisor"):
            check_owned_cgroup(ours, {supervisor})


def _layout(tmp_path: Path) -> NodeLayout:
    return NodeLayout(tmp_path / "node", f"{CGROUP_PREFIX}1-ab")


def _tools() -> NodeTools:
    usr = Path("/usr/bin")
    return NodeTools(
        kubelet=Path("/b/kubelet"),
        kube_scheduler=Path("/b/kube-scheduler"),
        containerd=usr / "containerd",
        containerd_shim=usr / "containerd-shim-runc-v2",
        runc=Path("/usr/sbin/runc"),
        ctr=usr / "ctr",
        unshare=usr / "unshare",
        nsenter=usr / "nsenter",
        cni_bin_dir=Path("/usr/lib/cni"),
    )


def _credentials(tmp_path: Path) -> NodeCredentials:
    return NodeCredentials(
        ca_cert=tmp_path / "ca.crt",
        kubelet_kubeconfig=tmp_path / "kubelet.kubeconfig",
        kubelet_cert=tmp_path / "kubelet.crt",
        kubelet_key=tmp_path / "kubelet.key",
        scheduler_kubeconfig=tmp_path / "scheduler.kubeconfig",
    )


def test_containerd_is_configured_for_this_machine_and_keeps_to_its_directory(
    tmp_path: Path,
) -> None:
    layout = _layout(tmp_path)
    config = tomllib.loads(containerd_config(layout, _tools(), "localhost/pause:x"))
    assert "io.containerd.internal.v1.opt" in config["disabled_plugins"]  # /opt/containerd
    for key in ("root", "state"):
        assert Path(config[key]).is_relative_to(layout.root)
    assert config["grpc"]["address"] == str(layout.socket)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE here
    assert cri["sandbox_image"] == "localhost/pause:x"
    assert cri["stream_server_address"] == "127.0.0.1"
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert Path(runc["Root"]).is_relative_to(layout.root)  # not /run/containerd/runc
    assert cri["cni"]["conf_dir"] == str(layout.cni_conf_dir)


def test_the_kubelet_is_authenticated_loopback_only_and_in_its_own_cgroup_root(
    tmp_path: Path,
) -> None:
    layout, credentials = _layout(tmp_path), _credentials(tmp_path)
    config = kubelet_configuration(layout, credentials, 10555)
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["webhook"] == {"enabled": True}
    assert config["authentication"]["x509"] == {"clientCAFile": str(credentials.ca_cert)}
    assert config["authorization"] == {"mode": "Webhook"}
    assert (config["address"], config["port"], config["readOnlyPort"]) == ("127.0.0.1", 10555, 0)
    assert config["cgroupRoot"] == f"/{CGROUP_PREFIX}1-ab"
    assert (config["cgroupDriver"], config["failCgroupV1"]) == ("cgroupfs", False)
    for key in ("podLogsDir", "volumePluginDir", "tlsCertFile"):
        assert Path(config[key]).is_relative_to(tmp_path)
    argv = kubelet_argv(_tools(), layout, credentials, 4242)
    assert argv[:3] == ["/usr/bin/nsenter", "--mount=/proc/4242/ns/mnt", "--"]
    assert "--hostname-override=127.0.0.1" in argv
    assert f"--root-dir={layout.kubelet_dir}" in argv


def test_the_namespace_script_shields_sysctls_and_private_dirs_before_containerd(
    tmp_path: Path,
) -> None:
    layout = _layout(tmp_path)
    shields = {key: tmp_path / key.replace("/", ".") for key in SHIELDED_SYSCTLS}
    lines = namespace_script(layout, _tools(), shields).splitlines()
    assert lines[0] == "set -eu"  # a failed mount stops it before containerd starts
    assert lines[-1] == f"exec /usr/bin/containerd --config {layout.containerd_config}"
    mounts = lines[1:-1]
    assert any(line.endswith(" /run") and "-t tmpfs" in line for line in mounts)
    assert any(line.endswith(" /var/log") and "-t tmpfs" in line for line in mounts)
    for key in SHIELDED_SYSCTLS:
        assert f"mount --bind {shields[key]} /proc/sys/{key}" in mounts


def test_a_node_is_ready_only_without_the_not_ready_taint() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert node_is_ready(ready)
    tainted = {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/not-ready"}]}}
    assert not node_is_ready(tainted)
    assert not node_is_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert not node_is_ready({})


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_only_shims_of_our_nodes_with_dead_owners_are_stale(tmp_path: Path) -> None:
    socket = tmp_path / "node" / "containerd" / "containerd.sock"
    socket.parent.mkdir(parents=True)
    (tmp_path / "owner.pid").write_text(str(os.getpid()))
    assert not is_stale_node_socket(socket)
    (tmp_path / "owner.pid").write_text(str(_dead_pid()))
    assert is_stale_node_socket(socket)
    (tmp_path / "owner.pid").unlink()
    assert is_stale_node_socket(socket)  # the workdir is gone: the shim is an orphan
    # The system's containerd (or anyone else's) is never ours to kill.
    assert not is_stale_node_socket(Path("/run/containerd/containerd.sock"))
    assert not is_stale_node_socket(tmp_path / "elsewhere" / "containerd.sock")


def test_node_certificates_carry_the_identities_the_api_server_checks() -> None:
    ca = pki.CertificateAuthority.generate("test-ca")
    certs = pki.issue_node_certificates(ca, "127.0.0.1", "127.0.0.1")

    def subject(pair: pki.KeyPair) -> tuple[str, list[str]]:
        cert = x509.load_pem_x509_certificate(pair.cert_pem)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        return str(cn), [str(o) for o in orgs]

    assert subject(certs.kubelet_client) == ("system:node:127.0.0.1", ["system:nodes"])
    assert subject(certs.apiserver_kubelet_client)[1] == ["system:masters"]
    serving = x509.load_pem_x509_certificate(certs.kubelet_serving.cert_pem)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert serving.issuer == ca.certificate.subject
