"""A real local control plane: etcd, kube-apiserver and kube-controller-manager.

`LocalCluster` owns the processes, ports and working directory of one cluster.
It starts etcd, then kube-apiserver, then kube-controller-manager on free
loopback ports in a fresh temporary directory, waits until the API server's
`/readyz` is OK and the controllers are working (the `default` ServiceAccount
exists), and writes an admin kubeconfig. `stop()` (or leaving the `with`
block) stops every process and removes the directory.

With `node=True` it also runs a node (`secure_keys_dev.node`): containerd, a
kubelet registered as `127.0.0.1` and kube-scheduler. The API server then
authorizes with `Node,RBAC`, admits with NodeRestriction and calls the kubelet
with its own client certificate; the controller-manager also runs the
node-lifecycle and job controllers. With `node=False` nothing of this changes.

With `pod_network=True` as well, the node runs in a network namespace of its own
with a real pod network (`secure_keys_dev.podnet`): pods get addresses of a pod
CIDR, kube-proxy makes ClusterIP Services work (the `kubernetes` Service included:
the API server advertises the node-side end of its forwarder), CoreDNS serves
`cluster.local` as the `kube-dns` Service, and the API server reaches webhooks
and aggregated APIs through Services by dialing endpoint addresses
(`--enable-aggregator-routing`). `expose_host_port` and `expose_service` put a
server on the host's loopback behind an address, or a Service, inside the node.
The front proxy (`--requestheader-*`, `--proxy-client-cert-file`) is configured
on every cluster, as on any real one.

Leftovers are prevented three ways: `stop()` runs from `finally`/`__exit__`;
each child gets PR_SET_PDEATHSIG so the kernel kills it if this process dies
without cleaning up (SIGKILL, a crash); and `start()` sweeps the directories of
earlier clusters whose owner process is gone.

The binaries come from `scripts/build-control-plane.sh` (pinned Go modules
under `tools/`), found in `$SECUREKEYS_BIN_DIR` or `build/bin`.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from secure_keys_dev import kubeconfig, pki, podnet
from secure_keys_dev import node as node_mod

BUILD_COMMAND = "scripts/build-control-plane.sh (or: make control-plane)"
WORKDIR_PREFIX = "securekeys-cluster-"
SERVICE_CIDR = "10.96.0.0/16"
"""The Service CIDR of a cluster without a pod network (a pod network brings its own)."""
FRONT_PROXY_CLIENT = "front-proxy-client"
COREDNS_USER = "securekeys:coredns"
KUBE_PROXY_USER = "system:kube-proxy"  # bound to system:node-proxier by default
MANAGED_BY = "local-cluster.securekeys.io"
# Controllers the tests rely on: cascading deletes, namespace teardown,
# ServiceAccounts and their tokens, Deployments, and signing client-cert CSRs.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "certificatesigningrequest-signing-controller",
)
# With a node: remove the not-ready taint from new nodes (or nothing schedules), run
# Jobs, and delete pods bound to a node that is gone.
NODE_CONTROLLERS = (
    "node-lifecycle-controller",
    "job-controller",
    "pod-garbage-collector-controller",
)
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The local control plane could not be built, started or reached."""


class MissingBinaries(ControlPlaneError):
    def __init__(self, directory: Path, missing: Sequence[str]) -> None:
        super().__init__(
            f"control-plane binaries not found in {directory}: {', '.join(missing)}. "
            f"Build them with {BUILD_COMMAND}; the first build takes several minutes."
        )
        self.directory = directory
        self.missing = tuple(missing)


class PortInUse(ControlPlaneError):
    def __init__(self, port: int) -> None:
        super().__init__(
            f"port {port} on 127.0.0.1 is already in use; stop whatever listens there "
            "(a cluster from `make cluster-up`? run `make cluster-down`) or choose another port"
        )
        self.port = port


class StartupFailed(ControlPlaneError):
    """A component exited or never became healthy; the message ends with its log."""


def repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path

    @classmethod
    def find(cls, directory: Path | None = None) -> Binaries:
        if directory is None:
            env = os.environ.get("SECUREKEYS_BIN_DIR")
            directory = Path(env) if env else repository_root() / "build" / "bin"
        names = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
        paths = [directory / name for name in names]
        missing = [p.name for p in paths if not os.access(p, os.X_OK)]
        if missing:
            raise MissingBinaries(directory, missing)
        return cls(*paths)


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Go's listeners do: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortInUse(port) from exc


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_workdir(prefix: str, base: Path | None = None) -> Path:
    """A fresh private temporary directory that records this process as its owner.

    ``sweep_stale_workdirs`` removes it once the owner is gone, however it died.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    (workdir / "owner.pid").write_text(str(os.getpid()))
    return workdir


def sweep_stale_workdirs(base: Path | None = None, prefix: str = WORKDIR_PREFIX) -> list[Path]:
    """Remove working directories named ``prefix*`` whose owning process has exited.

    First the host state of nodes whose owner died: their shims, containers and
    cgroups (`node.reap_stale_nodes`); their mounts were only ever in a mount
    namespace that vanishes with those processes.
    """
    base = base or Path(tempfile.gettempdir())
    node_mod.reap_stale_nodes()
    removed = []
    for candidate in base.glob(prefix + "*"):
        owner = candidate / "owner.pid"
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int

    @classmethod
    def pick(cls, apiserver: int | None = None) -> Ports:
        if apiserver is not None:
            ensure_port_free(apiserver)
        chosen: set[int] = {apiserver} if apiserver else set()
        picks: list[int] = []
        while len(picks) < (4 if apiserver is None else 3):
            port = free_port()
            if port not in chosen:
                chosen.add(port)
                picks.append(port)
        if apiserver is None:
            apiserver = picks.pop()
        return cls(picks[0], picks[1], apiserver, picks[2])


class LocalCluster:
    """One running control plane. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        api_port: int | None = None,
        workdir: Path | None = None,
        startup_timeout: float = 60.0,
        node: bool = False,
        node_images: Sequence[Path] = (),
        sandbox_image: str | None = None,
        pod_network: bool = False,
    ) -> None:
        """``node=True`` adds a node; ``node_images`` are OCI archives imported into it,
        ``sandbox_image`` (the pause image's name) must be one of them. ``pod_network``
        gives the node its own network namespace and a pod network. A missing node
        prerequisite raises `node.NodeUnavailable` here, before anything starts."""
        self.binaries = binaries or Binaries.find()
        self.node_tools = node_mod.NodeTools.find(self.binaries.etcd.parent) if node else None
        if pod_network and self.node_tools is None:
            raise ControlPlaneError("a pod network needs a node (node=True)")
        self.network_tools = (
            node_mod.NetworkTools.find(self.binaries.etcd.parent, self.node_tools.cni_bin_dir)
            if pod_network and self.node_tools is not None
            else None
        )
        self.network: podnet.PodNetwork | None = None
        if node and sandbox_image is None:
            raise ControlPlaneError("a node needs sandbox_image (the pause image's name)")
        self._node_images = tuple(node_images)
        self._sandbox_image = sandbox_image or ""
        self.node: node_mod.LocalNode | None = None
        self._requested_port = api_port
        self._own_workdir = workdir is None
        self._workdir = workdir
        self.startup_timeout = startup_timeout
        self._components: list[_Component] = []
        self._ports: Ports | None = None
        self.ca: pki.CertificateAuthority | None = None
        self.started_in: float | None = None
        self._tls: ssl.SSLContext | None = None

    # -- public surface --------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("cluster not started")
        return self._workdir

    @property
    def ports(self) -> Ports:
        if self._ports is None:
            raise ControlPlaneError("cluster not started")
        return self._ports

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def node_server(self) -> str:
        """The API server as the node sees it: its forwarder there, with a pod network."""
        if self.network is None:
            return self.server
        return f"https://{self.network.node_address}:{self.ports.apiserver}"

    @property
    def service_cidr(self) -> str:
        return SERVICE_CIDR if self.network is None else str(self.network.services)

    def expose_host_port(self, host_port: int) -> tuple[str, int]:
        """A forwarder inside the node's namespace to ``127.0.0.1:host_port`` on the host;
        returns the address and port it listens on (the node's, the same port)."""
        network, node = self.network, self.node
        if network is None or node is None or node.containerd is None:
            raise ControlPlaneError("exposing a host port needs a running pod network")
        self._spawn(
            f"forward-{host_port}",
            node_mod.forwarder_argv(
                node.containerd.process.pid, [f"{network.node_address}:{host_port}={host_port}"]
            ),
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                if node_mod._accepts(network.node_address, host_port):
                    return network.node_address, host_port
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"the forwarder for port {host_port} did not start")
            time.sleep(0.02)

    def expose_service(self, namespace: str, name: str, port: int, host_port: int) -> str:
        """A ClusterIP Service ``name`` (TCP ``port``) in front of ``127.0.0.1:host_port``
        on the host: a forwarder in the node is its only endpoint. Returns its DNS name."""
        address, forwarded = self.expose_host_port(host_port)
        self._apply_service(namespace, name, address, [("https", port, forwarded, "TCP")])
        return f"{name}.{namespace}.svc"

    def _apply_service(
        self,
        namespace: str,
        name: str,
        address: str,
        ports: Sequence[tuple[str, int, int, str]],
        cluster_ip: str | None = None,
    ) -> None:
        """A Service without selector, its EndpointSlice and its Endpoints (``address``),
        created: kube-proxy and CoreDNS read the first, the API server's aggregator routing
        the second before Kubernetes 1.33 (no mirroring controller runs here)."""
        spec: dict[str, Any] = {
            "ports": [
                {"name": n, "port": p, "targetPort": t, "protocol": proto}
                for n, p, t, proto in ports
            ]
        }
        if cluster_ip is not None:
            spec["clusterIP"] = cluster_ip
        labels = {
            "kubernetes.io/service-name": name,
            "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
        }
        self._api_create(
            f"/api/v1/namespaces/{namespace}/services",
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec},
        )
        self._api_create(
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-node", "labels": labels},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
                "ports": [{"name": n, "port": t, "protocol": proto} for n, _, t, proto in ports],
            },
        )
        self._api_create(
            f"/api/v1/namespaces/{namespace}/endpoints",
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
                "subsets": [
                    {
                        "addresses": [{"ip": address}],
                        "ports": [
                            {"name": n, "port": t, "protocol": proto} for n, _, t, proto in ports
                        ],
                    }
                ],
            },
        )

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user `securekeys-admin`, group system:masters)."""
        return self.workdir / "kubeconfig"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.etcd_client}"

    @property
    def etcd_data_dir(self) -> Path:
        return self.workdir / "etcd"

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for a client-cert user with the given groups, signed by our CA."""
        ca = self._require_ca()
        pair = ca.issue_client(user, groups)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        document = kubeconfig.build(
            server=self.server,
            ca_pem=ca.cert_pem,
            user=user,
            cert_pem=pair.cert_pem,
            key_pem=pair.key_pem,
        )
        return kubeconfig.write(self.workdir / "users" / f"{safe}.kubeconfig", document)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> LocalCluster:
        if self._components:
            raise ControlPlaneError("cluster already started")
        began = time.monotonic()
        sweep_stale_workdirs()
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self._prepare(self._requested_port)
            try:
                self._launch()
            except StartupFailed as exc:
                port_race = "address already in use" in str(exc)
                self.stop()
                if not port_race or attempt == attempts - 1:
                    raise
                continue
            except BaseException:
                self.stop()
                raise
            break
        self.started_in = time.monotonic() - began
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop components in reverse order (SIGTERM, then SIGKILL) and remove the workdir.

        The node goes first, with its containers, shims and cgroups (`LocalNode.stop`).
        """
        node, self.node = self.node, None
        try:
            if node is not None:
                node.stop(timeout)
        finally:
            try:
                self._stop_components(timeout)
            finally:
                network, self.network = self.network, None
                if network is not None:
                    podnet.release(network)

    def _stop_components(self, timeout: float) -> None:
        # One at a time, in reverse order: an API server whose etcd is already gone
        # hangs in its graceful shutdown until it is killed (10 s, not 1 s).
        for component in reversed(self._components):
            if component.process.poll() is None:
                component.process.terminate()
            try:
                component.process.wait(timeout)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait()
            component.log.close()
        self._components.clear()
        self._tls = None
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- internals --------------------------------------------------------------------
    def _require_ca(self) -> pki.CertificateAuthority:
        if self.ca is None:
            raise ControlPlaneError("cluster not started")
        return self.ca

    def _prepare(self, api_port: int | None) -> None:
        if self._own_workdir:
            self._workdir = claim_workdir(WORKDIR_PREFIX)
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "owner.pid").write_text(str(os.getpid()))
        (workdir / "logs").mkdir(exist_ok=True)
        self._ports = Ports.pick(api_port)
        if self.network_tools is not None:
            self.network = podnet.claim()
        self._write_pki(workdir)
        if self.node_tools is not None:
            self.node = node_mod.LocalNode(
                self.node_tools,
                node_mod.NodeLayout.new(workdir),
                self._write_node_pki(workdir),
                node_mod.NodePorts(*self._node_ports(), apiserver=self.ports.apiserver),
                sandbox_image=self._sandbox_image,
                images=self._node_images,
                network=self.network,
                network_tools=self.network_tools,
            )

    def _node_ports(self) -> tuple[int, int]:
        """Two free ports (kubelet, scheduler), distinct from each other and the cluster's."""
        taken = set(vars(self.ports).values())
        picks: list[int] = []
        while len(picks) < 2:
            port = free_port()
            if port not in taken:
                taken.add(port)
                picks.append(port)
        return picks[0], picks[1]

    def _write_pki(self, workdir: Path) -> None:
        pki_dir = workdir / "pki"
        pki_dir.mkdir(mode=0o700, exist_ok=True)
        ca = self.ca = pki.CertificateAuthority.generate("securekeys-local-ca")
        network = self.network
        ips: tuple[str, ...] = ("127.0.0.1", "10.96.0.1")
        if network is not None:
            ips = ("127.0.0.1", network.kubernetes_service_ip, network.node_address)
        serving = ca.issue_server(
            "kube-apiserver",
            ips=ips,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        signer = pki.new_private_key()
        # The front proxy: the API server's identity towards aggregated APIs, under a CA
        # of its own (an extension API server trusts X-Remote-User only from it).
        front_proxy_ca = pki.CertificateAuthority.generate("securekeys-front-proxy-ca")
        front_proxy = front_proxy_ca.issue_client(FRONT_PROXY_CLIENT)
        files = {
            "ca.crt": ca.cert_pem,
            "ca.key": ca.key_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "sa.key": pki.private_key_pem(signer),
            "sa.pub": pki.public_key_pem(signer),
            "front-proxy-ca.crt": front_proxy_ca.cert_pem,
            "front-proxy-client.crt": front_proxy.cert_pem,
            "front-proxy-client.key": front_proxy.key_pem,
        }
        for name, data in files.items():
            path = pki_dir / name
            path.write_bytes(data)
            path.chmod(0o600)
        admin = ca.issue_client("securekeys-admin", ["system:masters"])
        kubeconfig.write(
            workdir / "kubeconfig",
            kubeconfig.build(
                server=self.server,
                ca_pem=ca.cert_pem,
                user="securekeys-admin",
                cert_pem=admin.cert_pem,
                key_pem=admin.key_pem,
            ),
        )
        kcm = ca.issue_client("system:kube-controller-manager")
        kubeconfig.write(
            workdir / "controller-manager.kubeconfig",
            kubeconfig.build(
                server=self.server,
                ca_pem=ca.cert_pem,
                user="system:kube-controller-manager",
                cert_pem=kcm.cert_pem,
                key_pem=kcm.key_pem,
            ),
        )

    def _write_node_pki(self, workdir: Path) -> node_mod.NodeCredentials:
        """The kubelet's identity and serving cert, the API server's kubelet client cert,
        and the scheduler's kubeconfig (user system:kube-scheduler)."""
        ca = self._require_ca()
        pki_dir = workdir / "pki"
        address = node_mod.NODE_NAME if self.network is None else self.network.node_address
        certs = pki.issue_node_certificates(ca, node_mod.NODE_NAME, address)
        files = {
            "kubelet.crt": certs.kubelet_serving.cert_pem,
            "kubelet.key": certs.kubelet_serving.key_pem,
            "apiserver-kubelet-client.crt": certs.apiserver_kubelet_client.cert_pem,
            "apiserver-kubelet-client.key": certs.apiserver_kubelet_client.key_pem,
        }
        for name, data in files.items():
            path = pki_dir / name
            path.write_bytes(data)
            path.chmod(0o600)
        kubelet_user = f"system:node:{node_mod.NODE_NAME}"
        kubelet_kubeconfig = kubeconfig.write(
            workdir / "kubelet.kubeconfig",
            kubeconfig.build(
                server=self.node_server,
                ca_pem=ca.cert_pem,
                user=kubelet_user,
                cert_pem=certs.kubelet_client.cert_pem,
                key_pem=certs.kubelet_client.key_pem,
            ),
        )
        scheduler = ca.issue_client("system:kube-scheduler")
        scheduler_kubeconfig = kubeconfig.write(
            workdir / "scheduler.kubeconfig",
            kubeconfig.build(
                server=self.server,
                ca_pem=ca.cert_pem,
                user="system:kube-scheduler",
                cert_pem=scheduler.cert_pem,
                key_pem=scheduler.key_pem,
            ),
        )
        inside: dict[str, Path] = {}
        if self.network is not None:
            for key, user in (("kube_proxy", KUBE_PROXY_USER), ("coredns", COREDNS_USER)):
                pair = ca.issue_client(user)
                inside[f"{key}_kubeconfig"] = kubeconfig.write(
                    workdir / f"{key.replace('_', '-')}.kubeconfig",
                    kubeconfig.build(
                        server=self.node_server,
                        ca_pem=ca.cert_pem,
                        user=user,
                        cert_pem=pair.cert_pem,
                        key_pem=pair.key_pem,
                    ),
                )
        return node_mod.NodeCredentials(
            ca_cert=pki_dir / "ca.crt",
            kubelet_kubeconfig=kubelet_kubeconfig,
            kubelet_cert=pki_dir / "kubelet.crt",
            kubelet_key=pki_dir / "kubelet.key",
            scheduler_kubeconfig=scheduler_kubeconfig,
            **inside,
        )

    def _apiserver_network_flags(self) -> list[str]:
        """Front proxy always; with a pod network the advertised address is the node end
        of the forwarder (the `kubernetes` Service's endpoint) and the API server dials
        Services' endpoint addresses (routed into the node's namespace)."""
        pki_dir = self.workdir / "pki"
        flags = [
            f"--requestheader-client-ca-file={pki_dir / 'front-proxy-ca.crt'}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki_dir / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki_dir / 'front-proxy-client.key'}",
            f"--service-cluster-ip-range={self.service_cidr}",
        ]
        if self.network is None:
            return [
                *flags,
                "--advertise-address=127.0.0.1",
                # Loopback may not be published as the kubernetes Service endpoint.
                "--endpoint-reconciler-type=none",
            ]
        return [
            *flags,
            f"--advertise-address={self.network.node_address}",
            "--enable-aggregator-routing=true",
        ]

    def _apiserver_node_flags(self) -> list[str]:
        pki_dir = self.workdir / "pki"
        if self.node is None:
            return ["--authorization-mode=RBAC"]
        return [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki_dir / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _spawn(self, name: str, argv: Sequence[str]) -> _Component:
        log_path = self.workdir / "logs" / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(  # noqa: S603 - argv is built here from our own paths
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )
        component = _Component(name, process, log_path, log)
        self._components.append(component)
        return component

    def _launch(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        ports = self.ports
        pki_dir = self.workdir / "pki"
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=securekeys",
                f"--data-dir={self.etcd_data_dir}",
                f"--listen-client-urls={self.etcd_endpoint}",
                f"--advertise-client-urls={self.etcd_endpoint}",
                f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
                f"--initial-cluster=securekeys=http://127.0.0.1:{ports.etcd_peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, deadline, lambda: self._etcd_healthy())
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_endpoint}",
                "--bind-address=127.0.0.1",
                *self._apiserver_network_flags(),
                f"--secure-port={ports.apiserver}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
                f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
                f"--client-ca-file={pki_dir / 'ca.crt'}",
                *self._apiserver_node_flags(),
                f"--service-account-issuer=https://127.0.0.1:{ports.apiserver}",
                f"--service-account-key-file={pki_dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(apiserver, deadline, lambda: self._api_get("/readyz") == (200, b"ok"))
        manager = self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.controller_manager}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--controllers={','.join(self._controllers())}",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki_dir / 'ca.crt'}",
                f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(
            manager,
            deadline,
            lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        )
        if self.network is not None:
            self._apply_cluster_dns(self.network)
        if self.node is not None:
            try:
                self.node.start(self._spawn, self._wait, self._api_get, deadline)
            except node_mod.NodeError as exc:
                raise StartupFailed(f"the node did not start: {exc}") from exc

    def _controllers(self) -> tuple[str, ...]:
        # Both, as on any cluster: kube-proxy and CoreDNS read EndpointSlices, and the API
        # server's aggregator routing reads Endpoints before Kubernetes 1.33.
        network = (
            ("endpoints-controller", "endpointslice-controller") if self.network is not None else ()
        )
        return CONTROLLERS + (NODE_CONTROLLERS if self.node is not None else ()) + network

    def _apply_cluster_dns(self, network: podnet.PodNetwork) -> None:
        """CoreDNS's read access, and the `kube-dns` Service in front of it (it runs in the
        node's namespace, on the node's address)."""
        role = "securekeys:coredns"
        self._api_create(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
        )
        self._api_create(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
                ],
            },
        )
        self._apply_service(
            "kube-system",
            "kube-dns",
            network.node_address,
            [("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP")],
            cluster_ip=network.dns_service_ip,
        )

    def _wait(self, component: _Component, deadline: float, ready: Callable[[], bool]) -> None:
        delay = 0.02
        while True:
            code = component.process.poll()
            if code is not None:
                raise StartupFailed(
                    f"{component.name} exited with status {code} during startup "
                    f"(log {component.log_path}):\n{component.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise StartupFailed(
                    f"{component.name} not ready after {self.startup_timeout:.0f} s "
                    f"(log {component.log_path}):\n{component.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _etcd_healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.ports.etcd_client, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            body: dict[str, Any] = json.loads(response.read() or b"{}")
        finally:
            connection.close()
        return response.status == 200 and body.get("health") == "true"

    def _admin_tls(self) -> ssl.SSLContext:
        if self._tls is not None:
            return self._tls
        pki_dir = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        admin_dir = self.workdir / "admin-cert"
        if not admin_dir.exists():
            admin_dir.mkdir(mode=0o700)
            pair = self._require_ca().issue_client("securekeys-probe", ["system:masters"])
            (admin_dir / "tls.crt").write_bytes(pair.cert_pem)
            (admin_dir / "tls.key").write_bytes(pair.key_pem)
        context.load_cert_chain(admin_dir / "tls.crt", admin_dir / "tls.key")
        self._tls = context
        return context

    def _api_create(self, path: str, document: dict[str, Any]) -> None:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.ports.apiserver, context=self._admin_tls(), timeout=10
        )
        try:
            body = json.dumps(document).encode()
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        if response.status not in (200, 201):
            raise StartupFailed(f"POST {path} answered {response.status}: {answer[:300]!r}")

    def _api_get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.ports.apiserver, context=self._admin_tls(), timeout=5
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
