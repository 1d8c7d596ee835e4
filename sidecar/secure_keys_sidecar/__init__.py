"""The secure-keys sidecar: delivers a pod's keys into its tmpfs volume.

It imports ``secure_keys.core`` and nothing else of secure-keys (an import-linter contract
enforces this), and of the base install only ``cryptography`` (through the core): its
HTTP client is the standard library's, and so is its JSON log writer, to stay small
(docs/sidecar.md). Modules:

- ``settings``: flags and the environment the webhook injects, parsed once;
- ``files``: the only writer into the keys volume (atomic sets, as the kubelet's);
- ``stream``: the HTTPS stream to the gateway and the app's reload call;
- ``agent``: the loop (connect, apply, reconnect with backoff, lease expiry, signals);
- ``log``: JSON log lines;
- ``__main__``: the ``secure-keys-sidecar`` command.
"""
