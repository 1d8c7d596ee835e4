"""The controller: seals ApiKeys into versioned envelopes and rotates them.

Layers, importing only downward: ``operator`` (the process: watches, work queue,
workers, kopf wiring) -> ``reconciler`` (reconcile one ApiKey: read, plan, execute one
step, repeat) and ``keyrole_status`` (a KeyRole's status) -> ``steps`` (execute one
step) -> ``projection`` (stored objects to the planner's view and back), ``rotation``
(the pure planner), ``records`` (version records and their pure transitions),
``models`` (parsed CRs), ``sources`` (where plaintext comes from), ``blobs`` and
``status`` (the blob Secret and the ApiKey writes), ``controller_keys`` (the
controller's own recipient and fingerprint keys); Kubernetes I/O goes through
``secure_keys.kube``.
"""
