"""The key broker: ``POST /v1/stream``, the long-lived push stream to sidecars.

``stream`` holds the sessions and the handler; ``tokenreview`` who is asking,
``limits`` how often, ``caches`` what the cluster says, ``policy`` the per-key answer,
``material`` the opened key versions, ``audit`` the record. Imports nothing from
``secure_keys.gateway.webhook`` (.importlinter).
"""
