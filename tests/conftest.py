"""Shared fixtures: fast local KMS instances and the path to the vector files."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from secure_keys.core.binding import KeyBinding
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.kms.local import LocalKeyring, LocalKms

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.register_profile("ci", deadline=None, max_examples=400, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

CANARY = "sk-canary-9f3b2e71c0a4d8e6-do-not-leak"
"""A recognisable plaintext. Tests search every output for it (and its encodings)."""


@pytest.fixture(autouse=True, scope="session")
def _private_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`secure-keys seal` pins recipients under $XDG_CONFIG_HOME: never the developer's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
        yield


@pytest.fixture
def binding() -> KeyBinding:
    return KeyBinding("payments", "stripe-live", 3)


@pytest.fixture
def kms() -> LocalKms:
    """A local provider built from a raw KEK: no PBKDF2, so tests stay fast."""
    return LocalKms._from_keks("default", {1: os.urandom(32)})


@pytest.fixture(scope="session")
def keyring_password() -> str:
    return "correct horse battery staple"


@pytest.fixture(scope="session")
def keyring(keyring_password: str) -> LocalKeyring:
    """A real password-derived keyring, at the iteration floor to keep the suite quick."""
    return LocalKeyring.create("default", keyring_password, iterations=MIN_ITERATIONS)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=os.environ.get("SECUREKEYS_E2E_KUBECONFIG"),
        help="run tests/e2e against this existing cluster instead of starting a local "
        "control plane (also: $SECUREKEYS_E2E_KUBECONFIG)",
    )
