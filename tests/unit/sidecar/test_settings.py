"""The sidecar's settings, and the contract with the webhook: the sidecar accepts exactly
the command, arguments and environment that ``gateway.webhook.patch.build_patch`` injects."""

from __future__ import annotations

import random
from typing import Any

import pytest

from secure_keys.core import sidecarenv
from secure_keys.core.delivery import HeldVersions
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.gateway.webhook import injection, patch
from secure_keys.gateway.webhook.pod import pod_view
from secure_keys.kube import annotations as ann
from secure_keys_sidecar.agent import Backoff, have_from, updates_from_state
from secure_keys_sidecar.files import HeldKey, HeldVersion
from secure_keys_sidecar.settings import SettingsError, parse_settings
from tests.unit.gateway.helpers import pod

BASE = {
    "SECUREKEYS_GATEWAY_URL": "https://gateway.secure-keys-system.svc:8443",
    "SECUREKEYS_KEYS": "stripe-live,billing",
    "POD_NAMESPACE": "payments",
}


def _injected(mode: str) -> list[dict[str, Any]]:
    annotations = {"securekeys.io/keys": "stripe-live,billing", "securekeys.io/mode": mode}
    obj = pod(annotations=annotations)
    settings = injection.GatewaySettings(broker_url=BASE["SECUREKEYS_GATEWAY_URL"])
    config = injection.parse(annotations, settings)
    ops = patch.build_patch(config, pod_view(obj, "payments"), settings, ("stripe-live", "b.key"))
    containers: list[dict[str, Any]] = []
    for op in ops:
        value = op["value"]
        for item in value if isinstance(value, list) else [value]:
            if (
                isinstance(item, dict)
                and item.get("name", "").startswith("securekeys-")
                and ("command" in item)
            ):
                containers.append(item)
    return containers


@pytest.mark.parametrize("mode", ["native", "classic", "init-only"])
def test_the_sidecar_accepts_what_the_webhook_injects(mode: str) -> None:
    containers = _injected(mode)
    assert containers
    for container in containers:
        assert container["command"] == ["secure-keys-sidecar"]
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        env.update(POD_NAMESPACE="payments", POD_NAME="web", POD_UID="u")  # the downward API
        settings = parse_settings(container["args"], env)
        assert settings.keys == ("stripe-live", "billing")
        assert settings.files == ("stripe-live", "b.key")
        assert str(settings.directory) == injection.SIDECAR_KEYS_PATH
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(settings.directory) in mounts
        assert str(settings.token_file.parent) in mounts
        assert settings.mode == mode
        # init containers (classic's first half, init-only) fetch once and exit
        assert settings.once == (container["name"] == injection.INIT_CONTAINER)


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({**BASE, "SECUREKEYS_GATEWAY_URL": ""}, [], "SECUREKEYS_GATEWAY_URL"),
        ({**BASE, "SECUREKEYS_GATEWAY_URL": "http://gw:80"}, [], "https://"),
        ({**BASE, "SECUREKEYS_KEYS": ""}, [], "SECUREKEYS_KEYS"),
        ({**BASE, "SECUREKEYS_FILES": "a"}, [], "one file per key"),
        ({**BASE, "SECUREKEYS_MODE": "sometimes"}, [], "SECUREKEYS_MODE"),
        ({**BASE, "POD_NAMESPACE": ""}, [], "POD_NAMESPACE"),
        (BASE, ["--reload-url", "http://example.com/reload"], "localhost"),
        (BASE, ["--reload-url", "https://127.0.0.1/reload"], "localhost"),
        (BASE, ["--no-such-flag"], "command line"),
    ],
)
def test_unusable_settings_are_refused_by_name(
    env: dict[str, str], argv: list[str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings(argv, env)


def test_flags_override_the_environment() -> None:
    settings = parse_settings(
        ["--keys", "one", "--reload-url", "http://localhost:8080/-/reload"], BASE
    )
    assert settings.keys == ("one",)
    assert settings.files == ("one",)
    assert settings.reload_url == "http://localhost:8080/-/reload"
    assert settings.gateway_port == 8443


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    ceilings = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= 0.5


def test_have_lists_only_requested_keys_on_disk() -> None:
    from datetime import UTC, datetime

    fp = "hs256:" + "00" * 16
    lease = datetime(2030, 1, 1, tzinfo=UTC)
    held = {
        "a": HeldKey("a", "a", "raw", None, "0400", HeldVersion(3, fp), HeldVersion(2, fp), lease),
        "b": HeldKey("b", "b", "raw", None, "0400", None, None, lease),
        "c": HeldKey("c", "c", "raw", None, "0400", HeldVersion(1, fp), None, lease),
    }
    assert have_from(held, ["a", "b"]) == {"a": HeldVersions(current=3, previous=2)}


def test_buffers_opened_before_a_bad_blob_are_zeroed(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from secure_keys.core import delivery
    from secure_keys.core.errors import SealedSourceInvalid

    private = RecipientPrivateKey.generate()
    fp = "hs256:" + "00" * 16
    good = delivery.seal_for_sidecar(
        private.public(), b"first-secret", namespace="payments", apikey="a", version=1
    )
    lease = datetime(2030, 1, 1, tzinfo=UTC)
    keys = {
        "a": delivery.KeyState(
            "a", "raw", None, "0400", delivery.VersionState(1, fp, None, good), None, lease
        ),
        "b": delivery.KeyState(
            "b", "raw", None, "0400", delivery.VersionState(1, fp, None, good), None, lease
        ),
    }
    opened: list[bytearray] = []
    real = delivery.open_delivered

    def spy(*args: Any, **kwargs: Any) -> bytearray:
        buffer = real(*args, **kwargs)
        opened.append(buffer)
        return buffer

    monkeypatch.setattr("secure_keys_sidecar.agent.open_delivered", spy)
    with pytest.raises(SealedSourceInvalid):  # "b"'s blob was sealed for "a"
        updates_from_state(private, "payments", keys)
    assert len(opened) == 1
    assert opened[0] == bytearray(len(b"first-secret"))


class _Recorded(dict[str, str]):
    """An environment that records every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("full", [False, True])
def test_the_patch_sets_exactly_the_environment_the_sidecar_parses(full: bool) -> None:
    """The variables are spelled once (``core.sidecarenv``); this ties both ends to it:
    the key container gets every variable of the contract and nothing else, and the
    sidecar asks for exactly those, each of which changes what it runs with."""
    annotations = {ann.KEYS: "stripe-live"}
    if full:
        annotations[ann.RELOAD_URL] = "http://127.0.0.1:9000/reload"
    settings = injection.GatewaySettings(
        broker_url="https://gateway.secure-keys-system.svc:8443" if full else "",
        broker_ca_pem="-----BEGIN CERTIFICATE-----\n" if full else "",
    )
    config = injection.parse(annotations, settings)
    ops = patch.build_patch(
        config, pod_view(pod(annotations=annotations), "payments"), settings, ("k",)
    )
    containers = [
        item
        for op in ops
        for item in (op["value"] if isinstance(op["value"], list) else [op["value"]])
        if isinstance(item, dict) and "env" in item
    ]
    assert containers
    expected = set(sidecarenv.WEBHOOK_SETS) | (set(sidecarenv.WEBHOOK_MAY_SET) if full else set())
    for container in containers:
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names))
        assert set(names) == expected
    if not full:
        return
    env = {e["name"]: e.get("value", "") for e in containers[0]["env"]}
    env.update(POD_NAMESPACE="payments", POD_NAME="web", POD_UID="u")  # the downward API
    recorded = _Recorded(env)
    parsed = parse_settings([], recorded)
    assert recorded.asked == expected
    for name in sorted(expected):  # each one is read: changing it changes the settings
        changed = {**env, name: _other_value(name, env[name])}
        assert parse_settings([], changed) != parsed, name


def _other_value(name: str, value: str) -> str:
    if name == sidecarenv.GATEWAY_URL:
        return "https://elsewhere.invalid:8443"
    if name == sidecarenv.RELOAD_URL:
        return "http://127.0.0.1:9001/reload"
    if name == sidecarenv.MODE:
        return "classic" if value != "classic" else "native"
    if name in (sidecarenv.KEYS, sidecarenv.FILES):
        return "other"
    return value + "x"
