"""Argument parsing and dispatch for ``secure-keys``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from secure_keys.cli import rotate as rotate_cmd
from secure_keys.cli import seal as seal_cmd
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.sealing import Recipient


def _context_namespace(kubeconfig: Path | None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (config.ConfigException, OSError):
        return "default"
    namespace: str = (active or {}).get("context", {}).get("namespace") or "default"
    return namespace


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-keys", description="Kubernetes-native storage and delivery of API keys."
    )
    parser.add_argument("--kubeconfig", type=Path, default=None)
    commands = parser.add_subparsers(dest="command", required=True)

    seal = commands.add_parser(
        "seal",
        help="encrypt a key for the cluster and print an ApiKey manifest (safe to commit)",
        description="Reads the plaintext from stdin (or --from-file), never from arguments.",
    )
    seal.add_argument("name", help="the ApiKey's name")
    seal.add_argument("-n", "--namespace", default=None)
    seal.add_argument("--from-file", type=Path, default=None, help="read the plaintext here")
    seal.add_argument(
        "--recipient-file",
        type=Path,
        default=None,
        help="the cluster's recipient key (recipient.json); default: fetch it from the cluster",
    )
    seal.add_argument("--controller-namespace", default="secure-keys-system")
    seal.add_argument("--keep-newline", action="store_true", help="keep one trailing newline")
    seal.add_argument("--interval", default=None, help="spec.rotation.interval, e.g. 720h")
    seal.add_argument("--schedule", default=None, help="spec.rotation.schedule (cron)")
    seal.add_argument("--file-name", default=None, help="spec.delivery.fileName")
    seal.add_argument("-o", "--output", type=Path, default=None, help="write here, not stdout")

    rotate = commands.add_parser("rotate", help="rotate an ApiKey now")
    rotate.add_argument("name")
    rotate.add_argument("-n", "--namespace", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "seal":
            return _seal(args)
        if args.command == "rotate":
            namespace = args.namespace or _context_namespace(args.kubeconfig)
            value = rotate_cmd.rotate(args.name, namespace, args.kubeconfig)
            print(f"rotation of {namespace}/{args.name} requested ({value})")
            return 0
        raise AssertionError(f"unhandled command {args.command!r}")
    except (seal_cmd.SealError, SealedSourceInvalid, ValueError) as exc:
        print(f"secure-keys: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"secure-keys: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except Exception as exc:  # the kubernetes client's errors: report, don't dump a traceback
        from kubernetes.client.rest import ApiException
        from kubernetes.config import ConfigException

        if isinstance(exc, ApiException):
            print(
                f"secure-keys: error: the API server said {exc.status} {exc.reason}",
                file=sys.stderr,
            )
            return 1
        if isinstance(exc, ConfigException):
            print(f"secure-keys: error: kubeconfig: {exc}", file=sys.stderr)
            return 2
        raise


def _seal(args: argparse.Namespace) -> int:
    namespace = args.namespace or _context_namespace(args.kubeconfig)
    if not args.namespace:
        # The namespace is bound into the ciphertext: say which one was chosen.
        print(f"sealing for namespace {namespace!r} (use -n to choose)", file=sys.stderr)
    if args.recipient_file is not None:
        recipient = Recipient.from_json(args.recipient_file.read_text())
    else:
        recipient = seal_cmd.recipient_from_cluster(args.kubeconfig, args.controller_namespace)
    extra: dict[str, object] = {}
    rotation = {k: v for k, v in (("interval", args.interval), ("schedule", args.schedule)) if v}
    if rotation:
        extra["rotation"] = rotation
    if args.file_name:
        extra["delivery"] = {"fileName": args.file_name}
    stdin = None if args.from_file else seal_cmd.stdin_bytes()
    plaintext = seal_cmd.read_plaintext(stdin, args.from_file, keep_newline=args.keep_newline)
    text = seal_cmd.seal_command(
        name=args.name,
        namespace=namespace,
        recipient=recipient,
        plaintext=plaintext,
        extra_spec=extra,
    )
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    yaml.safe_load(text)  # the manifest we print must parse
    return 0
