"""KEK rotation: every live DEK moves to the new KEK version; no ciphertext changes.

The ApiKey's local keyring gets a second KEK version (a new password, a fresh salt) and
the controller is restarted. It must rewrap each live version's DEK, keep each blob's
nonce and ciphertext byte for byte, record the new key version in status, and leave
blobs that open with the new password alone (the old KEK is no longer needed).
Namespaces are ``crash-*``, which the session's controller does not watch.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys.controller.reconciler import blob_secret_name
from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.kms.local import LocalKeyring, LocalKms
from secure_keys.core.memory import zero
from secure_keys_dev.cluster import free_port
from secure_keys_dev.localkms import add_local_key
from secure_keys_dev.stack import (
    ControllerProcess,
    create_apikey,
    eventually,
    get_apikey,
    request_rotation,
    wait_event_reasons,
)

NAME = "wrapped"


def _blobs(api: client.ApiClient, namespace: str) -> dict[str, envelope.Envelope]:
    data = client.CoreV1Api(api).read_namespaced_secret(blob_secret_name(NAME), namespace).data
    return {k: envelope.Envelope.from_bytes(base64.b64decode(v)) for k, v in data.items()}


def _versions(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return list((get_apikey(api, namespace, NAME).get("status") or {}).get("versions") or [])


def test_kek_rotation_rewraps_every_live_dek(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    kubeconfig, default_config = controller_setup
    config, rotating = add_local_key(
        default_config, tmp_path / "kek", "rotating", iterations=MIN_ITERATIONS
    )
    keyring_path, password_path = rotating.keyring, rotating.password_file
    ns = private_namespace

    def controller() -> ControllerProcess:
        return ControllerProcess(
            kubeconfig, config, tmp_path / "log", namespaces=ns, metrics_port=free_port()
        )

    with controller():
        create_apikey(
            admin_api,
            ns,
            NAME,
            {"source": {"generate": {}}, "kms": {"provider": "local", "keyId": "rotating"}},
        )
        eventually(lambda: [v["state"] for v in _versions(admin_api, ns)] == ["Active"])
        request_rotation(admin_api, ns, NAME)
        eventually(lambda: [v["state"] for v in _versions(admin_api, ns)] == ["Archived", "Active"])
    before = _blobs(admin_api, ns)
    old_records = _versions(admin_api, ns)
    assert {v["kmsKeyVersion"] for v in old_records} == {"1"}

    # Rotate the KEK: a second version with a new password; old passwords stay listed.
    new_password = secrets.token_hex(16)
    keyring = LocalKeyring.from_json(keyring_path.read_text())
    keyring = keyring.with_new_version(new_password, iterations=MIN_ITERATIONS)
    keyring_path.write_text(keyring.to_json())
    password_path.write_text(new_password + "\n" + password_path.read_text())

    with controller() as restarted:
        eventually(
            lambda: {v["kmsKeyVersion"] for v in _versions(admin_api, ns)} == {"2"},
            what="every live version on KEK version 2",
        )
        assert restarted.metrics()["securekeys_versions_rewrapped_total"] == 2
    after = _blobs(admin_api, ns)
    assert set(after) == set(before) == {"v1", "v2"}
    for key in before:
        assert after[key].nonce == before[key].nonce
        assert after[key].ciphertext == before[key].ciphertext  # the sealed data never moved
        assert after[key].wrapped.key_version == "2"
        assert after[key].wrapped.ciphertext != before[key].wrapped.ciphertext
    new_records = _versions(admin_api, ns)
    assert [v["fingerprint"] for v in new_records] == [v["fingerprint"] for v in old_records]
    wait_event_reasons(admin_api, ns, NAME, {"Rewrapped"})

    # The new password alone opens every live version: KEK version 1 is no longer needed.
    only_new = LocalKms.unlock(keyring, [new_password])
    for key, sealed in after.items():
        version = int(key[1:])
        plaintext = envelope.open(sealed, KeyBinding(ns, NAME, version), only_new)
        assert plaintext
        zero(plaintext)
