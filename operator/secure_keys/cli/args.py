"""The shape of ``secure-keys``' command line: every verb, its arguments and its help.

Only argparse and a few constants: building the parser must not import what the verbs
do. A ``secure-keys get`` in a pipeline pays for each module it imports, so ``main``
builds this parser, reads the verb, and only then imports that verb's module
(``bench/access.py`` measures the difference). Argument types that need more (a
recipient fingerprint) import it when they are called.

One verb may work against both stores (``--store local|cluster``): its parser carries
both stores' options, and each option's help says which store it is for.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from secure_keys.kube.names import DEFAULT_CONTROLLER_NAMESPACE

if TYPE_CHECKING:
    from secure_keys.cli.pins import Fingerprint

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

STORE_ENV = "SECUREKEYS_STORE"
STORES = ("local", "cluster")

LOCAL_COMMANDS = frozenset({"init", "add", "rm", "passwd", "get", "list", "audit", "run", "rotate"})
"""The verbs the local store answers."""
LOCAL_ONLY = frozenset({"init", "add", "rm", "passwd"})
ACCESS_COMMANDS = frozenset({"get", "list", "run"})
"""The cluster's reads, through KeyAccessReviews (``cli/access.py``)."""
LOGIN_COMMANDS = frozenset({"login", "logout", "mfa"})
ROLLOUT_COMMANDS = frozenset({"rollout", "revoke"})
PKCS11_ACTIONS = ("generate-key", "disable-key", "enable-key")

ROLLOUT_TIMEOUT = 300.0
"""``rotate --wait``'s default ``--timeout``, in seconds."""

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """argparse type: ``5m``, ``90s``, ``1h30m``, in seconds."""
    total, at = 0.0, 0
    while at < len(text):
        term = _DURATION.match(text, at)
        if term is None:
            raise argparse.ArgumentTypeError(f"{text[:32]!r}: expected a duration like 5m or 90s")
        total += float(term.group(1)) * _UNITS[term.group(2)]
        at = term.end()
    if not text or total <= 0:
        raise argparse.ArgumentTypeError(f"{text[:32]!r}: expected a positive duration")
    return total


def fingerprint(text: str) -> Fingerprint:
    """argparse type for ``SHA256:...`` (its name appears in argparse's message)."""
    from secure_keys.cli import pins

    try:
        return pins.Fingerprint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _kms_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text[:64]!r}: expected KEY=VALUE")
    return key, value


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = argparse.ArgumentParser(
        prog="secure-keys", description="Kubernetes-native storage and delivery of API keys."
    )
    top.add_argument("--kubeconfig", type=Path, default=None)
    top.add_argument(
        "--store",
        choices=STORES,
        default=None,
        help=f"the store the verbs work against (default: ${STORE_ENV}, else cluster)",
    )
    top.add_argument(
        "--store-dir",
        default=None,
        help="the local store's directory (default: $XDG_CONFIG_HOME/secure-keys)",
    )
    commands = top.add_subparsers(dest="command", required=True)
    opener, value = _store_verbs(commands)
    _seal(commands, opener)
    rotate = commands.add_parser(
        "rotate",
        parents=[opener, value],
        help="rotate a key now (cluster: ask the controller; local: new value on stdin)",
    )
    _rotate(rotate)
    _rollout(commands)
    _pkcs11(commands)
    _login(commands)
    return top


def _store_verbs(commands: Commands) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The verbs of the local store, with the cluster's options of those that have them;
    returns the parents that open a store and that read a new value."""
    opener = argparse.ArgumentParser(add_help=False)
    opener.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="the store's password: this file's first line",
    )
    opener.add_argument(
        "--totp-file", type=Path, default=None, help="the TOTP code: this file's first line"
    )
    value = argparse.ArgumentParser(add_help=False)
    value.add_argument(
        "--from-file", type=Path, default=None, help="read the value here, not stdin"
    )
    value.add_argument("--keep-newline", action="store_true", help="keep one trailing newline")

    init = commands.add_parser("init", parents=[opener], help="create a local store")
    init.add_argument(
        "--kms",
        default="local",
        help="the provider wrapping data keys: local (a password), "
        "keychain (the OS keychain), aws, gcp, azure, pkcs11",
    )
    init.add_argument("--kms-key-id", default=None, help="the KMS key (not for local)")
    init.add_argument(
        "--kms-option", type=_kms_option, action="append", default=[], metavar="KEY=VALUE"
    )
    init.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="PBKDF2 iterations (default 600,000; at least 100,000)",
    )
    init.add_argument(
        "--grace-period",
        type=int,
        default=None,
        metavar="SECONDS",
        help="how long `get --previous` serves a rotated-out version (3600)",
    )
    init.add_argument(
        "--retain", type=int, default=None, help="versions kept, the current one included (3)"
    )
    init.add_argument(
        "--totp-secret-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="turn TOTP on; write the enrolment URI (it holds the secret) here, 0600",
    )
    add = commands.add_parser("add", parents=[opener, value], help="add a key (value on stdin)")
    add.add_argument("name")
    rm = commands.add_parser("rm", parents=[opener], help="destroy every version of a key")
    rm.add_argument("name")
    passwd = commands.add_parser("passwd", parents=[opener], help="change the store's password")
    passwd.add_argument("--new-password-file", type=Path, default=None)
    passwd.add_argument("--iterations", type=int, default=None)

    get = commands.add_parser("get", parents=[opener], help="print a key's value")
    get.add_argument("name")
    get.add_argument(
        "--previous", action="store_true", help="the version before, in its grace period"
    )
    get.add_argument("--newline", action="store_true", help="end the output with a newline")
    get.add_argument("--version", type=int, default=None, help="cluster: this version")
    get.add_argument(
        "--format",
        choices=("raw", "env", "json"),
        default="raw",
        help="cluster: raw (the key), env (NAME=value) or json",
    )
    get.add_argument(
        "-o", "--output", type=Path, default=None, help="cluster: write here (0600), not stdout"
    )
    lst = commands.add_parser("list", parents=[opener], help="list keys and versions (no values)")
    lst.add_argument("--json", action="store_true")
    run = commands.add_parser(
        "run", parents=[opener], help="run a command with keys in its environment"
    )
    run.add_argument("-k", "--key", action="append", default=[], metavar="NAME[=ENV_VAR]")
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    for reader in (get, lst, run):
        reader.add_argument("-n", "--namespace", default=None, help="cluster: the key's namespace")

    audit = commands.add_parser("audit", parents=[opener], help="show and verify the audit log")
    audit.add_argument("--verify", action="store_true", help="local: only check the chain")
    audit.add_argument("--tail", type=int, default=0, help="local: only the last N records")
    audit.add_argument("action", nargs="?", choices=("verify",), help="verify FILE")
    audit.add_argument("file", nargs="?", type=Path, help="verify: the exported log")
    audit.add_argument("-n", "--namespace", default=None)
    audit.add_argument("--key", default=None, help="only this ApiKey's Events")
    audit.add_argument("--since", default=None, help="only Events newer than this (30m, 1h, 2d)")
    audit.add_argument("--kms-config", type=Path, default=None, help="verify: the KMS config")
    audit.add_argument("--audit-key-file", type=Path, default=None, help="verify: the key, hex")
    audit.add_argument("--controller-namespace", default=DEFAULT_CONTROLLER_NAMESPACE)
    return opener, value


def _seal(commands: Commands, opener: argparse.ArgumentParser) -> None:
    seal = commands.add_parser(
        "seal",
        parents=[opener],
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
    seal.add_argument("--controller-namespace", default=DEFAULT_CONTROLLER_NAMESPACE)
    seal.add_argument("--keep-newline", action="store_true", help="keep one trailing newline")
    seal.add_argument("--interval", default=None, help="spec.rotation.interval, e.g. 720h")
    seal.add_argument("--schedule", default=None, help="spec.rotation.schedule (cron)")
    seal.add_argument("--file-name", default=None, help="spec.delivery.fileName")
    seal.add_argument("-o", "--output", type=Path, default=None, help="write here, not stdout")


def _rotate(rotate: argparse.ArgumentParser) -> None:
    rotate.add_argument("name", nargs="?")
    rotate.add_argument("-n", "--namespace", default=None)
    rotate.add_argument("--stage", action="store_true", help="local: leave the new version Pending")
    rotate.add_argument(
        "--promote", action="store_true", help="local: make the Pending version Active"
    )
    rotate.add_argument(
        "--kek", action="store_true", help="local: rewrap every data key to the newest KEK"
    )
    rotate.add_argument(
        "--wait", action="store_true", help="wait until every consuming pod holds the new version"
    )
    rotate.add_argument(
        "--timeout", type=duration, default=ROLLOUT_TIMEOUT, help="with --wait (default 5m)"
    )
    rotate.add_argument("-o", "--output", choices=["text", "json"], default="text")


def _rollout(commands: Commands) -> None:
    rollout = commands.add_parser("rollout", help="which consuming pods hold the current version")
    verbs = rollout.add_subparsers(dest="rollout_command", required=True)
    show = verbs.add_parser("status", help="the rollout of an ApiKey's current version")
    show.add_argument("name")
    show.add_argument("-n", "--namespace", default=None)
    show.add_argument("-o", "--output", choices=["text", "json"], default="text")

    revoke = commands.add_parser(
        "revoke",
        help="end an archived version's grace period now (removed from every pod by push)",
    )
    revoke.add_argument("name")
    revoke.add_argument("--version", type=int, required=True)
    revoke.add_argument("-n", "--namespace", default=None)
    revoke.add_argument(
        "--force", action="store_true", help="even while pods are behind (they lose the key)"
    )
    revoke.add_argument("-o", "--output", choices=["text", "json"], default="text")


def _pkcs11(commands: Commands) -> None:
    pkcs11 = commands.add_parser(
        "pkcs11",
        help="manage secure-keys KEKs in a PKCS#11 token (the PIN is read from a file)",
        description="generate-key makes the next KEK version (a new key, or a rotation) and "
        "prints its number; disable-key and enable-key set CKA_ENCRYPT/CKA_DECRYPT on every "
        "version and print the versions changed.",
    )
    pkcs11.add_argument("action", choices=PKCS11_ACTIONS)
    pkcs11.add_argument("--library", required=True, help="path of the PKCS#11 module (.so)")
    pkcs11.add_argument("--token", required=True, help="token label")
    pkcs11.add_argument("--label", required=True, help="KEK label (the provider's key id)")
    pkcs11.add_argument("--pin-file", required=True, help="file holding the user PIN")


def _login(commands: Commands) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-n", "--namespace", default=None, help="where the review is made")
        parser.add_argument("--controller-namespace", default=DEFAULT_CONTROLLER_NAMESPACE)

    login = commands.add_parser(
        "login", help="exchange a TOTP code for a 15-minute access token (for requireMFA keys)"
    )
    common(login)
    login.add_argument(
        "--code-file", type=Path, default=None, help="the code: this file's first line"
    )
    logout = commands.add_parser("logout", help="forget the cached access token")
    common(logout)
    mfa = commands.add_parser("mfa", help="enrol a TOTP authenticator; an admin resets one")
    verbs = mfa.add_subparsers(dest="mfa_command", required=True)
    enroll = verbs.add_parser("enroll", help="show a TOTP secret (URI and QR code), confirm a code")
    common(enroll)
    enroll.add_argument(
        "--code-file", type=Path, default=None, help="the code: this file's first line"
    )
    enroll.add_argument("--no-qr", action="store_true", help="print the otpauth:// URI only")
    reset = verbs.add_parser(
        "reset", help="admin: delete USER's enrolment (needs delete on its Secret)"
    )
    reset.add_argument("user")
    reset.add_argument("--controller-namespace", default=DEFAULT_CONTROLLER_NAMESPACE)
