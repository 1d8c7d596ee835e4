"""Fixtures of the reconciler's unit tests: an in-memory API and a local KMS config."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys_dev.localkms import write_local_kms
from tests.unit.controller.fakeapi import FakeApi


@pytest.fixture(scope="module")
def kms_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_kms(tmp_path_factory.mktemp("kms"), iterations=MIN_ITERATIONS)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()
