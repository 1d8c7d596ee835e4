"""A KMS key that cannot be used: back off, say so, recover alone, spare other keys.

The controller is configured with two local keys. The password file of ``flaky`` is
missing at first (as when a mounted Secret is not there yet), so building that provider
fails; nothing is mocked. ApiKeys on the default key must be unaffected, the ApiKey on
``flaky`` must report KmsUnavailable, and once the file appears it must become Ready
with no further action.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys_dev.localkms import add_local_key, write_kms_config
from secure_keys_dev.stack import (
    ControllerProcess,
    condition,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
    wait_event_reasons,
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
        wait_event_reasons(admin_api, ns, "on-flaky", {"KmsUnavailable"}, type_="Warning")
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


def test_an_unavailable_default_key_is_reported_on_the_apikeys_it_blocks(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Hardening item 8: the controller's own keys (under the default KMS key) cannot be
    opened at start-up. Before, that showed only in the log; now each ApiKey whose next
    step needs them says so, and all recover once the key is usable."""
    kubeconfig, default_config = controller_setup
    base = json.loads(default_config.read_text())
    [default] = [k for k in base["keys"] if k["keyId"] == base["default"]["keyId"]]
    real_password = Path(default["options"]["passwordFile"])
    missing = tmp_path / "default.password"  # not mounted yet
    _, other = add_local_key(default_config, tmp_path / "other", "other", iterations=MIN_ITERATIONS)
    config = write_kms_config(
        tmp_path / "kms.json",
        [
            (default["keyId"], Path(default["options"]["keyringPath"]), missing),
            (other.key_id, other.keyring, other.password_file),
        ],
        default=default["keyId"],
    )
    ns = private_namespace
    with ControllerProcess(kubeconfig, config, tmp_path / "log", namespaces=ns) as controller:
        create_apikey(
            admin_api,
            ns,
            "on-other",
            {"source": {"generate": {}}, "kms": {"provider": "local", "keyId": "other"}},
        )

        def reported() -> dict[str, Any] | None:
            obj = get_apikey(admin_api, ns, "on-other")
            ready = condition(obj, "Ready")
            return obj if ready and ready["reason"] == "ControllerKeysUnavailable" else None

        eventually(reported, 30, "ControllerKeysUnavailable on on-other")
        wait_event_reasons(admin_api, ns, "on-other", {"ControllerKeysUnavailable"})

        missing.write_bytes(real_password.read_bytes())  # the Secret is mounted at last
        missing.chmod(0o600)
        eventually(
            lambda: is_ready(get_apikey(admin_api, ns, "on-other")), 60, "on-other to recover"
        )
    assert real_password.read_text() not in controller.log()
