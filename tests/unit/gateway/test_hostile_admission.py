"""What a hostile pod author sends the webhook, through the real decode and pipeline.

The API server runs mutating webhooks before it validates the object, so the gateway
sees whatever a user with ``create pods`` writes, up to the API server's request limit
(about 3 MiB). Every case here is the worst body of its kind at that size: the answer is
right (refused, or admitted when the input is valid), and its message and log fields stay
short. The cost is not timed here (bench/webhook.py measures ``hostile_ratio``), but a
quadratic step makes these cases run for hours, not seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from secure_keys.gateway.webhook.injection import GatewaySettings
from secure_keys.gateway.webhook.mutate import Outcome, admit
from secure_keys.gateway.webhook.review import decode
from tests.unit.gateway.helpers import NS, Table, body, bound_table, key, pod, review

BIG = 3 * 1024 * 1024
"""About what the API server accepts in one request."""
SHORT = 2048
"""The longest denial message (or logged pod name) any hostile body may produce."""


def _admit(obj: dict[str, Any], table: Table | None = None, **kwargs: Any) -> Outcome:
    request = decode(body(review(obj, **kwargs)))
    return admit(request, table or bound_table(), GatewaySettings(), synced=True)


def _with(annotations: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    return pod(annotations={"securekeys.io/keys": "stripe-live", **annotations}, **kwargs)


def _repeat(unit: str) -> str:
    return unit * (BIG // len(unit))


HOSTILE: dict[str, Callable[[], dict[str, Any]]] = {
    "keys: one name repeated": lambda: _with({"securekeys.io/keys": _repeat("k,")}),
    "keys: one long name": lambda: _with({"securekeys.io/keys": _repeat("a")}),
    "keys: only commas": lambda: _with({"securekeys.io/keys": _repeat(",")}),
    "keys: distinct names": lambda: _with(
        {"securekeys.io/keys": ",".join(f"k{i}" for i in range(BIG // 8))}
    ),
    "keys: 64 names, one repeated, with blanks": lambda: _with(
        {"securekeys.io/keys": ",".join(["stripe-live"] * 64) + " " * (BIG // 2)}
    ),
    "containers: one name repeated": lambda: _with({"securekeys.io/containers": _repeat("c,")}),
    "containers: one long name": lambda: _with({"securekeys.io/containers": _repeat("c")}),
    "mount-path: long": lambda: _with({"securekeys.io/mount-path": "/" + _repeat("a/")[:-1]}),
    "mount-path: dots": lambda: _with({"securekeys.io/mount-path": "/" + _repeat("../")}),
    "volume-size: digits": lambda: _with({"securekeys.io/volume-size": _repeat("9") + "Mi"}),
    "volume-size: fraction": lambda: _with({"securekeys.io/volume-size": "1." + _repeat("1")}),
    "cpu-limit: digits": lambda: _with({"securekeys.io/sidecar-cpu-limit": _repeat("1")}),
    "memory-request: digits": lambda: _with({"securekeys.io/sidecar-memory-request": _repeat("7")}),
    "reload-url: long": lambda: _with(
        {"securekeys.io/reload-url": "http://127.0.0.1:8080/" + _repeat("a")}
    ),
    "reload-url: brackets": lambda: _with({"securekeys.io/reload-url": "http://[" + _repeat(":")}),
    "mode: long": lambda: _with({"securekeys.io/mode": _repeat("native")}),
    "init-first: long": lambda: _with({"securekeys.io/init-first": _repeat("t")}),
    "all-containers-may-read-keys: long": lambda: _with(
        {"securekeys.io/all-containers-may-read-keys": _repeat("true")}
    ),
    "unknown annotations: many": lambda: _with(
        {f"securekeys.io/x{i}": "" for i in range(BIG // 24)}
    ),
    "unknown annotation: long name": lambda: _with({"securekeys.io/" + _repeat("x"): "1"}),
    "service account: long name": lambda: _with({}, service_account=_repeat("s")),
    "containers: many that clash with the mount path": lambda: _with(
        {},
        containers=[
            {
                "name": f"c{i}",
                "volumeMounts": [{"name": "v", "mountPath": "/var/run/secrets/securekeys"}],
            }
            for i in range(BIG // 96)
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_worst_case_body_is_refused_with_a_short_message(case: str) -> None:
    obj = HOSTILE[case]()
    assert len(body(review(obj))) > BIG // 2  # the body is as large as promised
    outcome = _admit(obj)
    assert outcome.outcome == "denied", case
    message = outcome.response.message
    assert message.startswith("secure-keys: ")
    assert len(message) <= SHORT, (case, len(message))
    assert len(outcome.pod) <= 253


def test_a_pod_with_a_three_megabyte_name_is_logged_by_a_prefix() -> None:
    outcome = _admit(_with({}, name=_repeat("n")))
    assert outcome.outcome == "injected"  # the API server refuses the name afterwards
    assert len(outcome.pod) <= 253


def test_a_valid_pod_padded_to_three_megabytes_is_admitted() -> None:
    """Size alone refuses nothing: an unrelated annotation fills the body."""
    obj = _with({})
    obj["metadata"]["annotations"]["example.com/blob"] = _repeat("x")
    outcome = _admit(obj)
    assert outcome.outcome == "injected"


def test_sixty_four_keys_are_the_most_and_a_repeat_is_named_once() -> None:
    table = Table(keys={NS: [key(f"k{i}") for i in range(65)]})
    names = ",".join(f"k{i}" for i in range(65))
    outcome = _admit(_with({"securekeys.io/keys": names}), table)
    assert "names 65 keys; at most 64" in outcome.response.message
    outcome = _admit(_with({"securekeys.io/keys": "k1,k2,k1,k1,k2"}), table)
    assert "names 'k1', 'k2' more than once" in outcome.response.message


def test_a_long_invalid_key_name_is_quoted_by_its_prefix_and_length() -> None:
    name = "A" * 1_000_000
    outcome = _admit(_with({"securekeys.io/keys": f"ok,{name}"}))
    assert outcome.outcome == "denied"
    message = outcome.response.message
    assert "characters long; at most" in message
    assert "A" * 100 not in message
    outcome = _admit(_with({"securekeys.io/keys": "B" * 200}))
    assert f"{'B' * 48!r}... (200 characters) is not a valid ApiKey name" in (
        outcome.response.message
    )


# -- mount paths (item 7) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc", "would hide /etc/hosts, which the kubelet mounts"),
        ("/bin", "would hide the image's own files there"),
        ("/usr/local/bin", "would hide the image's own files there"),
        ("/proc", "at or under /proc"),
        ("/proc/self", "at or under /proc"),
        ("/sys", "at or under /sys"),
        ("/dev", "at or under /dev"),
        ("/dev/shm", "at or under /dev"),  # noqa: S108
        ("/var/run/secrets", "would hide /var/run/secrets/kubernetes.io/serviceaccount"),
        ("/var/run/secrets/kubernetes.io", "would hide /var/run/secrets/kubernetes.io/"),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "would hide /var/run/secrets/kubernetes.io/serviceaccount",
        ),
        ("/run/secrets", "would hide /run/secrets/kubernetes.io/serviceaccount"),
        ("/var", "would hide /var/run/secrets/kubernetes.io/serviceaccount"),
        ("/tmp", "would hide the image's own files there"),  # noqa: S108
    ],
)
def test_a_mount_path_that_breaks_the_container_is_refused_with_the_reason(
    path: str, why: str
) -> None:
    outcome = _admit(_with({"securekeys.io/mount-path": path}))
    assert outcome.outcome == "denied"
    assert why in outcome.response.message, outcome.response.message
    assert "securekeys.io/mount-path" in outcome.response.message


@pytest.mark.parametrize(
    "path", ["/etc/secure-keys", "/keys", "/var/run/secrets/stripe", "/opt/app/keys", "/run/keys"]
)
def test_a_directory_of_its_own_is_a_fine_mount_path(path: str) -> None:
    assert _admit(_with({"securekeys.io/mount-path": path})).outcome == "injected"


# -- a shared process namespace (item 3) ---------------------------------------------------


def test_a_shared_process_namespace_is_refused_unless_the_pod_accepts_it() -> None:
    obj = _with({})
    obj["spec"]["shareProcessNamespace"] = True
    outcome = _admit(obj)
    assert outcome.outcome == "denied"
    assert outcome.response.reason == "SharedProcessNamespace"
    assert "shareProcessNamespace" in outcome.response.message
    assert "securekeys.io/all-containers-may-read-keys" in outcome.response.message

    obj["metadata"]["annotations"]["securekeys.io/all-containers-may-read-keys"] = "true"
    assert _admit(obj).outcome == "injected"
    obj["metadata"]["annotations"]["securekeys.io/all-containers-may-read-keys"] = "yes"
    assert "is not true or false" in _admit(obj).response.message


def test_a_forged_injected_mark_does_not_skip_the_process_namespace_check() -> None:
    obj = _with({"securekeys.io/injected": "native"})
    obj["spec"]["shareProcessNamespace"] = True
    outcome = _admit(obj)
    assert outcome.response.reason == "SharedProcessNamespace"


# -- ephemeral containers (item 4) ---------------------------------------------------------


def _debugged(*mounts: str) -> dict[str, Any]:
    obj = _with({"securekeys.io/injected": "native"})
    obj["spec"]["ephemeralContainers"] = [
        {
            "name": "debugger",
            "image": "busybox",
            "volumeMounts": [{"name": m, "mountPath": f"/m/{m}"} for m in mounts],
        }
    ]
    return obj


@pytest.mark.parametrize("volume", ["securekeys-keys", "securekeys-token", "securekeys-ca"])
def test_an_ephemeral_container_may_not_mount_our_volumes(volume: str) -> None:
    request = review(_debugged("data", volume), operation="UPDATE")
    request["request"]["subResource"] = "ephemeralcontainers"
    outcome = admit(decode(body(request)), bound_table(), GatewaySettings(), synced=True)
    assert outcome.outcome == "denied"
    assert outcome.response.reason == "EphemeralMountDenied"
    assert f"ephemeral container 'debugger' may not mount volume {volume}" in (
        outcome.response.message
    )


def test_an_ephemeral_container_without_our_volumes_is_allowed() -> None:
    request = review(_debugged("data"), operation="UPDATE")
    request["request"]["subResource"] = "ephemeralcontainers"
    outcome = admit(decode(body(request)), bound_table(), GatewaySettings(), synced=True)
    assert outcome.outcome == "allowed"
    assert outcome.response.allowed


def _debugging(target: str, accepts_all: bool = False) -> Any:
    """``kubectl debug --target=TARGET`` on an injected pod whose app reads the keys and
    whose sidecar holds the token; ``tools`` mounts neither."""
    annotations = {"securekeys.io/injected": "native"}
    if accepts_all:
        annotations["securekeys.io/all-containers-may-read-keys"] = "true"
    obj = _with(
        annotations,
        containers=[
            {
                "name": "app",
                "image": "x",
                "volumeMounts": [{"name": "securekeys-keys", "mountPath": "/var/run/keys"}],
            },
            {"name": "tools", "image": "x"},
        ],
        init_containers=[
            {
                "name": "securekeys-sidecar",
                "image": "x",
                "restartPolicy": "Always",
                "volumeMounts": [{"name": "securekeys-token", "mountPath": "/var/run/token"}],
            }
        ],
    )
    obj["spec"]["ephemeralContainers"] = [
        {"name": "spy", "image": "busybox", "targetContainerName": target}
    ]
    request = review(obj, operation="UPDATE")
    request["request"]["subResource"] = "ephemeralcontainers"
    return admit(decode(body(request)), bound_table(), GatewaySettings(), synced=True)


@pytest.mark.parametrize("target", ["app", "securekeys-sidecar"])
def test_an_ephemeral_container_may_not_target_a_container_that_reads_the_keys(
    target: str,
) -> None:
    # The attack a review found: no mount at all, yet /proc/1/root of the target is the
    # target's filesystem, keys included.
    outcome = _debugging(target)
    assert outcome.outcome == "denied"
    assert outcome.response.reason == "EphemeralTargetDenied"
    assert f"ephemeral container 'spy' may not target container {target!r}" in (
        outcome.response.message
    )


def test_an_ephemeral_container_may_target_a_container_without_keys() -> None:
    assert _debugging("tools").response.allowed


def test_a_pod_that_accepts_every_container_reading_its_keys_may_be_debugged_anywhere() -> None:
    assert _debugging("app", accepts_all=True).response.allowed


def test_a_plain_pod_update_is_still_ignored() -> None:
    outcome = _admit(_debugged("securekeys-keys"), operation="UPDATE")
    assert outcome.outcome == "ignored"


# -- two keys, one file (item 6) ----------------------------------------------------------


def test_two_keys_delivered_to_one_file_are_refused_naming_both() -> None:
    table = bound_table()
    table.keys[NS].append(key("stripe-test", file_name="stripe-live"))
    table.roles[0] = type(table.roles[0])(
        table.roles[0].name,
        NS,
        type(table.roles[0].rules).model_validate(
            {
                "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                "keys": {"names": ["stripe-live", "stripe-test"]},
                "permissions": ["read"],
            }
        ),
    )
    outcome = _admit(_with({"securekeys.io/keys": "stripe-live,stripe-test"}), table)
    assert outcome.outcome == "denied"
    assert outcome.response.reason == "FileNameClash"
    assert '"stripe-live" and "stripe-test" are both delivered to file "stripe-live"' in (
        outcome.response.message
    )
    assert _admit(_with({"securekeys.io/keys": "stripe-test"}), table).outcome == "injected"
