"""Two controllers, one Lease: only the leader reconciles, and a follower takes over.

The leader is killed with SIGKILL (no chance to release anything); the follower must
take the Lease once the term (3 s here) runs out and carry on. These namespaces are
``crash-*``, which the session's controller does not watch.
"""

from __future__ import annotations

import signal
from pathlib import Path

from kubernetes import client

from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
)


def test_only_the_leader_reconciles_and_a_follower_takes_over(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    kubeconfig, kms_config = controller_setup
    lease = f"e2e-{private_namespace}"

    def controller(log: str) -> ControllerProcess:
        return ControllerProcess(
            kubeconfig,
            kms_config,
            tmp_path / log,
            namespaces=private_namespace,
            lease=lease,
            lease_duration=3,
        )

    first = controller("first.log").start(wait='"leader.acquired"')
    second = controller("second.log").start(wait='"leader.waiting"')
    try:
        assert '"leader.acquired"' not in second.log()
        create_apikey(admin_api, private_namespace, "one", {"source": {"generate": {}}})
        eventually(lambda: is_ready(get_apikey(admin_api, private_namespace, "one")))
        # The promotion is logged after the status write that makes the key Ready: wait.
        eventually(lambda: '"apikey.promoted"' in first.log(), 30, "the leader's promotion log")
        assert '"apikey.promoted"' not in second.log()

        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.wait_exit(10)
        eventually(lambda: '"controller.started"' in second.log(), 30, "the follower to lead")
        create_apikey(admin_api, private_namespace, "two", {"source": {"generate": {}}})
        eventually(lambda: is_ready(get_apikey(admin_api, private_namespace, "two")))
        eventually(lambda: '"apikey.promoted"' in second.log(), 30, "the new leader's promotion")

        held = client.CoordinationV1Api(admin_api).read_namespaced_lease(
            lease, CONTROLLER_NAMESPACE
        )
        assert held.spec.lease_transitions >= 1
        assert held.spec.holder_identity.endswith(f"-{second.process.pid}")  # type: ignore[union-attr]
    finally:
        first.stop()
        second.stop()
