"""Every KMS provider, end to end: a real controller, a real API server, a real KMS server.

Parametrised over the test servers of ``tests/integration/kms/servers`` (``local``,
``aws`` on local-kms, ``gcp`` on the Cloud KMS emulator, ``pkcs11`` on SoftHSM2). For
each, an ApiKey whose ``spec.kms`` names that provider's key:

- becomes Ready and rotates on request;
- survives the KMS server being stopped: a rotation then fails with Ready=False
  KmsUnavailable and a Warning Event, the versions already sealed stay as they are, the
  controller's read of the active version is answered by its DEK cache (no KMS call),
  and once the server is back the rotation completes by itself;
- survives a KEK rotation at the KMS: after a controller restart every live DEK is
  rewrapped onto the new key version, each blob's nonce and ciphertext unchanged.

The ``local`` provider has no server to stop; its server module skips that test, saying
why. Namespaces are ``crash-*`` (``private_namespace``), which the session's controller
does not watch: each test runs controllers of its own.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from secure_keys.controller.reconciler import blob_secret_name
from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.memory import zero
from secure_keys_dev.cluster import free_port
from secure_keys_dev.stack import (
    ControllerProcess,
    condition,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
    request_rotation,
    wait_event_reasons,
)
from tests.integration.kms.harness import PROVIDERS, KmsTestServer, open_server

NAME = "on-kms"


@pytest.fixture(params=PROVIDERS)
def kms_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KmsTestServer]:
    name: str = request.param
    with open_server(name, tmp_path / "server") as server:
        yield server


def _kms_config(default_config: Path, server: KmsTestServer, path: Path) -> Path:
    """The session's config (its local default key) plus the server's ``primary`` key."""
    document = json.loads(default_config.read_text())
    added = server.config("primary")
    document["keys"] = [
        k for k in document["keys"] if (k["provider"], k["keyId"]) != (added.provider, added.key_id)
    ] + [{"provider": added.provider, "keyId": added.key_id, "options": dict(added.options)}]
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _spec(server: KmsTestServer, source: dict[str, Any]) -> dict[str, Any]:
    return {"source": source, "kms": {"provider": server.name, "keyId": server.config().key_id}}


def _versions(api: client.ApiClient, ns: str) -> list[dict[str, Any]]:
    return list((get_apikey(api, ns, NAME).get("status") or {}).get("versions") or [])


def _states(api: client.ApiClient, ns: str) -> list[str]:
    return [v["state"] for v in _versions(api, ns)]


def _blobs(api: client.ApiClient, ns: str) -> dict[str, envelope.Envelope]:
    data = client.CoreV1Api(api).read_namespaced_secret(blob_secret_name(NAME), ns).data
    return {k: envelope.Envelope.from_bytes(base64.b64decode(v)) for k, v in data.items()}


def _cache(controller: ControllerProcess, server: KmsTestServer, result: str) -> float:
    series = f'securekeys_dek_cache_lookups_total{{provider="{server.name}",result="{result}"}}'
    return controller.metrics().get(series, 0.0)


def test_an_apikey_on_each_kms_rotates_and_survives_an_outage(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    kms_server: KmsTestServer,
    tmp_path: Path,
) -> None:
    kubeconfig, default_config = controller_setup
    config = _kms_config(default_config, kms_server, tmp_path / "kms.json")
    ns = private_namespace
    # A Secret source: rotating it re-seals the active plaintext, which the controller
    # reads back (a generated key would mint a new value and read nothing).
    client.CoreV1Api(admin_api).create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="upstream"),
            string_data={"token": "sk-e2e-provider-value"},
        ),
    )
    log = tmp_path / "controller.log"
    with ControllerProcess(
        kubeconfig, config, log, namespaces=ns, metrics_port=free_port()
    ) as controller:
        create_apikey(
            admin_api,
            ns,
            NAME,
            _spec(kms_server, {"secretRef": {"name": "upstream", "key": "token"}}),
        )
        eventually(lambda: is_ready(get_apikey(admin_api, ns, NAME)), 60, "Ready")
        [first] = _versions(admin_api, ns)
        assert first["kmsProvider"] == kms_server.name
        assert first["kmsKeyId"] == kms_server.config().key_id
        assert first["kmsKeyVersion"] == kms_server.provider().key_version()
        request_rotation(admin_api, ns, NAME)
        eventually(lambda: _states(admin_api, ns) == ["Archived", "Active"], 60, "rotated")
        eventually(lambda: is_ready(get_apikey(admin_api, ns, NAME)), 30, "Ready again")
        before = _blobs(admin_api, ns)
        records = _versions(admin_api, ns)

        kms_server.stop()
        try:
            hits, misses = (
                _cache(controller, kms_server, "hit"),
                _cache(controller, kms_server, "miss"),
            )
            request_rotation(admin_api, ns, NAME)

            def unavailable() -> dict[str, Any] | None:
                obj = get_apikey(admin_api, ns, NAME)
                ready = condition(obj, "Ready")
                return obj if ready and ready["reason"] == "KmsUnavailable" else None

            obj = eventually(unavailable, 60, "Ready=False KmsUnavailable")
            message = condition(obj, "Ready")["message"]  # type: ignore[index]
            assert kms_server.config().key_id in message
            wait_event_reasons(admin_api, ns, NAME, {"KmsUnavailable"}, type_="Warning")
            # The versions already sealed are untouched, and still listed as they were.
            assert _versions(admin_api, ns) == records
            assert _blobs(admin_api, ns) == before
            # The rotation read the active version without the KMS: a cache hit, no miss.
            assert _cache(controller, kms_server, "hit") > hits
            assert _cache(controller, kms_server, "miss") == misses
        finally:
            kms_server.start()
        eventually(
            lambda: _states(admin_api, ns) == ["Archived", "Archived", "Active"],
            120,
            "the rotation to finish by itself once the KMS is back",
        )
        eventually(lambda: is_ready(get_apikey(admin_api, ns, NAME)), 30, "Ready after recovery")
    assert "sk-e2e-provider-value" not in controller.log()


def test_kek_rotation_at_each_kms_rewraps_every_live_dek(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    kms_server: KmsTestServer,
    tmp_path: Path,
) -> None:
    kubeconfig, default_config = controller_setup
    config = _kms_config(default_config, kms_server, tmp_path / "kms.json")
    ns = private_namespace

    def controller() -> ControllerProcess:
        return ControllerProcess(
            kubeconfig, config, tmp_path / "controller.log", namespaces=ns, metrics_port=free_port()
        )

    with controller():
        create_apikey(admin_api, ns, NAME, _spec(kms_server, {"generate": {}}))
        eventually(lambda: _states(admin_api, ns) == ["Active"], 60, "sealed")
        request_rotation(admin_api, ns, NAME)
        eventually(lambda: _states(admin_api, ns) == ["Archived", "Active"], 60, "rotated")
    before = _blobs(admin_api, ns)
    old_records = _versions(admin_api, ns)
    old_version = kms_server.provider().key_version()
    assert {v["kmsKeyVersion"] for v in old_records} == {old_version}

    kms_server.rotate()
    new_version = kms_server.provider().key_version()
    assert new_version != old_version

    with controller() as restarted:
        eventually(
            lambda: {v["kmsKeyVersion"] for v in _versions(admin_api, ns)} == {new_version},
            90,
            f"every live version on key version {new_version}",
        )
        assert restarted.metrics()["securekeys_versions_rewrapped_total"] == 2
    after = _blobs(admin_api, ns)
    assert set(after) == set(before) == {"v1", "v2"}
    for key in before:
        assert after[key].nonce == before[key].nonce
        assert after[key].ciphertext == before[key].ciphertext  # the sealed data never moved
        assert after[key].wrapped.key_version == new_version
        assert after[key].wrapped.ciphertext != before[key].wrapped.ciphertext
    assert [v["fingerprint"] for v in _versions(admin_api, ns)] == [
        v["fingerprint"] for v in old_records
    ]
    wait_event_reasons(admin_api, ns, NAME, {"Rewrapped"})
    provider = kms_server.provider()
    for key, sealed in after.items():
        plaintext = envelope.open(sealed, KeyBinding(ns, NAME, int(key[1:])), provider)
        assert plaintext
        zero(plaintext)
