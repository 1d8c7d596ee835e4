"""The local cluster's pod network: pods on their own addresses, Services, cluster DNS,
the `kubernetes` Service, and the API server calling webhooks and aggregated APIs
through Services.

Everything is real: pods on the kubelet, kube-proxy's iptables rules in the node's
network namespace, CoreDNS answering from the API server, the API server dialing
pod addresses. The tests run on the session's cluster, which has a pod network unless
SECUREKEYS_E2E_POD_NETWORK=0 (then the module starts one of its own), and start a
second one for the test that two clusters on one machine leave each other alone.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev import access, image, podnet
from secure_keys_dev.cluster import LocalCluster
from secure_keys_dev.node import NodeUnavailable
from tests.e2e.conftest import Target

IDLE = 'trap "exit 0" TERM; while true; do sleep 1; done'
BUSYBOX = image.BUSYBOX_REFERENCE
PROJECT = "secure-keys:dev"
GROUP = "echo.securekeys.io"

# Runs in the project image (it has python3): a TLS server that refuses every
# admission request it is sent, and serves the discovery document of GROUP/v1,
# echoing the user the front proxy vouches for when its client certificate
# verifies against the front-proxy CA.
ECHO_SERVER = f"""
import http.server, json, ssl
class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.answer(200, {{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {{"uid": review["request"]["uid"], "allowed": False,
                "status": {{"code": 403, "message": "refused by the pod webhook"}}}}}})
    def do_GET(self):
        peer = self.connection.getpeercert() or {{}}
        names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
        user = self.headers.get("X-Remote-User", "") if names == ["front-proxy-client"] else ""
        if self.path.split("?")[0].rstrip("/") == "/apis/{GROUP}/v1":
            self.answer(200, {{"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "{GROUP}/v1", "resources": []}}, [("X-Echo-User", user)])
        else:
            self.answer(404, {{}})
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
context.load_verify_locations("/tls/front-proxy-ca.crt")
context.verify_mode = ssl.CERT_OPTIONAL
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

# Runs in the project image: in-cluster configuration only (the kubelet's environment
# and the mounted ServiceAccount token), asking the API server who the pod is.
WHOAMI = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
request = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}',
    headers={"Content-Type": "application/json",
             "Authorization": "Bearer " + open(sa + "/token").read().strip()},
)
context = ssl.create_default_context(cafile=sa + "/ca.crt")
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print(host, json.load(response)["status"]["userInfo"]["username"])
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Network:
    """A cluster with a pod network, an admin client, and a namespace of the test's."""

    cluster: LocalCluster
    api: client.ApiClient
    namespace: str
    first_pod_running: float

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def pod(self, name: str, script: str, *, image_name: str = BUSYBOX, **spec: Any) -> None:
        """A pod running ``script``: a shell script, or Python in the project image."""
        command = ["/bin/sh", "-c", script] if image_name == BUSYBOX else ["python3", "-c", script]
        manifest = {
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
                        **spec.pop("container", {}),
                    }
                ],
                **spec,
            },
        }
        self.core.create_namespaced_pod(self.namespace, manifest)

    def running(self, name: str) -> client.V1Pod:
        def check() -> client.V1Pod | None:
            pod = self.core.read_namespaced_pod(name, self.namespace)
            return pod if pod.status.phase == "Running" and pod.status.pod_ip else None

        pod: client.V1Pod = wait_for(f"pod {name} to run", check)
        return pod

    def output(self, name: str, script: str, **spec: Any) -> str:
        """Run ``script`` in a pod to completion; its log (it must succeed)."""
        self.pod(name, script, restartPolicy="Never", **spec)

        def finished() -> str | None:
            phase = self.core.read_namespaced_pod(name, self.namespace).status.phase
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(f"pod {name} to finish", finished)
        raw = self.core.read_namespaced_pod_log(name, self.namespace, _preload_content=False)
        log: str = raw.data.decode()
        assert phase == "Succeeded", log
        return log

    def service(self, name: str, port: int, target: int) -> client.V1Service:
        service: client.V1Service = self.core.create_namespaced_service(
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {
                    "selector": {"app": name},
                    "ports": [{"port": port, "targetPort": target}],
                },
            },
        )
        return service


def _start(kube: Target) -> LocalCluster:
    """A cluster with a pod network; skips (fails under CI) when this machine has no
    kube-proxy, CoreDNS, iptables or CNI plugins, naming what is missing."""
    assert kube.cluster is not None
    try:
        cluster = LocalCluster(
            binaries=kube.cluster.binaries,
            pod_network=True,
            startup_timeout=180,
            **kube.node_settings,
        )
    except NodeUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    return cluster.start()


@pytest.fixture(scope="module")
def network(kube: Target) -> Iterator[Network]:
    if kube.cluster is None or kube.cluster.node is None:
        pytest.skip(kube.no_pods_because or "checks the local cluster's own pod network")
    own = kube.cluster.network is None
    cluster = _start(kube) if own else kube.cluster
    try:
        with access.api_client(cluster.kubeconfig) as api:
            core = client.CoreV1Api(api)
            namespace = f"e2e-net-{secrets.token_hex(4)}"
            core.create_namespace({"metadata": {"name": namespace}})
            wait_for(
                "the default ServiceAccount",
                lambda: any(
                    s.metadata.name == "default"
                    for s in core.list_namespaced_service_account(namespace).items
                ),
            )
            net = Network(cluster, api, namespace, 0.0)
            began = time.monotonic()
            net.pod("first", IDLE)
            net.running("first")
            net.first_pod_running = time.monotonic() - began
            assert cluster.node is not None
            print(
                f"\npod network: node Ready in {cluster.node.ready_in:.1f} s (kubelet to Ready "
                f"{cluster.node.kubelet_ready_in:.1f} s), first pod Running in "
                f"{net.first_pod_running:.1f} s, RSS {cluster.node.rss_kib()} KiB"
            )
            yield net
            if not own:
                core.delete_namespace(namespace)
    finally:
        if own:
            cluster.stop()


def test_a_pod_gets_an_address_of_the_pod_cidr_and_another_pod_reaches_it(
    network: Network,
) -> None:
    assert network.cluster.network is not None
    pods_cidr = network.cluster.network.pods
    network.pod(
        "web", "mkdir /www && echo hello-from-web > /www/index.html && httpd -f -p 8080 -h /www"
    )
    web = network.running("web")
    first = network.running("first")
    addresses = {web.status.pod_ip, first.status.pod_ip}
    assert len(addresses) == 2
    assert all(ipaddress.ip_address(a) in pods_cidr for a in addresses)
    assert web.status.host_ip == network.cluster.network.node_address
    assert not web.spec.host_network
    # busybox's static wget crashes in its resolver even for an address: nc speaks HTTP.
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    log = network.output("client", f"{request} | nc -w 5 {web.status.pod_ip} 8080")
    assert log.splitlines()[0].startswith("HTTP/1.1 200")
    assert log.strip().endswith("hello-from-web")


def test_a_pod_reaches_a_clusterip_service_by_its_dns_name(network: Network) -> None:
    network.pod(
        "named", "mkdir /www && echo hello-by-name > /www/index.html && httpd -f -p 8080 -h /www"
    )
    network.running("named")
    service = network.service("named", 80, 8080)
    assert network.cluster.network is not None
    assert ipaddress.ip_address(service.spec.cluster_ip) in network.cluster.network.services
    name = f"named.{network.namespace}.svc"
    # The project image's Python: glibc's resolver, with the search path the kubelet wrote.
    script = (
        "import socket, urllib.request\n"
        f"print(socket.gethostbyname('{name}.cluster.local'))\n"
        f"for url in ('http://{name}/', 'http://named/'):\n"
        "    print(urllib.request.urlopen(url, timeout=5).read().decode().strip())\n"
    )
    log = network.output("by-name", script, image_name=PROJECT)
    assert log.split() == [service.spec.cluster_ip, "hello-by-name", "hello-by-name"]


def test_names_outside_the_cluster_fail_and_the_node_has_no_way_off_the_machine(
    network: Network,
) -> None:
    log = network.output(
        "outside", "if nslookup example.com; then echo resolved; else echo refused; fi"
    )
    assert log.strip().endswith("refused")
    # Read-only, inside the node's own namespace: no default route, so no pod packet can
    # be routed off the machine.
    node = network.cluster.node
    assert node is not None
    assert node.containerd is not None
    namespace = f"--net=/proc/{node.containerd.process.pid}/ns/net"
    routes = subprocess.run(  # noqa: S603 - util-linux and iproute2, a read-only listing
        ["nsenter", namespace, "ip", "-4", "route"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "default" not in routes
    assert network.cluster.network is not None
    assert str(network.cluster.network.pods) in routes


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service_with_its_token(
    network: Network,
) -> None:
    assert network.cluster.network is not None
    log = network.output("whoami", WHOAMI, image_name=PROJECT)
    host, user = log.split()
    assert host == network.cluster.network.kubernetes_service_ip
    assert user == f"system:serviceaccount:{network.namespace}:default"


@pytest.fixture(scope="module")
def echo_server(network: Network) -> str:
    """The echo server as a pod behind the Service `echo` (port 443); its name."""
    cluster, ns = network.cluster, network.namespace
    assert cluster.ca is not None
    pair = cluster.ca.issue_server("echo", ips=(), dns_names=(f"echo.{ns}.svc",))
    front_proxy_ca = network.core.read_namespaced_config_map(
        "extension-apiserver-authentication", "kube-system"
    ).data["requestheader-client-ca-file"]
    network.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "echo-tls"},
            "stringData": {
                "tls.crt": pair.cert_pem.decode(),
                "tls.key": pair.key_pem.decode(),
                "front-proxy-ca.crt": front_proxy_ca,
            },
        },
    )
    network.pod(
        "echo",
        ECHO_SERVER,
        image_name=PROJECT,
        container={
            "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": True}],
            "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1},
        },
        volumes=[{"name": "tls", "secret": {"secretName": "echo-tls"}}],
    )
    network.service("echo", 443, 8443)

    def ready() -> bool:
        pod = network.core.read_namespaced_pod("echo", ns)
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    wait_for("the echo server to be Ready", ready)
    return "echo"


def test_the_api_server_calls_a_webhook_through_its_service(
    network: Network, echo_server: str
) -> None:
    ns = network.namespace
    assert network.cluster.ca is not None
    client.AdmissionregistrationV1Api(network.api).create_validating_webhook_configuration(
        {
            "metadata": {"name": f"echo-{ns}"},
            "webhooks": [
                {
                    "name": "echo.securekeys.io",
                    "clientConfig": {
                        "service": {"namespace": ns, "name": echo_server, "path": "/validate"},
                        "caBundle": base64.b64encode(network.cluster.ca.cert_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                    "objectSelector": {"matchLabels": {"echo": "refuse"}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )

    def refused() -> str | None:
        name = f"probe-{secrets.token_hex(3)}"
        try:
            network.core.create_namespaced_config_map(
                ns, {"metadata": {"name": name, "labels": {"echo": "refuse"}}}
            )
        except ApiException as exc:
            return str(exc.body) if "refused by the pod webhook" in str(exc.body) else None
        network.core.delete_namespaced_config_map(name, ns)  # not registered yet
        return None

    assert "refused by the pod webhook" in wait_for("the webhook to refuse", refused, 30)


def test_an_apiservice_backed_by_a_pod_is_served_through_the_front_proxy(
    network: Network, echo_server: str
) -> None:
    assert network.cluster.ca is not None
    registration = client.ApiregistrationV1Api(network.api)
    registration.create_api_service(
        {
            "metadata": {"name": f"v1.{GROUP}"},
            "spec": {
                "group": GROUP,
                "version": "v1",
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
                "service": {"namespace": network.namespace, "name": echo_server, "port": 443},
                "caBundle": base64.b64encode(network.cluster.ca.cert_pem).decode(),
            },
        }
    )
    try:

        def available() -> bool:
            status = registration.read_api_service(f"v1.{GROUP}").status
            return any(
                c.type == "Available" and c.status == "True" for c in status.conditions or []
            )

        wait_for("the APIService to be Available", available)
        response = network.api.call_api(
            f"/apis/{GROUP}/v1",
            "GET",
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        assert json.loads(response.data)["groupVersion"] == f"{GROUP}/v1"
        # The pod saw the admin's name, vouched for by the front proxy's certificate.
        assert response.headers["X-Echo-User"] == "securekeys-admin"
    finally:
        registration.delete_api_service(f"v1.{GROUP}")


def test_two_clusters_at_once_get_separate_networks_and_leave_each_other_alone(
    kube: Target, network: Network
) -> None:
    first = network.cluster.network
    assert first is not None
    second = _start(kube)
    try:
        assert second.network is not None
        second_link = second.network.host_link
        assert not second.network.block.overlaps(first.block)
        with access.api_client(second.kubeconfig) as api:
            other = Network(second, api, "default", 0.0)
            wait_for(
                "the default ServiceAccount",
                lambda: other.core.list_namespaced_service_account("default").items,
            )
            other.pod("other", "mkdir /www && echo second > /www/index.html && httpd -f -h /www")
            pod = other.running("other")
            assert ipaddress.ip_address(pod.status.pod_ip) in second.network.pods
            # Each node routes only its own block: a pod of the first cluster cannot reach
            # one of the second (the attempt fails at once: no route, no default route).
            log = network.output(
                "to-second",
                f"if nc -w 2 {pod.status.pod_ip} 80 </dev/null; then echo reached; "
                "else echo unreachable; fi",
            )
            assert log.strip().endswith("unreachable"), log
            # While both run, each one's pods resolve their own cluster's names.
            for each, name in ((network, "dns-first"), (other, "dns-second")):
                assert each.cluster.network is not None
                log = each.output(name, "nslookup kubernetes.default.svc.cluster.local")
                assert each.cluster.network.kubernetes_service_ip in log, log
    finally:
        second.stop()
    # The second one's stop removed only its own host state, and the first cluster's
    # pods, Services and DNS still work after it is gone.
    assert podnet.link_exists(first.host_link)
    assert not podnet.link_exists(second_link)
    assert first.block in podnet.host_routes()
    log = network.output("after-second", "nslookup kubernetes.default.svc.cluster.local")
    assert first.kubernetes_service_ip in log
