"""Fixtures of the KMS contract suite: one real test server per provider and test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.kms.harness import PROVIDERS, KmsTestServer, open_server


@pytest.fixture(params=PROVIDERS)
def kms_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KmsTestServer]:
    """A freshly started server of each provider, with keys ``primary`` and ``other``."""
    name: str = request.param
    with open_server(name, tmp_path / name) as server:
        yield server
