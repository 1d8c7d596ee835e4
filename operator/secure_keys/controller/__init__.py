"""The controller: seals ApiKeys into versioned envelopes and rotates them.

Layers, importing only downward: ``operator`` (kopf wiring, thin) -> ``service``
(reconcile one ApiKey: read, plan, execute one step, repeat) -> ``rotation`` (the pure
version lifecycle planner), ``models`` (parsed CRs), ``sources`` (where plaintext comes
from), ``controller_keys`` (the controller's own recipient and fingerprint keys),
``kubeapi`` (the only Kubernetes I/O).
"""
