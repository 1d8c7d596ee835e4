"""Local control-plane plumbing that needs no running processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from secure_keys_dev import kubeconfig
from secure_keys_dev.cluster import (
    WORKDIR_PREFIX,
    Binaries,
    MissingBinaries,
    PortInUse,
    Ports,
    sweep_stale_workdirs,
)

REPO = Path(__file__).resolve().parents[3]


def test_missing_binaries_name_the_build_command(tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    with pytest.raises(MissingBinaries) as caught:
        Binaries.find(tmp_path)
    message = str(caught.value)
    assert "kube-apiserver, kube-controller-manager, kubectl" in message
    assert "etcd," not in message
    assert "scripts/build-control-plane.sh" in message
    assert "make control-plane" in message


def test_binaries_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("SECUREKEYS_BIN_DIR", str(tmp_path))
    assert Binaries.find().kube_apiserver == tmp_path / "kube-apiserver"


def test_a_taken_port_is_refused_before_anything_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            Ports.pick(port)


def test_picked_ports_are_distinct() -> None:
    ports = Ports.pick()
    values = [ports.etcd_client, ports.etcd_peer, ports.apiserver, ports.controller_manager]
    assert len(set(values)) == 4


def test_sweep_removes_only_directories_of_dead_owners(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"{WORKDIR_PREFIX}stale"
    live = tmp_path / f"{WORKDIR_PREFIX}live"
    other = tmp_path / "unrelated"
    for d in (stale, live, other):
        d.mkdir()
    (stale / "owner.pid").write_text(dead.stdout.strip())
    (live / "owner.pid").write_text(str(os.getpid()))
    (other / "owner.pid").write_text(dead.stdout.strip())
    assert sweep_stale_workdirs(tmp_path) == [stale]
    assert not stale.exists()
    assert live.exists()
    assert other.exists()


def test_kubeconfig_needs_exactly_one_credential() -> None:
    with pytest.raises(ValueError, match="exactly one credential"):
        kubeconfig.build(server="https://x", ca_pem=b"ca", user="u")
    with pytest.raises(ValueError, match="exactly one credential"):
        kubeconfig.build(
            server="https://x", ca_pem=b"ca", user="u", cert_pem=b"c", key_pem=b"k", token="t"
        )
    with pytest.raises(ValueError, match="both cert_pem and key_pem"):
        kubeconfig.build(server="https://x", ca_pem=b"ca", user="u", cert_pem=b"c")


def test_kubeconfig_is_private_and_reads_back(tmp_path: Path) -> None:
    document = kubeconfig.build(server="https://127.0.0.1:1", ca_pem=b"CA", user="u", token="t")
    path = kubeconfig.write(tmp_path / "k" / "config", document)
    assert path.stat().st_mode & 0o777 == 0o600
    assert kubeconfig.current_cluster(path) == ("https://127.0.0.1:1", b"CA", "securekeys-local")


def test_kind_config_is_a_single_control_plane_without_our_audience() -> None:
    text = (REPO / "kind-config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert set(roles) <= {"control-plane", "worker"}
    # The sidecar's token must never be a valid API server credential.
    body = yaml.safe_dump(dict(config.items()))
    assert "securekeys.io" not in body


def test_kind_e2e_target_runs_the_e2e_suite_against_the_kind_kubeconfig() -> None:
    makefile = (REPO / "Makefile").read_text()
    target = makefile.split("\nkind-e2e:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip() for line in target.splitlines()[1:]]
    assert steps[0].startswith("kind create cluster")
    assert "--config kind-config.yaml" in steps[0]
    assert steps[1].startswith("kind load docker-image")
    assert "kind get kubeconfig" in steps[2]
    assert steps[3].startswith("$(MAKE) e2e KUBECONFIG=")
    assert "image" in target.splitlines()[0]
