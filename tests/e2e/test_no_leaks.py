"""No plaintext anywhere: etcd's raw files, API objects, annotations, Events, logs, argv.

A canary key goes in through `secure-keys seal` (stdin), is applied, opened and sealed by
the controller, and rotated (which opens and re-seals it). Then every place it could
have leaked is searched in raw, hex and base64 form (at every alignment). A positive
control, a plain Secret holding a second canary, proves the etcd search can see what is
there: Kubernetes stores Secrets unencrypted unless encryption at rest is configured.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    eventually,
    get_apikey,
    is_ready,
)
from tests.conftest import CANARY
from tests.e2e.conftest import Target
from tests.e2e.leaks import leaked

CONTROL = "plain-secret-control-6b1e0f47a2"


def _etcd_bytes(kube: Target) -> bytes:
    assert kube.cluster is not None
    chunks = []
    for path in sorted(kube.cluster.etcd_data_dir.rglob("*")):
        if path.is_file():
            chunks.append(path.read_bytes())
    return b"".join(chunks)


def _dump(api: client.ApiClient, namespace: str) -> bytes:
    """Every object of the kinds we touch in a namespace, as the API serves them."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    documents: list[object] = [
        api.sanitize_for_serialization(core.list_namespaced_secret(namespace)),
        api.sanitize_for_serialization(core.list_namespaced_event(namespace)),
        api.sanitize_for_serialization(core.list_namespaced_config_map(namespace)),
        custom.list_namespaced_custom_object("securekeys.io", "v1alpha1", namespace, "apikeys"),
    ]
    return json.dumps(documents).encode()


def test_canary_appears_nowhere(
    kube: Target,
    admin_api: client.ApiClient,
    namespace: str,
    controller: ControllerProcess,
    tmp_path: Path,
) -> None:
    argv = [
        sys.executable,
        "-m",
        "secure_keys.cli",
        f"--kubeconfig={kube.kubeconfig}",
        "seal",
        "canary",
        "-n",
        namespace,
    ]
    sealed = subprocess.run(  # noqa: S603
        argv, input=CANARY.encode(), capture_output=True, check=True
    )
    manifest = yaml.safe_load(sealed.stdout)
    client.CustomObjectsApi(admin_api).create_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", manifest
    )
    eventually(lambda: is_ready(get_apikey(admin_api, namespace, "canary")), what="Ready")
    rotate = subprocess.run(  # noqa: S603
        [*argv[:4], "rotate", "canary", "-n", namespace], capture_output=True, check=True
    )
    eventually(
        lambda: get_apikey(admin_api, namespace, "canary")["status"].get("currentVersion") == 2,
        what="version 2",
    )
    # The positive control for the etcd search.
    client.CoreV1Api(admin_api).create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="control"), string_data={"v": CONTROL}),
    )

    places: dict[str, bytes] = {
        "CLI argv": " ".join(argv).encode(),
        "seal output": sealed.stdout + sealed.stderr,
        "rotate output": rotate.stdout + rotate.stderr,
        "objects in the namespace": _dump(admin_api, namespace),
        "objects in the controller namespace": _dump(admin_api, CONTROLLER_NAMESPACE),
        "controller log": controller.log().encode(),
    }
    if kube.cluster is not None:

        def etcd_with_control() -> bytes | None:
            data = _etcd_bytes(kube)
            return data if CONTROL.encode() in data else None

        etcd = eventually(etcd_with_control, what="the control Secret in etcd's files")
        assert leaked(etcd, CONTROL), "the etcd search cannot see a plain Secret"
        places["etcd data directory (bbolt db and WAL)"] = etcd
    for where, haystack in places.items():
        assert not leaked(haystack, CANARY), f"the canary leaked into the {where}"


@pytest.mark.parametrize("secret", [CANARY])
def test_leak_search_finds_every_encoding(secret: str) -> None:
    """The detector itself: each encoding, embedded at any offset, is found."""
    raw = secret.encode()
    for prefix in (b"", b"x", b"xy", b"xyz"):
        for encoded in (base64.b64encode(prefix + raw), base64.urlsafe_b64encode(prefix + raw)):
            assert leaked(b"..." + encoded + b"...", secret)
    assert leaked(b"[" + raw.hex().encode() + b"]", secret)
    assert leaked(raw, secret)
    assert not leaked(b"nothing to see", secret)
