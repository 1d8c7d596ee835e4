"""The mutating admission webhook: one AdmissionReview in, one out.

``review`` decodes and encodes, ``answers`` reuses the answer for pods of the same
shape, ``mutate`` decides (``pod`` the view, ``injection`` the settings, ``authorize``
the KeyRole check against ``caches``), ``patch`` builds the JSON Patch. Imports nothing
from ``secure_keys.gateway.broker`` (.importlinter).
"""
