"""A KMS key that cannot be used: back off, say so, recover alone, spare other keys.

The controller is configured with two local keys. The password file of ``flaky`` is
missing at first (as when a mounted Secret is not there yet), so building that provider
fails; nothing is mocked. ApiKeys on the default key must be unaffected, the ApiKey on
``flaky`` must report KmsUnavailable, and once the file appears it must become Ready
with no further action.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys_dev.localkms import add_local_key
from secure_keys_dev.stack import (
    ControllerProcess,
    condition,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
)


def test_unavailable_kms_key_backs_off_and_recovers(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    kubeconfig, default_config = controller_setup
    config, flaky = add_local_key(
        default_config, tmp_path / "flaky", "flaky", iterations=MIN_ITERATIONS
    )
    password = flaky.password_file
    hidden = password.rename(tmp_path / "password.elsewhere")
    ns = private_namespace
    with ControllerProcess(kubeconfig, config, tmp_path / "log", namespaces=ns) as controller:
        create_apikey(
            admin_api,
            ns,
            "on-flaky",
            {"source": {"generate": {}}, "kms": {"provider": "local", "keyId": "flaky"}},
        )
        create_apikey(admin_api, ns, "on-default", {"source": {"generate": {}}})

        def flaky_reported() -> dict[str, Any] | None:
            obj = get_apikey(admin_api, ns, "on-flaky")
            ready = condition(obj, "Ready")
            return obj if ready and ready["reason"] == "KmsUnavailable" else None

        obj = eventually(flaky_reported, 30, "KmsUnavailable on on-flaky")
        message = condition(obj, "Ready")["message"]  # type: ignore[index]
        assert "flaky.password" in message  # names the missing file...
        eventually(lambda: is_ready(get_apikey(admin_api, ns, "on-default")), what="on-default")
        events = client.CoreV1Api(admin_api).list_namespaced_event(
            ns, field_selector="involvedObject.name=on-flaky"
        )
        assert [e for e in events.items if e.reason == "KmsUnavailable" and e.type == "Warning"]
        # Backoff, not a hot loop: a handful of attempts, not hundreds.
        attempts = controller.log().count('"reason": "KmsUnavailable"')
        assert 1 <= attempts <= 10, attempts

        hidden.rename(password)  # the Secret is mounted at last
        eventually(
            lambda: is_ready(get_apikey(admin_api, ns, "on-flaky")), 60, "on-flaky to recover"
        )
        obj = get_apikey(admin_api, ns, "on-flaky")
        assert obj["status"]["versions"][0]["kmsKeyId"] == "flaky"
    assert password.read_text() not in controller.log()  # ...never its contents
