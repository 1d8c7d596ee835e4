"""The controller's DEK cache: a version read again costs no KMS call, even in an outage.

A real reconcile (in-memory API, real local KMS) seals a version; the test then reads
that version through ``StepExecutor.plaintext_of``, the controller's one read path, and
counts the calls that reach the provider. The provider is the real local one, wrapped
only to count its calls and to play an outage.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import cast

import pytest

from secure_keys.controller import metrics
from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.models import ApiKey
from secure_keys.controller.projection import records_of
from secure_keys.controller.reconciler import Reconciler, blob_secret_name
from secure_keys.controller.steps import KEY_VERSION_SECONDS
from secure_keys.core.binding import WrapContext
from secure_keys.core.errors import InvalidEnvelope, KmsDenied, KmsUnavailable
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.cache import CachedUnwraps, DekCache
from secure_keys.core.kms.local import from_config
from secure_keys.core.kms.observed import ObservedKms
from secure_keys.core.kms.registry import KmsConfig, KmsRegistry
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.kube.client import APIKEYS, SECRETS, KubeApi
from tests.unit.controller.fakeapi import FakeApi

NS = "team"


@pytest.fixture
def counted() -> list[ObservedKms]:
    return []


@pytest.fixture
def rec(api: FakeApi, kms_config: Path, counted: list[ObservedKms]) -> Reconciler:
    registry = KmsRegistry()

    def factory(config: KmsConfig) -> KmsProvider:
        provider = ObservedKms(from_config(config.key_id, config.options))
        counted.append(provider)
        return provider

    registry.register("local", factory)
    keys = ControllerKeys(RecipientPrivateKey.generate(), bytearray(os.urandom(32)))
    directory = KmsDirectory(KmsSettings.load(kms_config), registry)
    return Reconciler(cast(KubeApi, api), directory, keys)


def _read_v1(api: FakeApi, rec: Reconciler) -> bytearray:
    key = ApiKey.parse(api.stored(APIKEYS, NS, "k"))
    [record] = records_of(key)
    secret = api.stored(SECRETS, NS, blob_secret_name("k"))
    return asyncio.run(rec.steps.plaintext_of(key, record, secret))


def _lookups(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "securekeys_dek_cache_lookups_total", {"provider": "local", "result": result}
    )
    return value or 0.0


@pytest.fixture
def sealed(api: FakeApi, rec: Reconciler) -> None:
    api.put(
        APIKEYS,
        NS,
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": "k"},
            "spec": {"source": {"generate": {}}},
        },
    )
    asyncio.run(rec.reconcile(NS, "k"))


@pytest.mark.usefixtures("sealed")
def test_a_second_read_of_the_same_version_makes_no_kms_call(
    api: FakeApi, rec: Reconciler, counted: list[ObservedKms]
) -> None:
    [kms] = counted
    _cache_of(api, rec).clear()  # start cold (the seal itself cached the key: see below)
    before = kms.unwraps
    hits, misses = _lookups("hit"), _lookups("miss")
    first = _read_v1(api, rec)
    assert kms.unwraps == before + 1
    second = _read_v1(api, rec)
    assert kms.unwraps == before + 1  # answered by the cache
    assert first == second
    assert len(first) > 0
    assert (_lookups("hit") - hits, _lookups("miss") - misses) == (1.0, 1.0)


@pytest.mark.usefixtures("sealed")
def test_the_version_just_sealed_is_read_without_a_kms_call(
    api: FakeApi, rec: Reconciler, counted: list[ObservedKms]
) -> None:
    [kms] = counted
    before = kms.unwraps
    assert _read_v1(api, rec)
    assert kms.unwraps == before


def _cache_of(api: FakeApi, rec: Reconciler) -> DekCache:
    key = ApiKey.parse(api.stored(APIKEYS, NS, "k"))
    provider = asyncio.run(rec.steps.provider(key.spec.kms))
    assert isinstance(provider, CachedUnwraps)
    return provider.cache


@pytest.mark.usefixtures("sealed")
def test_a_cached_version_is_still_read_while_the_kms_is_down(
    api: FakeApi, rec: Reconciler, counted: list[ObservedKms]
) -> None:
    [kms] = counted
    plaintext = _read_v1(api, rec)
    kms.down = True
    assert _read_v1(api, rec) == plaintext
    cache = _cache_of(api, rec)
    cache.clear()  # as when the entry expires: now the KMS must be asked
    with pytest.raises(KmsUnavailable):
        _read_v1(api, rec)
    kms.down = False
    _read_v1(api, rec)
    assert len(cache) == 1
    rec.steps.close()  # shutting down zeroes and drops every cached key
    assert len(cache) == 0


@pytest.mark.usefixtures("sealed")
def test_a_refusal_from_the_kms_empties_the_cache(
    api: FakeApi, rec: Reconciler, counted: list[ObservedKms]
) -> None:
    [kms] = counted
    _read_v1(api, rec)
    kms.denied = True
    # A seal (a wrap) hears that the key is disabled: cached keys are no longer served.
    key = ApiKey.parse(api.stored(APIKEYS, NS, "k"))
    provider = asyncio.run(rec.steps.provider(key.spec.kms))
    with pytest.raises(KmsDenied):
        provider.wrap(bytearray(32), WrapContext((("a", "b"),)))
    with pytest.raises(InvalidEnvelope, match="refused"):
        _read_v1(api, rec)


@pytest.mark.usefixtures("sealed")
def test_the_key_version_is_asked_once_per_interval_not_once_per_reconcile(
    api: FakeApi, rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ApiKey.parse(api.stored(APIKEYS, NS, "k"))
    provider = asyncio.run(rec.steps.provider(key.spec.kms))
    asked: list[str] = []
    real = type(provider).key_version

    def counted(self: KmsProvider) -> str:
        asked.append("")
        return real(self)

    monkeypatch.setattr(type(provider), "key_version", counted)
    clock = [1_000_000.0]
    rec.steps.monotonic = lambda: clock[0]
    first = asyncio.run(rec.steps.current_kms(key.spec.kms))
    for _ in range(5):
        assert asyncio.run(rec.steps.current_kms(key.spec.kms)) == first
    assert len(asked) == 1
    clock[0] += KEY_VERSION_SECONDS
    assert asyncio.run(rec.steps.current_kms(key.spec.kms)) == first
    assert len(asked) == 2
