"""What the controller, the gateway and the CLI share about the Kubernetes API.

This layer sits between ``secure_keys.core`` (no Kubernetes at all) and the processes
that talk to the API server. It owns the one Kubernetes client those processes use
(``client``) and the names of our API objects (``names``), so that the controller and the
gateway agree on them by construction and neither imports the other.
"""
