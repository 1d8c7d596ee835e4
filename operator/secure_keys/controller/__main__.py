"""``python -m secure_keys.controller``: run the ApiKey controller."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# kopf imports the `kubernetes` client, when it is installed, only to recognise its model
# objects. The controller never hands it any (its API I/O is kubeapi.py), and the import
# costs about 40 MiB of resident memory, so keep it out of this process.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

from secure_keys.controller.operator import ControllerOptions, run  # noqa: E402
from secure_keys.core.logs import configure  # noqa: E402
from secure_keys.kube.leader import LeaseTiming  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secure-keys-controller")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "secure-keys-system"),
        help="namespace of the controller's own keys and recipient ConfigMap",
    )
    parser.add_argument("--kms-config", type=Path, required=True, help="KMS keys (JSON)")
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    parser.add_argument(
        "--leader-elect",
        default="secure-keys-controller",
        metavar="LEASE",
        help="Lease (in --namespace) for leader election; 'false' to run without",
    )
    parser.add_argument(
        "--lease-duration", type=float, default=15.0, help="seconds a leader's term lasts"
    )
    parser.add_argument(
        "--namespaces",
        default=None,
        help="only these namespaces: kopf globs with ! negations, e.g. 'team-*,!team-test'",
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    args = parser.parse_args(argv)
    configure(json=None if args.log_format == "auto" else args.log_format == "json")
    run(
        ControllerOptions(
            namespace=args.namespace,
            kms_config=args.kms_config,
            kubeconfig=args.kubeconfig,
            workers=args.workers,
            metrics_port=args.metrics_port,
            lease=None if args.leader_elect == "false" else args.leader_elect,
            lease_timing=LeaseTiming(
                lease_duration=args.lease_duration,
                renew_deadline=args.lease_duration * 2 / 3,
                retry_period=args.lease_duration / 7.5,
            ),
        ),
        namespaces=args.namespaces,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
