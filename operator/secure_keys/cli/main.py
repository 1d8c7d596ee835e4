"""Argument parsing, dispatch and error reporting for ``secure-keys``.

The global ``--store local|cluster`` (or ``SECUREKEYS_STORE``; default ``cluster``) says
which store the verbs work against. ``seal`` and ``rotate`` work against both (``seal``
with ``--store local`` takes the plaintext from the local store); ``init``, ``add``,
``rm`` and ``passwd`` belong to the local store; ``get``, ``list``, ``run`` and ``audit``
work against both (the cluster's through KeyAccessReviews, ``cli/access.py``, and the
ApiKeys' Events and exported audit logs, ``cli/audit.py``); ``login``, ``logout`` and
``mfa`` are the cluster's (``cli/login.py``).

User errors end with one ``secure-keys: error: ...`` line and an exit status, never a
traceback: 2 for what the user can fix here (arguments, files, the kubeconfig, a refused
recipient, a store's modes), 1 for what the cluster answered or a cluster that cannot be
reached, a wrong password and a damaged store.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from secure_keys.cli import access as access_cmd
from secure_keys.cli import audit as audit_cmd
from secure_keys.cli import kubeapi, pins, pkcs11_key
from secure_keys.cli import local as local_cmd
from secure_keys.cli import login as login_cmd
from secure_keys.cli import rollout as rollout_cmd
from secure_keys.cli import rotate as rotate_cmd
from secure_keys.cli import seal as seal_cmd
from secure_keys.core.accessreview import ReviewInvalid
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.sealing import Recipient
from secure_keys.kube.client import ApiError
from secure_keys.kube.names import RECIPIENT_CONFIGMAP
from secure_keys.store.errors import StoreError

STORE_ENV = "SECUREKEYS_STORE"
STORES = ("local", "cluster")

FetchRecipient = Callable[[Path | None, str], kubeapi.FetchedRecipient]
"""``(kubeconfig, controller namespace) -> the published recipient``: the seam tests fake."""


def fingerprint(text: str) -> pins.Fingerprint:
    """argparse type for ``SHA256:...`` (its name appears in argparse's message)."""
    try:
        return pins.Fingerprint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-keys", description="Kubernetes-native storage and delivery of API keys."
    )
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument(
        "--store",
        choices=STORES,
        default=None,
        help=f"the store the verbs work against (default: ${STORE_ENV}, else cluster)",
    )
    parser.add_argument(
        "--store-dir",
        default=None,
        help="the local store's directory (default: $XDG_CONFIG_HOME/secure-keys)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    local_parsers = local_cmd.add_arguments(commands)
    access_cmd.add_cluster_arguments(local_parsers)
    audit_cmd.add_cluster_arguments(local_parsers["audit"])

    seal = commands.add_parser(
        "seal",
        parents=[local_parsers["_opener"]],
        help="encrypt a key for the cluster and print an ApiKey manifest (safe to commit)",
        description="Reads the plaintext from stdin (or --from-file), never from arguments; "
        "with --store local, from the local store's key NAME (nothing on disk in between). "
        "The recipient key fetched from the cluster is pinned on first use, per API server "
        "and controller namespace, in $XDG_CONFIG_HOME/secure-keys/known-recipients.json; "
        "a different key later is refused.",
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
    checks = seal.add_mutually_exclusive_group()
    checks.add_argument(
        "--recipient-fingerprint",
        type=fingerprint,
        default=None,
        metavar="SHA256:...",
        help="require this recipient fingerprint (the pin file is then neither read nor written)",
    )
    checks.add_argument(
        "--trust-recipient",
        type=fingerprint,
        default=None,
        metavar="SHA256:...",
        help="accept a changed recipient key with this fingerprint and pin it",
    )
    seal.add_argument("--controller-namespace", default="secure-keys-system")
    seal.add_argument("--keep-newline", action="store_true", help="keep one trailing newline")
    seal.add_argument("--interval", default=None, help="spec.rotation.interval, e.g. 720h")
    seal.add_argument("--schedule", default=None, help="spec.rotation.schedule (cron)")
    seal.add_argument("--file-name", default=None, help="spec.delivery.fileName")
    seal.add_argument("-o", "--output", type=Path, default=None, help="write here, not stdout")

    rotate = commands.add_parser(
        "rotate",
        parents=[local_parsers["_opener"], local_parsers["_value"]],
        help="rotate a key now (cluster: ask the controller; local: new value on stdin)",
    )
    rotate.add_argument("name", nargs="?")
    rotate.add_argument("-n", "--namespace", default=None)
    rotate.add_argument("--stage", action="store_true", help="local: leave the new version Pending")
    rotate.add_argument(
        "--promote", action="store_true", help="local: make the Pending version Active"
    )
    rotate.add_argument(
        "--kek", action="store_true", help="local: rewrap every data key to the newest KEK"
    )

    rollout_cmd.add_parsers(commands, rotate)
    pkcs11_key.add_parser(commands)
    login_cmd.add_arguments(commands)
    return parser


def _error(message: str) -> None:
    print(f"secure-keys: error: {message}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Warnings and errors only, on stderr, while a store command runs: stdout may carry a
    key's value, and stderr is the user's. Whatever logging was configured before (by a
    program calling ``main`` in-process) is put back afterwards. structlog is imported
    here, not at the top: with rich installed it costs a tenth of a second, which every
    `secure-keys get` in a pipeline would pay (bench/access.py)."""
    import structlog  # kept off the start-up path of every command

    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


def _store_choice(args: argparse.Namespace) -> str:
    if args.store is not None:
        return str(args.store)
    chosen = os.environ.get(STORE_ENV, "") or "cluster"
    if chosen not in STORES:
        raise StoreError(f"{STORE_ENV}={chosen[:32]!r}: expected local or cluster")
    return chosen


def main(argv: list[str] | None = None, *, fetch: FetchRecipient | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.store = _store_choice(args)
        if args.store == "local" and args.command in local_cmd.COMMANDS:
            with _quiet_logs():
                return local_cmd.COMMANDS[args.command](args)
        if args.command in local_cmd.LOCAL_ONLY:
            raise StoreError(f"`{args.command}` is a command of the local store: use --store local")
        if args.command in access_cmd.COMMANDS:
            return access_cmd.COMMANDS[args.command](args)
        if args.command in login_cmd.COMMANDS:
            return login_cmd.COMMANDS[args.command](args)
        if args.command == "audit":
            return audit_cmd.audit(args)
        if args.command in local_cmd.NOT_YET_ON_CLUSTER:
            _error(
                f"`{args.command}` against the cluster is not available yet; "
                "use --store local for the local store"
            )
            return 2
        if args.command == "seal":
            with _quiet_logs() if args.store == "local" else contextlib.nullcontext():
                return _seal(args, fetch or kubeapi.fetch_recipient)
        if args.command == "rotate":
            if not args.name or args.stage or args.promote or args.kek:
                raise StoreError(
                    "rotate against the cluster takes an ApiKey name and none of --stage, "
                    "--promote, --kek (those are for --store local)"
                )
            if args.wait:
                return rollout_cmd.run(args)
            target = kubeapi.load_target(args.kubeconfig)
            namespace = args.namespace or target.namespace
            requested = rotate_cmd.rotate(args.name, namespace, target)
            how = f", {requested.granted_by}" if requested.granted_by else ""
            print(f"rotation of {namespace}/{args.name} requested ({requested.value}{how})")
            return 0
        if args.command in ("rollout", "revoke"):
            return rollout_cmd.run(args)
        if args.command == "pkcs11":
            return pkcs11_key.run(args)
        raise AssertionError(f"unhandled command {args.command!r}")
    except ApiError as exc:
        _error(f"the API server said {exc}")
        if args.command == "seal" and exc.status in (403, 404):
            print(
                f"  (reading ConfigMap {args.controller_namespace}/{RECIPIENT_CONFIGMAP}: is "
                "the controller running, and may you read it? Or pass --recipient-file)",
                file=sys.stderr,
            )
        if args.command == "rotate" and getattr(args, "wait", False) and exc.status == 403:
            print(
                "  (--wait follows the ApiKey's status: it needs get on apikeys, which a "
                "KeyRole's rotate does not give; the rotation may have been requested)",
                file=sys.stderr,
            )
        return 1
    except (
        kubeapi.ApiUnreachable,
        kubeapi.RecipientUnpublished,
        rollout_cmd.RolloutRefused,
    ) as exc:
        _error(str(exc))
        return 1
    except access_cmd.AccessRefused as exc:
        _error(f"refused: {exc}")
        return 1
    except ReviewInvalid as exc:
        _error(f"the cluster's answer: {exc}")
        return 1
    except kubeapi.KubeconfigError as exc:
        _error(str(exc))
        return 2
    except (
        seal_cmd.SealError,
        SealedSourceInvalid,
        pins.RecipientRefused,
        pins.KnownRecipientsInvalid,
        ValueError,
    ) as exc:
        _error(str(exc))
        return 2
    except OSError as exc:
        _error(f"{exc.strerror or exc}: {exc.filename or ''}")
        return 2
    except StoreError as exc:
        _error(str(exc))
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


def _recipient(args: argparse.Namespace, fetch: FetchRecipient) -> tuple[Recipient, str]:
    """The recipient to seal to, checked, and the namespace ``-n`` defaults to.

    Prints one line to stderr saying what was checked; raises ``RecipientRefused`` (and
    writes nothing) when the recipient is not the one the user trusts.
    """
    if args.recipient_file is not None:
        if args.trust_recipient is not None:
            raise seal_cmd.SealError("--trust-recipient applies to a fetched recipient only")
        recipient = Recipient.from_json(args.recipient_file.read_text())
        report = pins.check_file(
            recipient, args.recipient_file, expected=args.recipient_fingerprint
        )
        print(report, file=sys.stderr)
        return recipient, args.namespace or kubeapi.default_namespace(args.kubeconfig)
    fetched = fetch(args.kubeconfig, args.controller_namespace)
    try:
        recipient = Recipient.from_json(fetched.document)
    except ValueError as exc:
        raise ValueError(
            f"ConfigMap {args.controller_namespace}/{RECIPIENT_CONFIGMAP} on "
            f"{fetched.cluster.server}: {exc}"
        ) from None
    store_path = pins.default_path()
    known = None if args.recipient_fingerprint is not None else pins.load(store_path)
    decision = pins.decide_fetched(
        recipient,
        fetched.cluster,
        known,
        expected=args.recipient_fingerprint,
        trust=args.trust_recipient,
        now=datetime.datetime.now(datetime.UTC),
        store_path=store_path,
    )
    if decision.store is not None:
        pins.save(store_path, decision.store)
    print(decision.report, file=sys.stderr)
    return recipient, args.namespace or fetched.namespace


def _seal(args: argparse.Namespace, fetch: FetchRecipient) -> int:
    recipient, namespace = _recipient(args, fetch)
    if not args.namespace:
        # The namespace is bound into the ciphertext: say which one was chosen.
        print(f"sealing for namespace {namespace!r} (use -n to choose)", file=sys.stderr)
    extra: dict[str, object] = {}
    rotation = {k: v for k, v in (("interval", args.interval), ("schedule", args.schedule)) if v}
    if rotation:
        extra["rotation"] = rotation
    if args.file_name:
        extra["delivery"] = {"fileName": args.file_name}
    if args.store == "local":
        if args.from_file is not None:
            raise StoreError("--store local seals the key from the store: drop --from-file")
        # Straight from the store to the sealed manifest: no plaintext on disk between.
        with local_cmd.open_store(args) as store:
            plaintext = store.get(args.name)
    else:
        stdin = None if args.from_file else seal_cmd.stdin_bytes()
        plaintext = seal_cmd.read_plaintext(stdin, args.from_file, keep_newline=args.keep_newline)
    text = seal_cmd.seal_command(
        name=args.name,
        namespace=namespace,
        recipient=recipient,
        plaintext=plaintext,
        extra_spec=extra,
    )
    yaml.safe_load(text)  # the manifest we print must parse
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
