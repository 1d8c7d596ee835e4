"""The gateway process: the mutating admission webhook that injects the key sidecar, and
(with ``--kms-config``) the key broker that streams keys to it.

Two apps that import nothing from each other (.importlinter), and the process above them:

* ``webhook/``: ``review.decode`` -> ``injection.should_inject`` -> ``injection.parse`` ->
  ``injection.validate`` -> ``authorize.authorize`` -> ``patch.build_patch``, composed by
  ``mutate.admit``; ``answers`` reuses an answer for pods of the same shape while the
  caches are unchanged; ``caches`` keeps ApiKeys, KeyRoles and ServiceAccounts in
  watch-fed memory.
* ``broker/``: ``stream`` (sessions and the ``POST /v1/stream`` handler), with
  ``tokenreview``, ``limits``, ``caches``, ``policy``, ``material`` and ``audit``.
* the process: ``__main__`` (arguments), ``server`` (the aiohttp edge and the process
  set-up), ``tls`` (the serving context and certificate reloading), ``certs`` (the
  managed CA and serving certificate), ``metrics``. See ``docs/gateway.md``.
"""
