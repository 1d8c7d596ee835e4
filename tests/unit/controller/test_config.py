"""Controller KMS configuration (secure_keys.controller.config): the settings file, resolving
spec.kms, and building providers lazily."""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

from secure_keys.controller.config import KmsDirectory, KmsNotConfigured, KmsSettings
from secure_keys.controller.models import KmsRef
from secure_keys.core.errors import KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.local import LocalKms
from secure_keys.core.kms.registry import KmsConfig, KmsRegistry
from secure_keys_dev.localkms import write_local_kms
from tests.conftest import CANARY


def entry(provider: str, key_id: str, **options: str) -> dict[str, Any]:
    return {"provider": provider, "keyId": key_id, "options": options}


DOCUMENT: dict[str, Any] = {
    "default": {"provider": "local", "keyId": "default"},
    "keys": [
        entry("local", "default", keyringPath="/k/default.json", passwordFile="/k/default.pw"),
        entry("local", "other"),
        entry("aws", "k2"),
        entry("aws", "k1", region="eu-west-1"),
    ],
}


def ref(provider: str | None = None, key_id: str | None = None) -> KmsRef:
    return KmsRef.model_validate({"provider": provider, "keyId": key_id})


# -- KmsSettings -------------------------------------------------------------------------------


def test_from_json() -> None:
    settings = KmsSettings.from_json(json.dumps(DOCUMENT))
    assert settings.default == ("local", "default")
    assert sorted(settings.keys) == [
        ("aws", "k1"),
        ("aws", "k2"),
        ("local", "default"),
        ("local", "other"),
    ]
    default = settings.keys[("local", "default")]
    assert default == KmsConfig(
        "local", "default", {"keyringPath": "/k/default.json", "passwordFile": "/k/default.pw"}
    )
    assert dict(settings.keys[("aws", "k1")].options) == {"region": "eu-west-1"}


def test_from_json_options_are_optional_and_text() -> None:
    document = {
        "default": {"provider": "aws", "keyId": "k"},
        "keys": [{"provider": "aws", "keyId": "k", "options": {"retries": 3, "fips": True}}],
    }
    settings = KmsSettings.from_json(json.dumps(document))
    assert dict(settings.keys[("aws", "k")].options) == {"retries": "3", "fips": "True"}
    document["keys"] = [{"provider": "aws", "keyId": "k", "options": None}]
    assert dict(KmsSettings.from_json(json.dumps(document)).keys[("aws", "k")].options) == {}


def test_load(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    path.write_text(json.dumps(DOCUMENT))
    assert KmsSettings.load(path) == KmsSettings.from_json(json.dumps(DOCUMENT))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[]", "KMS config must be a JSON object", id="list"),
        pytest.param('"local"', "KMS config must be a JSON object", id="string"),
        pytest.param("{", "Expecting", id="not-json"),
        pytest.param("{}", "default KMS key / is not among the keys", id="empty"),
        pytest.param(
            json.dumps({"keys": DOCUMENT["keys"]}),
            "default KMS key / is not among the keys",
            id="no-default",
        ),
        pytest.param(
            json.dumps({**DOCUMENT, "default": {"provider": "aws", "keyId": "k3"}}),
            "default KMS key aws/k3 is not among the keys",
            id="default-unlisted",
        ),
        pytest.param(
            json.dumps({**DOCUMENT, "default": {"provider": "gcp", "keyId": "k1"}}),
            "default KMS key gcp/k1 is not among the keys",
            id="default-other-provider",
        ),
        pytest.param(
            json.dumps({"default": {"provider": "local", "keyId": "default"}}),
            "default KMS key local/default is not among the keys",
            id="no-keys",
        ),
    ],
)
def test_from_json_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KmsSettings.from_json(text)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param([{"provider": "local"}], id="no-keyId"),
        pytest.param([{"keyId": "default"}], id="no-provider"),
        pytest.param(["local/default"], id="entry-not-object"),
        pytest.param("local", id="keys-not-list"),
        pytest.param([{"provider": "local", "keyId": "default", "options": ["x"]}], id="options"),
    ],
)
def test_from_json_malformed_entries_are_value_errors(keys: Any) -> None:
    document = {"default": {"provider": "local", "keyId": "default"}, "keys": keys}
    with pytest.raises(ValueError, match="keys"):
        KmsSettings.from_json(json.dumps(document))


# -- KmsDirectory.resolve -------------------------------------------------------------------------

SETTINGS = KmsSettings.from_json(json.dumps(DOCUMENT))


@pytest.mark.parametrize(
    ("kms", "expected"),
    [
        pytest.param(ref(), ("local", "default"), id="default"),
        pytest.param(ref("local"), ("local", "default"), id="default-provider-only"),
        pytest.param(ref(key_id="other"), ("local", "other"), id="key-of-default-provider"),
        pytest.param(ref("local", "other"), ("local", "other"), id="explicit-local"),
        pytest.param(ref("aws"), ("aws", "k1"), id="provider-only-first-key"),
        pytest.param(ref("aws", "k2"), ("aws", "k2"), id="explicit-aws"),
    ],
)
def test_resolve(kms: KmsRef, expected: tuple[str, str]) -> None:
    config = KmsDirectory(SETTINGS, KmsRegistry()).resolve(kms)
    assert (config.provider, config.key_id) == expected
    assert config is SETTINGS.keys[expected]


@pytest.mark.parametrize(
    ("kms", "message"),
    [
        pytest.param(ref("gcp"), "KMS provider 'gcp' is not configured", id="provider"),
        pytest.param(ref("aws", "k3"), "KMS key aws/k3 is not configured", id="aws-key"),
        pytest.param(ref(key_id="nope"), "KMS key local/nope is not configured", id="local-key"),
        pytest.param(ref("gcp", "k1"), "KMS key gcp/k1 is not configured", id="key-elsewhere"),
    ],
)
def test_resolve_not_configured(kms: KmsRef, message: str) -> None:
    directory = KmsDirectory(SETTINGS, KmsRegistry())
    with pytest.raises(KmsNotConfigured, match=message):
        directory.resolve(kms)
    with pytest.raises(KmsNotConfigured):
        directory.provider(kms)  # before any build is attempted


# -- KmsDirectory.provider with a scripted factory -------------------------------------------------


class Factory:
    """Builds LocalKms instances named after the config, failing as scripted."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.built: list[tuple[str, str]] = []

    def __call__(self, config: KmsConfig) -> KmsProvider:
        if self.failures:
            raise self.failures.pop(0)
        self.built.append((config.provider, config.key_id))
        return LocalKms._from_keks(config.key_id, {1: bytes(32)})


def directory_with(factory: Factory) -> KmsDirectory:
    registry = KmsRegistry()
    registry.register("local", factory)
    return KmsDirectory(SETTINGS, registry, retry_after=0.0)


def test_providers_are_built_lazily_and_once() -> None:
    factory = Factory()
    directory = directory_with(factory)
    assert factory.built == []
    first = directory.provider(ref())
    assert factory.built == [("local", "default")]
    assert directory.provider(ref()) is first
    assert directory.provider(ref("local")) is first
    assert directory.default() is first
    other = directory.provider(ref(key_id="other"))
    assert other is not first
    assert directory.provider(ref("local", "other")) is other
    assert factory.built == [("local", "default"), ("local", "other")]


@pytest.mark.parametrize(
    "failure",
    [
        FileNotFoundError(2, "No such file or directory", "/run/kms/default.password"),
        PermissionError(13, "Permission denied", "/run/kms/default.password"),
        ValueError("password file /run/kms/default.password is empty"),
    ],
    ids=["missing", "unreadable", "empty"],
)
def test_build_failures_are_unavailable_and_retried(failure: Exception) -> None:
    factory = Factory(failure)
    directory = directory_with(factory)
    with pytest.raises(KmsUnavailable) as info:
        directory.provider(ref())
    exc = info.value
    assert exc.retryable
    assert (exc.provider, exc.key_id) == ("local", "default")
    assert "/run/kms/default.password" in str(exc)
    assert exc.__cause__ is None
    assert exc.__suppress_context__
    # Not cached: the next reconcile tries again, and succeeds once the cause is gone.
    built = directory.provider(ref())
    assert factory.built == [("local", "default")]
    assert directory.provider(ref()) is built


def test_kms_errors_pass_through_unchanged() -> None:
    denied = KmsDenied("local", "default", "no password given opens the newest KEK version 1")
    directory = directory_with(Factory(denied))
    with pytest.raises(KmsDenied) as info:
        directory.provider(ref())
    assert info.value is denied
    assert isinstance(directory.provider(ref()), LocalKms)


def test_other_errors_are_not_swallowed() -> None:
    directory = directory_with(Factory(RuntimeError("bug in a provider")))
    with pytest.raises(RuntimeError, match="bug in a provider"):
        directory.provider(ref())


def test_an_unregistered_provider_is_reported_as_a_kms_problem() -> None:
    directory = directory_with(Factory())
    with pytest.raises((KmsError, KmsNotConfigured)):
        directory.provider(ref("aws"))


def test_racing_first_builds_agree_on_one_provider() -> None:
    barrier = threading.Barrier(2, timeout=5)

    class Racing(Factory):
        def __call__(self, config: KmsConfig) -> KmsProvider:
            built = super().__call__(config)
            barrier.wait()  # both threads are building at once
            return built

    factory = Racing()
    directory = directory_with(factory)
    got: list[KmsProvider] = []
    threads = [threading.Thread(target=lambda: got.append(directory.provider(ref()))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(factory.built) == 2
    assert len(got) == 2
    assert got[0] is got[1] is directory.provider(ref())


# -- KmsDirectory.provider with a real local KMS on disk ----------------------------------------


@pytest.fixture
def local_kms(tmp_path: Path) -> tuple[KmsDirectory, Path, Path]:
    """A real local KMS config; returns the directory, password file and keyring file."""
    settings = KmsSettings.load(write_local_kms(tmp_path / "kms", iterations=MIN_ITERATIONS))
    options = settings.keys[settings.default].options
    return (
        KmsDirectory(settings, retry_after=0.0),
        Path(options["passwordFile"]),
        Path(options["keyringPath"]),
    )


def leak_free(exc: BaseException, *secrets: str) -> bool:
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    return not any(secret in text for secret in secrets for text in texts)


def test_a_missing_password_file_is_unavailable_until_it_appears(
    local_kms: tuple[KmsDirectory, Path, Path], tmp_path: Path
) -> None:
    directory, password_file, _ = local_kms
    password = password_file.read_text().strip()
    aside = tmp_path / "aside"
    password_file.rename(aside)
    with pytest.raises(KmsUnavailable) as info:
        directory.provider(ref())
    assert str(password_file) in str(info.value)
    assert leak_free(info.value, password)
    aside.rename(password_file)
    provider = directory.provider(ref())
    assert isinstance(provider, LocalKms)
    assert provider.key_version() == "1"
    password_file.rename(aside)  # built once: no longer read
    assert directory.provider(ref()) is provider


def test_an_empty_password_file_is_unavailable(local_kms: tuple[KmsDirectory, Path, Path]) -> None:
    directory, password_file, _ = local_kms
    password_file.write_text("")
    with pytest.raises(KmsUnavailable, match=f"password file {password_file} is empty"):
        directory.provider(ref())


def test_a_wrong_password_is_denied_without_echoing_it(
    local_kms: tuple[KmsDirectory, Path, Path],
) -> None:
    directory, password_file, _ = local_kms
    password_file.write_text(CANARY + "\n")
    with pytest.raises(KmsDenied) as info:
        directory.provider(ref())
    assert leak_free(info.value, CANARY, CANARY[8:24])


def test_a_corrupt_keyring_is_unavailable_without_echoing_it(
    local_kms: tuple[KmsDirectory, Path, Path],
) -> None:
    directory, _, keyring_file = local_kms
    keyring_file.write_text('{"kind": "' + CANARY)
    with pytest.raises(KmsUnavailable, match="keyring is not valid JSON") as info:
        directory.provider(ref())
    assert leak_free(info.value, CANARY, CANARY[8:24])


def test_a_failed_build_is_not_retried_before_retry_after() -> None:
    calls = []

    def failing(config: KmsConfig) -> KmsProvider:
        calls.append(config)
        raise OSError("password file /run/kms/pw is missing")

    registry = KmsRegistry()
    registry.register("local", failing)
    directory = KmsDirectory(SETTINGS, registry, retry_after=60.0)
    for _ in range(5):
        with pytest.raises(KmsUnavailable, match="/run/kms/pw"):
            directory.provider(ref())
    assert len(calls) == 1  # one PBKDF2-costing attempt, not one per reconcile


def test_the_default_key_wins_over_other_keys_of_its_provider() -> None:
    document = {
        "default": {"provider": "local", "keyId": "zeta"},
        "keys": [
            {"provider": "local", "keyId": "alpha", "options": {}},
            {"provider": "local", "keyId": "zeta", "options": {}},
        ],
    }
    directory = KmsDirectory(KmsSettings.from_json(json.dumps(document)), KmsRegistry())
    assert directory.resolve(KmsRef.model_validate({})).key_id == "zeta"
    assert directory.resolve(KmsRef.model_validate({"provider": "local"})).key_id == "zeta"
    chosen = directory.resolve(KmsRef.model_validate({"provider": "local", "keyId": "alpha"}))
    assert chosen.key_id == "alpha"


def test_built_never_builds() -> None:
    factory = Factory()
    directory = directory_with(factory)
    assert directory.built(ref()) is None
    assert factory.built == []
    provider = directory.provider(ref())
    assert directory.built(ref()) is provider
    assert directory.built(ref("aws")) is None  # not configured: None, not an error
