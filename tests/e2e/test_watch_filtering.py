"""The controller's own watches against a real API server: what reaches the process.

* Secrets are selected by the API server (a label selector on the list and the watch), so
  a plain Secret created elsewhere never reaches the controller: not in its counter of
  received objects, and not anywhere in its memory (read through /proc/<pid>/mem).
* The recipient ConfigMap is watched by name and put back when deleted or replaced.
"""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.kube.names import RECIPIENT_CONFIGMAP, RECIPIENT_CONFIGMAP_KEY
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
    request_rotation,
)
from tests.e2e.leaks import canary_forms

_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def _received(controller: ControllerProcess, resource: str, kind: str) -> float:
    wanted = {f'resource="{resource}"', f'kind="{kind}"'}
    for series, value in controller.metrics().items():
        if series.startswith("securekeys_watch_objects_received_total{") and all(
            label in series for label in wanted
        ):
            return value
    return 0.0


def memory_holds(pid: int, needles: list[bytes]) -> list[bytes]:
    """The needles found in any readable mapping of process ``pid`` (root may read them)."""
    found: set[bytes] = set()
    longest = max(len(n) for n in needles)
    with Path(f"/proc/{pid}/maps").open() as maps, Path(f"/proc/{pid}/mem").open("rb", 0) as mem:
        for line in maps:
            match = _MAPPING.match(line.rstrip("\n"))
            if match is None or match[3][0] != "r" or match[4] in ("[vvar]", "[vsyscall]"):
                continue
            start, end = int(match[1], 16), int(match[2], 16)
            tail = b""
            for offset in range(start, end, 1 << 24):
                try:
                    mem.seek(offset)
                    chunk = tail + mem.read(min(1 << 24, end - offset))
                except OSError:
                    break
                found.update(n for n in needles if n in chunk)
                tail = chunk[-longest:]
    return [n for n in needles if n in found]


def _version(api: client.ApiClient, namespace: str, name: str, version: int) -> None:
    def check() -> bool:
        obj = get_apikey(api, namespace, name)
        return is_ready(obj) and (obj.get("status") or {}).get("currentVersion") == version

    eventually(check, 60, f"{name} Ready at version {version}")


def test_a_plain_secret_never_reaches_the_controller(
    controller: ControllerProcess, admin_api: client.ApiClient, namespace: str
) -> None:
    assert controller.process is not None
    canary = f"sk-watch-canary-{secrets.token_hex(16)}"
    labelled = f"sk-watch-labelled-{secrets.token_hex(16)}"
    core = client.CoreV1Api(admin_api)
    # An ApiKey first: once its blob Secret is counted, the Secret watch is running.
    probe = f"probe-{secrets.token_hex(6)}"
    create_apikey(admin_api, namespace, probe, {"source": {"generate": {}}})
    _version(admin_api, namespace, probe, 1)
    eventually(
        lambda: _received(controller, "secrets", "blob") >= 1, 30, "the Secret watch running"
    )
    blob_before = _received(controller, "secrets", "blob")
    other_before = _received(controller, "secrets", "other")

    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="elsewhere", labels={"app": "elsewhere"}),
            data={"token": base64.b64encode(canary.encode()).decode()},
        ),
    )
    # Anyone may put our label on their own Secret; the type selector keeps it out too.
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="labelled", labels={"app.kubernetes.io/managed-by": "secure-keys"}
            ),
            data={"token": base64.b64encode(labelled.encode()).decode()},
        ),
    )
    # A rotation after the plain Secrets: its blob Secret's events come later in the
    # watch, so once they are counted the plain Secrets would have been too.
    request_rotation(admin_api, namespace, probe)
    _version(admin_api, namespace, probe, 2)
    eventually(
        lambda: _received(controller, "secrets", "blob") >= blob_before + 1,
        30,
        "the controller's Secret watch counting the probe's blob Secret",
    )

    assert _received(controller, "secrets", "other") == other_before
    # Positive control: the search sees what the process does hold (the probe's name).
    forms = [*canary_forms(canary), *canary_forms(labelled)]
    found = memory_holds(controller.process.pid, [probe.encode(), *forms])
    assert probe.encode() in found, "the memory search found nothing: it is broken"
    assert [f for f in found if f != probe.encode()] == [], "the canary reached the process"


def _recipient(core: client.CoreV1Api) -> dict[str, str] | None:
    try:
        found = core.read_namespaced_config_map(RECIPIENT_CONFIGMAP, CONTROLLER_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(found.data or {})


def _restored_events(core: client.CoreV1Api) -> int:
    events = core.list_namespaced_event(
        CONTROLLER_NAMESPACE, field_selector=f"involvedObject.name={RECIPIENT_CONFIGMAP}"
    )
    return sum(1 for e in events.items if e.reason == "RecipientRestored")


def test_a_deleted_recipient_configmap_comes_back(
    controller: ControllerProcess, admin_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(admin_api)
    original = eventually(lambda: _recipient(core), 30, "the published recipient")
    events_before = _restored_events(core)
    core.delete_namespaced_config_map(RECIPIENT_CONFIGMAP, CONTROLLER_NAMESPACE)
    eventually(lambda: _recipient(core) == original, 30, "the recipient ConfigMap restored")
    eventually(lambda: _restored_events(core) > events_before, 30, "a RecipientRestored Event")
    eventually(lambda: '"recipient.restored"' in controller.log(), 30, "the restore logged")


def test_a_replaced_recipient_configmap_is_restored(
    controller: ControllerProcess, admin_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(admin_api)
    original = eventually(lambda: _recipient(core), 30, "the published recipient")
    impostor = RecipientPrivateKey.generate().public().to_json()
    assert impostor != original[RECIPIENT_CONFIGMAP_KEY]
    core.patch_namespaced_config_map(
        RECIPIENT_CONFIGMAP,
        CONTROLLER_NAMESPACE,
        {"data": {RECIPIENT_CONFIGMAP_KEY: impostor, "extra": "left by someone"}},
    )
    eventually(lambda: _recipient(core) == original, 30, "the recipient ConfigMap restored")
