"""The gateway process: the mutating admission webhook that injects the key sidecar.

Pipeline (vault-k8s agent-inject style, each step pure and tested alone):
``review.decode`` -> ``injection.should_inject`` -> ``injection.parse`` ->
``injection.validate`` -> ``authorize.authorize`` -> ``patch.build_patch``, composed by
``mutate.admit``. ``caches`` keeps ApiKeys, KeyRoles and ServiceAccounts in watch-fed
memory; ``server`` is the aiohttp TLS edge. See ``docs/gateway.md``.
"""
