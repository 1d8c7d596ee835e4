"""`secure-keys seal` on a real API server: a replaced recipient ConfigMap is refused.

The recipient ConfigMap is published in the test's own namespace (passed as
``--controller-namespace``), so replacing it disturbs no other test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from kubernetes import client

from secure_keys.cli.pins import Fingerprint
from secure_keys.core.sealing import RecipientPrivateKey, open_sealed
from tests.conftest import CANARY
from tests.e2e.conftest import Target


def _seal(
    kubeconfig: Path, namespace: str, config_home: Path, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "secure_keys.cli", f"--kubeconfig={kubeconfig}", "seal", "api"]
    return subprocess.run(  # noqa: S603 - our interpreter and module
        [*argv, "-n", namespace, f"--controller-namespace={namespace}", *extra],
        input=CANARY.encode(),
        env=dict(os.environ, XDG_CONFIG_HOME=str(config_home)),
        capture_output=True,
        check=False,
    )


def _publish(api: client.ApiClient, namespace: str, key: RecipientPrivateKey) -> None:
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="secure-keys-recipient"),
        data={"recipient.json": key.public().to_json()},
    )
    core = client.CoreV1Api(api)
    try:
        core.replace_namespaced_config_map("secure-keys-recipient", namespace, body)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_config_map(namespace, body)


def test_a_replaced_recipient_is_refused_until_trusted(
    kube: Target, admin_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    original, replaced = RecipientPrivateKey.generate(), RecipientPrivateKey.generate()
    _publish(admin_api, namespace, original)
    first = _seal(kube.kubeconfig, namespace, tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    assert b"on first use" in first.stderr
    ciphertext = yaml.safe_load(first.stdout)["spec"]["source"]["sealed"]["ciphertext"]
    assert open_sealed(original, ciphertext, namespace=namespace, name="api") == CANARY.encode()

    _publish(admin_api, namespace, replaced)
    refused = _seal(kube.kubeconfig, namespace, tmp_path)
    assert (refused.returncode, refused.stdout) == (2, b"")
    new = str(Fingerprint.of(replaced.public())).encode()
    assert str(Fingerprint.of(original.public())).encode() in refused.stderr
    assert b"--trust-recipient " + new in refused.stderr

    trusted = _seal(kube.kubeconfig, namespace, tmp_path, f"--trust-recipient={new.decode()}")
    assert trusted.returncode == 0, trusted.stderr.decode()
    ciphertext = yaml.safe_load(trusted.stdout)["spec"]["source"]["sealed"]["ciphertext"]
    assert open_sealed(replaced, ciphertext, namespace=namespace, name="api") == CANARY.encode()


def test_a_user_who_may_not_read_the_recipient_gets_the_api_servers_answer(
    kube: Target, namespace: str, tmp_path: Path
) -> None:
    nobody = kube.user_kubeconfig("securekeys-e2e-nobody")
    denied = _seal(nobody, namespace, tmp_path)
    assert denied.returncode == 1
    assert b"the API server said 403 Forbidden" in denied.stderr
    assert b"Traceback" not in denied.stderr
