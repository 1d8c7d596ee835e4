"""Dispatch and error reporting for ``secure-keys`` (its command line's shape is ``args.py``).

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

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_keys.cli import args as cli_args

if TYPE_CHECKING:
    import argparse

    from secure_keys.cli import kubeapi
    from secure_keys.core.sealing import Recipient

STORE_ENV = cli_args.STORE_ENV
STORES = cli_args.STORES

FetchRecipient = Callable[[Path | None, str], "kubeapi.FetchedRecipient"]
"""``(kubeconfig, controller namespace) -> the published recipient``: the seam tests fake."""


def _error(message: str) -> None:
    print(f"secure-keys: error: {message}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Warnings and errors only, on stderr, while a store command runs: stdout may carry a
    key's value, and stderr is the user's. Whatever logging was configured before (by a
    program calling ``main`` in-process) is put back afterwards. structlog is imported
    here, not at the top: with rich installed it costs a tenth of a second, which every
    `secure-keys get` in a pipeline would pay (bench/access.py)."""
    import logging

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
        from secure_keys.store.errors import StoreError

        raise StoreError(f"{STORE_ENV}={chosen[:32]!r}: expected local or cluster")
    return chosen


def main(argv: list[str] | None = None, *, fetch: FetchRecipient | None = None) -> int:
    """Run one command; its exit status. Each verb's module is imported only when that
    verb runs (``cli/args.py`` says why)."""
    args = cli_args.parser().parse_args(argv)
    try:
        return _dispatch(args, fetch)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _report(args, exc)


def _dispatch(args: argparse.Namespace, fetch: FetchRecipient | None) -> int:
    args.store = _store_choice(args)
    command = args.command
    if args.store == "local" and command in cli_args.LOCAL_COMMANDS:
        from secure_keys.cli import local as local_cmd

        with _quiet_logs():
            return local_cmd.COMMANDS[command](args)
    if command in cli_args.LOCAL_ONLY:
        from secure_keys.store.errors import StoreError

        raise StoreError(f"`{command}` is a command of the local store: use --store local")
    if command in cli_args.ACCESS_COMMANDS:
        from secure_keys.cli import access as access_cmd

        return access_cmd.COMMANDS[command](args)
    if command in cli_args.LOGIN_COMMANDS:
        from secure_keys.cli import login as login_cmd

        return login_cmd.COMMANDS[command](args)
    if command == "audit":
        from secure_keys.cli import audit as audit_cmd

        return audit_cmd.audit(args)
    if command == "seal":
        from secure_keys.cli import kubeapi

        with _quiet_logs() if args.store == "local" else contextlib.nullcontext():
            return _seal(args, fetch or kubeapi.fetch_recipient)
    if command == "rotate":
        return _rotate(args)
    if command in cli_args.ROLLOUT_COMMANDS:
        from secure_keys.cli import rollout as rollout_cmd

        return rollout_cmd.run(args)
    if command == "pkcs11":
        from secure_keys.cli import pkcs11_key

        return pkcs11_key.run(args)
    raise AssertionError(f"unhandled command {command!r}")


def _rotate(args: argparse.Namespace) -> int:
    from secure_keys.cli import kubeapi
    from secure_keys.cli import rollout as rollout_cmd
    from secure_keys.cli import rotate as rotate_cmd
    from secure_keys.store.errors import StoreError

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


def _loaded(module: str) -> Any:
    """``module`` if this run imported it, else ``None``: an error can only be of a module
    that ran, and reporting it should not import the others."""
    return sys.modules.get(module)


def _report(args: argparse.Namespace, exc: Exception) -> int:
    """One ``secure-keys: error:`` line (and a hint) for ``exc``, and the exit status;
    re-raises what is not a user's or the cluster's error (a bug keeps its traceback)."""
    kube_client = _loaded("secure_keys.kube.client")
    kubeapi = _loaded("secure_keys.cli.kubeapi")
    rollout_cmd = _loaded("secure_keys.cli.rollout")
    access_cmd = _loaded("secure_keys.cli.access")
    accessreview = _loaded("secure_keys.core.accessreview")
    seal_cmd = _loaded("secure_keys.cli.seal")
    pins = _loaded("secure_keys.cli.pins")
    core_errors = _loaded("secure_keys.core.errors")
    store_errors = _loaded("secure_keys.store.errors")

    def of(module: Any, *names: str) -> tuple[type[BaseException], ...]:
        return tuple(getattr(module, name) for name in names) if module is not None else ()

    if isinstance(exc, of(kube_client, "ApiError")):
        status = getattr(exc, "status", None)
        _error(f"the API server said {exc}")
        if args.command == "seal" and status in (403, 404):
            from secure_keys.kube.names import RECIPIENT_CONFIGMAP

            print(
                f"  (reading ConfigMap {args.controller_namespace}/{RECIPIENT_CONFIGMAP}: is "
                "the controller running, and may you read it? Or pass --recipient-file)",
                file=sys.stderr,
            )
        return 1
    if isinstance(
        exc,
        of(kubeapi, "ApiUnreachable", "RecipientUnpublished") + of(rollout_cmd, "RolloutRefused"),
    ):
        _error(str(exc))
        return 1
    if isinstance(exc, of(access_cmd, "AccessRefused")):
        _error(f"refused: {exc}")
        return 1
    if isinstance(exc, of(accessreview, "ReviewInvalid")):
        _error(f"the cluster's answer: {exc}")
        return 1
    if isinstance(exc, of(kubeapi, "KubeconfigError")):
        _error(str(exc))
        return 2
    if isinstance(
        exc,
        of(seal_cmd, "SealError")
        + of(core_errors, "SealedSourceInvalid")
        + of(pins, "RecipientRefused", "KnownRecipientsInvalid")
        + (ValueError,),
    ):
        _error(str(exc))
        return 2
    if isinstance(exc, OSError):
        _error(f"{exc.strerror or exc}: {exc.filename or ''}")
        return 2
    if isinstance(exc, of(store_errors, "StoreError")):
        _error(str(exc))
        return int(getattr(exc, "exit_status", 2))
    raise exc


def _recipient(args: argparse.Namespace, fetch: FetchRecipient) -> tuple[Recipient, str]:
    """The recipient to seal to, checked, and the namespace ``-n`` defaults to.

    Prints one line to stderr saying what was checked; raises ``RecipientRefused`` (and
    writes nothing) when the recipient is not the one the user trusts.
    """
    import datetime

    from secure_keys.cli import kubeapi, pins
    from secure_keys.cli import seal as seal_cmd
    from secure_keys.core.sealing import Recipient
    from secure_keys.kube.names import RECIPIENT_CONFIGMAP

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
    import yaml

    from secure_keys.cli import local as local_cmd
    from secure_keys.cli import seal as seal_cmd
    from secure_keys.store.errors import StoreError

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
