"""Human and CI access to keys: the gateway's answer to a ``KeyAccessReview``.

``decide`` is pure (who may read or list which key, now); ``reviews`` is the webhook
edge (``POST /v1/access``): the AdmissionReview of a dry-run create in, the review's
status patched with the answer out, one audit record and an aggregated Event per answer.
It uses the broker's watch caches and material source (one copy of each per replica)
and imports nothing from the pod webhook (docs/access.md).
"""
