"""The KMS provider registry."""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path

import pytest

from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.local import LocalKeyring, LocalKms
from secure_keys.core.kms.registry import (
    DuplicateProviderError,
    KmsConfig,
    KmsRegistry,
    UnknownProviderError,
    default_registry,
)


def test_default_registry_builds_the_local_provider(
    tmp_path: Path, keyring: LocalKeyring, keyring_password: str
) -> None:
    (tmp_path / "ring.json").write_text(keyring.to_json())
    (tmp_path / "pw").write_text(keyring_password)
    registry = default_registry()
    assert registry.names() == ("aws", "azure", "gcp", "keychain", "local", "pkcs11")
    provider = registry.create(
        KmsConfig(
            "local",
            "default",
            {"keyringPath": str(tmp_path / "ring.json"), "passwordFile": str(tmp_path / "pw")},
        )
    )
    assert isinstance(provider, LocalKms)
    assert provider.key_version() == "1"


def test_duplicates_are_refused(kms: LocalKms) -> None:
    registry = KmsRegistry()
    registry.register("local", lambda config: kms)
    with pytest.raises(DuplicateProviderError, match="already registered"):
        registry.register("local", lambda config: kms)
    assert registry.create(KmsConfig("local", "default")) is kms


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(
        UnknownProviderError,
        match=r"'vault' \(registered: aws, azure, gcp, keychain, local, pkcs11\)",
    ):
        default_registry().create(KmsConfig("vault", "k"))


def test_invalid_names_are_refused(kms: LocalKms) -> None:
    for name in ("", "Local", "a b", "x" * 40):
        with pytest.raises(ValueError, match="invalid KMS provider name"):
            KmsRegistry().register(name, lambda config: kms)


def test_factory_must_build_the_named_provider(kms: LocalKms) -> None:
    registry = KmsRegistry()
    registry.register("aws", lambda config: kms)
    with pytest.raises(ValueError, match="built a provider named 'local'"):
        registry.create(KmsConfig("aws", "arn"))


def test_config_options_are_frozen() -> None:
    config = KmsConfig("local", "default", {"a": "b"})
    with pytest.raises(TypeError):
        config.options["a"] = "c"  # type: ignore[index]


def test_factories_receive_the_config(kms: LocalKms) -> None:
    seen: list[KmsConfig] = []

    def factory(config: KmsConfig) -> KmsProvider:
        seen.append(config)
        return kms

    registry = KmsRegistry()
    registry.register("local", factory)
    config = KmsConfig("local", "default", {"x": "y"})
    registry.create(config)
    assert seen == [config]


def test_cloud_providers_load_their_sdk_only_when_configured() -> None:
    # Run in a fresh interpreter: another test may already have imported an SDK here.
    script = (
        "import sys\n"
        "from secure_keys.core.kms.registry import default_registry\n"
        "default_registry()\n"
        "loaded = [m for m in ('boto3', 'botocore', 'google.cloud.kms', 'pkcs11') "
        "if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter, a fixed script
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_a_provider_whose_module_cannot_load_names_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_boto3(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] in {"boto3", "botocore"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.delitem(sys.modules, "secure_keys.core.kms.aws", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_boto3)
    with pytest.raises(UnknownProviderError, match=r"secure-keys\[aws\]"):
        default_registry().create(KmsConfig("aws", "alias/k"))
