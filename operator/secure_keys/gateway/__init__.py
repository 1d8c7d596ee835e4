"""The gateway process: the mutating admission webhook that injects the key sidecar, and
(with ``--kms-config``) the key broker that streams keys to it.

Webhook pipeline (vault-k8s agent-inject style, each step pure and tested alone):
``review.decode`` -> ``injection.should_inject`` -> ``injection.parse`` ->
``injection.validate`` -> ``authorize.authorize`` -> ``patch.build_patch``, composed by
``mutate.admit``; ``decisions`` reuses an answer for pods of the same shape while the
caches are unchanged. ``caches`` keeps ApiKeys, KeyRoles and ServiceAccounts in
watch-fed memory; ``server`` is the aiohttp TLS edge. The broker is ``broker`` (with
``broker_policy``, ``tokenreview``, ``material`` and ``audit``). See ``docs/gateway.md``.
"""
