"""The gateway's webhook and broker caches share their informers.

Both keep their own projection of ApiKeys, KeyRoles and ServiceAccounts; grouped by what
they watch (``kube.cache.shared_sources``), each resource is listed and watched once per
gateway, and each object parsed once (tests/unit/kube/test_cache_sharing.py).
"""

from __future__ import annotations

from secure_keys.gateway.broker.caches import BrokerCaches
from secure_keys.gateway.webhook.caches import GatewayCaches
from secure_keys.kube.cache import shared_sources
from secure_keys.kube.client import APIKEYS, KEYROLES


def test_the_gateways_webhook_and_broker_caches_need_four_informers_not_seven() -> None:
    webhook = GatewayCaches()
    broker = BrokerCaches(lambda _namespace: None)
    groups = shared_sources([*webhook.all, *broker.all])
    assert len(groups) == 4  # ApiKeys, KeyRoles, ServiceAccounts; opted-in pods
    assert groups[(APIKEYS, None, None)] == [webhook.apikeys, broker.apikeys]
    assert groups[(KEYROLES, None, None)] == [webhook.keyroles, broker.roles]
    assert webhook.service_accounts in groups[(webhook.service_accounts.resource, None, None)]
    assert broker.accounts in groups[(webhook.service_accounts.resource, None, None)]
