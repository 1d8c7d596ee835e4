"""A crash at any point of a rotation loses nothing and leaves exactly one Active version.

For each failpoint of a rotation (``secure_keys.controller.failpoints.CRASH_POINTS``)
the controller runs in a subprocess with that failpoint armed: it exits on the spot with
``os._exit`` (no ``finally``, no flush), as a SIGKILL or OOM kill would. A fresh
controller is then started, and must converge to: exactly one Active version, every
version accounted for, no blob without a live record, and every live blob opening to the
plaintext its recorded fingerprint names. A watch records every state of the ApiKey the
API server stored meanwhile; none may have two Active versions.

These namespaces are ``crash-*``, which the session's controller does not watch.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import open_keys
from secure_keys.controller.failpoints import CRASH_EXIT_STATUS, CRASH_POINTS
from secure_keys.controller.models import KmsRef
from secure_keys.controller.reconciler import blob_secret_name
from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.memory import zero
from secure_keys.kube.names import KEYS_SECRET
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    create_apikey,
    eventually,
    get_apikey,
    request_rotation,
)

NAME = "crashy"


class StatusRecorder:
    """Every stored state of one ApiKey, from a watch, in order."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.states: list[list[dict[str, Any]]] = []
        self._watch = watch.Watch()
        self._api = api
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stopped = False
        self.error: Exception | None = None

    def _run(self) -> None:
        try:
            self._stream()
        except Exception as exc:  # reported by __exit__ unless we stopped the watch
            if not self._stopped:
                self.error = exc

    def _stream(self) -> None:
        custom = client.CustomObjectsApi(self._api)
        for event in self._watch.stream(
            custom.list_namespaced_custom_object,
            "securekeys.io",
            "v1alpha1",
            self._namespace,
            "apikeys",
            timeout_seconds=300,
        ):
            versions = (event["object"].get("status") or {}).get("versions") or []
            self.states.append(versions)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self._watch.stop()
        self._thread.join(5)
        assert self.error is None, f"the status watch failed: {self.error!r}"


def _live_plaintext_matches(
    admin_api: client.ApiClient, namespace: str, kms_config: Path, status: dict[str, Any]
) -> None:
    """Every live version's blob opens, and to the plaintext its fingerprint names."""
    kms = KmsDirectory(KmsSettings.load(kms_config))
    core = client.CoreV1Api(admin_api)
    keys_secret = core.read_namespaced_secret(KEYS_SECRET, CONTROLLER_NAMESPACE)
    keys = open_keys(CONTROLLER_NAMESPACE, dict(keys_secret.data), kms.default())
    blobs = core.read_namespaced_secret(blob_secret_name(NAME), namespace).data or {}
    uid = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", NAME
    )["metadata"]["uid"]
    try:
        for record in status["versions"]:
            if record["state"] == "Destroyed":
                continue
            provider = kms.provider(
                KmsRef.model_validate(
                    {"provider": record["kmsProvider"], "keyId": record["kmsKeyId"]}
                )
            )
            blob = base64.b64decode(blobs[f"v{record['version']}"])
            binding = KeyBinding(namespace, NAME, record["version"])
            plaintext = envelope.open(blob, binding, provider)
            try:
                mark = fingerprint(
                    keys.fingerprint_key, plaintext, namespace=namespace, name=NAME, uid=uid
                )
                assert mark == record["fingerprint"]
            finally:
                zero(plaintext)
    finally:
        keys.close()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_rotation_loses_nothing(
    point: str,
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    kubeconfig, kms_config = controller_setup
    log = tmp_path / "controller.log"

    def controller(failpoints: str = "") -> ControllerProcess:
        return ControllerProcess(
            kubeconfig, kms_config, log, namespaces=private_namespace, failpoints=failpoints
        )

    with StatusRecorder(admin_api, private_namespace) as recorder:
        # Version 1, sealed by a healthy controller.
        with controller():
            create_apikey(
                admin_api,
                private_namespace,
                NAME,
                {"source": {"generate": {}}, "rotation": {"retain": 1, "gracePeriod": "1s"}},
            )
            first = eventually(
                lambda: (
                    (get_apikey(admin_api, private_namespace, NAME).get("status") or {}).get(
                        "currentVersion"
                    )
                    == 1
                ),
                what="version 1",
            )
            assert first
        v1 = get_apikey(admin_api, private_namespace, NAME)["status"]["versions"][0]

        # A rotation, by a controller that dies at `point`.
        crashing = controller(failpoints=point).start()
        request_rotation(admin_api, private_namespace, NAME)
        assert crashing.wait_exit(60) == CRASH_EXIT_STATUS, crashing.log()[-3000:]

        # A fresh controller finishes the job.
        with controller():

            def converged() -> dict[str, Any] | None:
                status = get_apikey(admin_api, private_namespace, NAME).get("status") or {}
                states = {v["version"]: v["state"] for v in status.get("versions") or []}
                blobs = client.CoreV1Api(admin_api).read_namespaced_secret(
                    blob_secret_name(NAME), private_namespace
                )
                # Status marks v1 Destroyed first; its blob goes in the next write.
                if states == {1: "Destroyed", 2: "Active"} and set(blobs.data or {}) == {"v2"}:
                    return status
                return None

            status = eventually(converged, 60, "v2 Active, v1 Destroyed and its blob gone")
            assert status["currentVersion"] == 2
            [old] = [v for v in status["versions"] if v["version"] == 1]
            assert old["fingerprint"] == v1["fingerprint"]
            assert old["activatedAt"] == v1["activatedAt"]
            _live_plaintext_matches(admin_api, private_namespace, kms_config, status)

    assert recorder.states, "the watch saw nothing"
    for versions in recorder.states:
        active = [v["version"] for v in versions if v["state"] == "Active"]
        assert len(active) <= 1, f"two Active versions were stored: {versions}"
    # Every stored state after the first seal had exactly one Active version.
    sealed = [s for s in recorder.states if any(v["state"] == "Active" for v in s)]
    first_sealed = recorder.states.index(sealed[0])
    assert all(sum(v["state"] == "Active" for v in s) == 1 for s in recorder.states[first_sealed:])
