"""``python -m secure_keys.gateway`` (``secure-keys-gateway``): run the admission webhook."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import orjson

# As the controller: the gateway never uses the `kubernetes` package (our own client is
# secure_keys.kube.client), so keep it out even when it is installed.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

from secure_keys.core.logs import configure  # noqa: E402
from secure_keys.gateway import certs  # noqa: E402
from secure_keys.gateway.server import BrokerOptions, GatewayOptions, serve  # noqa: E402
from secure_keys.gateway.webhook.injection import MODES, SYSTEM_NAMESPACES, GatewaySettings  # noqa: E402
from secure_keys.kube import annotations as ann  # noqa: E402


def log_dumps(value: Any, **options: Any) -> bytes:
    """The gateway's log lines by orjson (``core.logs``): the admission line in 60 % of
    the time; what orjson cannot write (an integer past 64 bits) by the standard
    library."""
    try:
        return orjson.dumps(value, default=options.get("default"), option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, **options).encode()


def _command(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError("a JSON list of strings, e.g. '[\"secure-keys-sidecar\"]'")
    return tuple(value)


def parse_options(argv: list[str] | None = None) -> GatewayOptions:
    return parse(argv)[0]


def parse(argv: list[str] | None = None) -> tuple[GatewayOptions, certs.CertOptions | None]:
    """The gateway's options, and the managed certificates' (``--certs-secret``) if any."""
    parser = argparse.ArgumentParser(prog="secure-keys-gateway")
    parser.add_argument("--tls-cert", type=Path, required=True, help="serving certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, required=True, help="its private key (PEM)")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--address", default="0.0.0.0")  # noqa: S104 - a server
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "secure-keys-system"),
        help="the gateway's own namespace (its pods are never injected)",
    )
    parser.add_argument("--sidecar-image", default="secure-keys:dev")
    parser.add_argument(
        "--sidecar-command",
        type=_command,
        default=("secure-keys-sidecar",),
        help="the key container's command, as a JSON list",
    )
    parser.add_argument(
        "--image-pull-policy", default="IfNotPresent", choices=["IfNotPresent", "Always", "Never"]
    )
    parser.add_argument(
        "--default-mode",
        choices=MODES,
        default="native",
        help=f"mode for pods without {ann.MODE} ('classic' for clusters before 1.29)",
    )
    parser.add_argument(
        "--skip-namespaces",
        default=",".join(sorted(SYSTEM_NAMESPACES)),
        help="comma-separated namespaces whose pods are never injected (besides --namespace)",
    )
    parser.add_argument(
        "--broker-url",
        default="",
        help="the key broker's https:// URL as pods reach it, given to the key container "
        "(required with --kms-config)",
    )
    parser.add_argument(
        "--broker-ca-file",
        type=Path,
        default=None,
        help="PEM of the CA that signed --tls-cert; injected pods trust it for the broker "
        "(default: the key container uses the system trust store)",
    )
    parser.add_argument("--cert-reload-interval", type=float, default=5.0)
    parser.add_argument(
        "--kms-config",
        type=Path,
        default=None,
        help="the controller's KMS config (JSON); serves the key broker (POST /v1/stream)",
    )
    parser.add_argument(
        "--controller-namespace",
        default="secure-keys-system",
        help="where the controller keeps its keys Secret",
    )
    parser.add_argument("--heartbeat-seconds", type=int, default=10)
    parser.add_argument(
        "--replica-selector",
        default="",
        help="label selector of the gateway's own pods in --namespace: rollout entries of "
        "replicas that are not a live pod are removed (needs POD_NAME; default: off)",
    )
    parser.add_argument(
        "--dek-cache-ttl", type=float, default=24 * 3600.0, help="seconds a data key stays cached"
    )
    parser.add_argument(
        "--access-token-ttl",
        type=float,
        default=900.0,
        help="seconds an access token from `secure-keys login` lives (default 15 minutes)",
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    certs.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cert_options = certs.options_from(args, args.namespace)
    except ValueError as exc:
        parser.error(f"managed certificates: {exc}")
    if args.kms_config is not None and not args.broker_url.startswith("https://"):
        parser.error("--kms-config serves the key broker: --broker-url https://... is required")
    ca_pem = ""
    if args.broker_ca_file is not None:
        try:
            ca_pem = args.broker_ca_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--broker-ca-file: cannot read it ({type(exc).__name__})")
        if "-----BEGIN CERTIFICATE-----" not in ca_pem:
            parser.error("--broker-ca-file: no PEM certificate in it")
    configure(
        json=None if args.log_format == "auto" else args.log_format == "json", dumps=log_dumps
    )
    settings = GatewaySettings(
        sidecar_image=args.sidecar_image,
        sidecar_command=args.sidecar_command,
        image_pull_policy=args.image_pull_policy,
        default_mode=args.default_mode,
        own_namespace=args.namespace,
        skip_namespaces=frozenset(n.strip() for n in args.skip_namespaces.split(",") if n.strip()),
        broker_url=args.broker_url,
        broker_ca_pem=ca_pem,
    )
    options = GatewayOptions(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        port=args.port,
        address=args.address,
        metrics_port=args.metrics_port,
        kubeconfig=args.kubeconfig,
        settings=settings,
        cert_reload_interval=args.cert_reload_interval,
        broker=None
        if args.kms_config is None
        else BrokerOptions(
            kms_config=args.kms_config,
            controller_namespace=args.controller_namespace,
            heartbeat_seconds=args.heartbeat_seconds,
            dek_cache_ttl=args.dek_cache_ttl,
            access_token_ttl=args.access_token_ttl,
            replica_namespace=args.namespace,
            replica_selector=args.replica_selector,
        ),
    )
    return options, cert_options


def main(argv: list[str] | None = None) -> int:
    options, cert_options = parse(argv)
    if cert_options is None:
        asyncio.run(serve(options))
    else:
        asyncio.run(certs.run_with_certs(options, cert_options, serve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
