"""The CLI's verbs against the local store (``--store local``): argument wiring and output.

Passwords come from ``--password-file`` (its first line) or a prompt on the terminal,
never from argv or the environment; values to ``add`` and ``rotate`` come from stdin or
``--from-file``; TOTP codes from ``--totp-file`` or a prompt. ``get`` writes the value to
stdout exactly as stored; ``run`` puts values in a child's environment and replaces this
process with it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from secure_keys.cli import seal as seal_cmd
from secure_keys.core.hierarchy import DEFAULT_ITERATIONS
from secure_keys.core.memory import read_secret_file, zero
from secure_keys.core.stamps import format_stamp
from secure_keys.store import totp
from secure_keys.store.errors import StoreError
from secure_keys.store.layout import FILE_MODE, default_store_dir

if TYPE_CHECKING:
    from secure_keys.store.local import LocalStore

__all__ = ["COMMANDS", "open_store"]

Handler = Callable[[argparse.Namespace], int]


def _store_dir(args: argparse.Namespace) -> Path:
    return Path(args.store_dir) if args.store_dir else default_store_dir()


def _first_line(path: Path, what: str) -> bytearray:
    raw = read_secret_file(path)
    end = raw.find(b"\n")
    line = raw[: end if end >= 0 else len(raw)]
    zero(raw)
    if line.endswith(b"\r"):
        del line[-1:]
    if not line:
        raise StoreError(f"{what} file {path} is empty")
    return line


def _prompt(what: str) -> bytearray:
    """Ask on the terminal itself, never on stdin (which may carry a value to store)."""
    flag = f"--{what.replace(' ', '-')}-file"
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        raise StoreError(f"no {what} given and no terminal to ask on: use {flag}") from None
    try:
        text = getpass.getpass(f"{what}: ")
    except (EOFError, OSError):
        raise StoreError(f"no {what}: use {flag}") from None
    if not text:
        raise StoreError(f"the {what} is empty")
    return bytearray(text.encode())


def _password(
    args: argparse.Namespace, *, attr: str = "password_file", what: str = "password"
) -> bytearray:
    path = getattr(args, attr, None)
    return _first_line(path, what) if path is not None else _prompt(what)


def _store_class() -> type[LocalStore]:
    """The store, imported when a local command runs (a cluster ``get`` never loads it)."""
    from secure_keys.store.local import LocalStore

    return LocalStore


def open_store(args: argparse.Namespace) -> LocalStore:
    """Open the store, asking for a password only if its KMS needs one."""
    directory = _store_dir(args)
    password: bytearray | None = None
    try:
        needs_password = _needs_password(directory)
        if needs_password:
            password = _password(args)
        code = None
        if _needs_totp(directory):
            raw = (
                _first_line(args.totp_file, "TOTP code")
                if args.totp_file is not None
                else _prompt("TOTP code")
            )
            code = raw.decode("ascii", "replace")
            zero(raw)
        return _store_class().open(directory, password=password, mfa_token=code)
    finally:
        if password is not None:
            zero(password)


def _config_field(directory: Path) -> dict[str, object]:
    from secure_keys.store.layout import StoreLayout

    layout = StoreLayout(directory)
    layout.check()
    try:
        data = json.loads(layout.config.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _needs_password(directory: Path) -> bool:
    kms = _config_field(directory).get("kms")
    return not isinstance(kms, dict) or kms.get("provider") == "local"


def _needs_totp(directory: Path) -> bool:
    mfa = _config_field(directory).get("mfa")
    return isinstance(mfa, dict) and mfa.get("totp") is True


def _value(args: argparse.Namespace) -> bytearray:
    stdin = None if args.from_file else seal_cmd.stdin_bytes()
    try:
        return seal_cmd.read_plaintext(stdin, args.from_file, keep_newline=args.keep_newline)
    except seal_cmd.SealError as exc:
        raise StoreError(str(exc)) from None


# Verbs ---------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    directory = _store_dir(args)
    options = dict(args.kms_option)
    password = None
    if args.kms == "local":
        password = _password(args)
    elif args.kms == "keychain":
        options.setdefault("create", "true")
    secret = totp.new_secret() if args.totp_secret_out is not None else None
    try:
        store = _store_class().init(
            directory,
            kms_provider=args.kms,
            kms_key_id=args.kms_key_id or ("secure-keys-store" if args.kms == "keychain" else None),
            kms_options=options,
            password=password,
            iterations=args.iterations if args.iterations is not None else DEFAULT_ITERATIONS,
            grace_seconds=args.grace_period,
            retain=args.retain,
            totp_secret=secret,
        )
    finally:
        if password is not None:
            zero(password)
    with store:
        if secret is not None:
            uri = totp.provisioning_uri(secret, store.config.store_id)
            fd = os.open(args.totp_secret_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                handle.write(uri + "\n")
            print(
                f"TOTP enrolment URI written to {args.totp_secret_out}: add it to your "
                "authenticator, then delete the file",
                file=sys.stderr,
            )
        print(f"created store {store.config.store_id} in {directory} ({args.kms})", file=sys.stderr)
    return 0


def _add(args: argparse.Namespace) -> int:
    value = _value(args)
    try:
        with open_store(args) as store:
            version = store.add(args.name, value)
    finally:
        zero(value)
    print(f"added {args.name} (version {version})", file=sys.stderr)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    if args.kek:
        if args.name or args.promote or args.stage:
            raise StoreError("rotate --kek takes no key name, --stage or --promote")
        with open_store(args) as store:
            moved = store.rewrap()
            print(
                f"{moved} envelope(s) rewrapped to KEK version {store.kms_key_version}",
                file=sys.stderr,
            )
        return 0
    if not args.name:
        raise StoreError("rotate needs a key name (or --kek)")
    if args.promote:
        with open_store(args) as store:
            version = store.promote(args.name)
        print(f"{args.name}: version {version} is now Active", file=sys.stderr)
        return 0
    value = _value(args)
    try:
        with open_store(args) as store:
            version = store.rotate(args.name, value, stage=args.stage)
    finally:
        zero(value)
    state = "staged (Pending)" if args.stage else "Active"
    print(f"{args.name}: version {version} is {state}", file=sys.stderr)
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        versions = store.remove(args.name)
    print(f"removed {args.name}: version(s) {versions} destroyed", file=sys.stderr)
    return 0


def _passwd(args: argparse.Namespace) -> int:
    if not _needs_password(_store_dir(args)):
        raise StoreError("this store's data keys are wrapped by a KMS, not a password")
    current = _password(args)
    try:
        new = _password(args, attr="new_password_file", what="new password")
        try:
            with _store_class().open(
                _store_dir(args), password=current, mfa_token=_totp_code(args)
            ) as store:
                store.change_password(current, new, iterations=args.iterations)
        finally:
            zero(new)
    finally:
        zero(current)
    print("password changed; every data key is rewrapped under the new one", file=sys.stderr)
    return 0


def _totp_code(args: argparse.Namespace) -> str | None:
    if not _needs_totp(_store_dir(args)):
        return None
    raw = _first_line(args.totp_file, "TOTP code") if args.totp_file else _prompt("TOTP code")
    code = raw.decode("ascii", "replace")
    zero(raw)
    return code


def _get(args: argparse.Namespace) -> int:
    with open_store(args) as store, store.value(args.name, previous=args.previous) as value:
        out = sys.stdout.buffer
        out.write(value)
        if args.newline or _is_terminal(out):
            out.write(b"\n")
        out.flush()
    return 0


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        keys = store.list_keys()
    if args.json:
        document = [
            {
                "name": k.name,
                "versions": [
                    {
                        "version": v.version,
                        "state": v.state,
                        "createdAt": format_stamp(v.created_at),
                        "kmsProvider": v.kms_provider,
                        "kmsKeyVersion": v.kms_key_version,
                    }
                    for v in k.versions
                ],
            }
            for k in keys
        ]
        print(json.dumps(document, indent=2))
        return 0
    for key in keys:
        active = key.active
        states = ", ".join(
            f"v{v.version} {v.state}" for v in key.versions if v.state != "Destroyed"
        )
        since = format_stamp(active.activated_at or active.created_at) if active else "-"
        print(f"{key.name}\t{states}\tactive since {since}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        count, broken = store.verify_audit()
        if not args.verify:
            for record in _tail(store.audit_records(), args.tail):
                print(json.dumps(record, sort_keys=True))
    if broken is not None:
        print(
            f"secure-keys: error: audit.log record {broken.index + 1} of {count} does not "
            f"verify: {broken.why}",
            file=sys.stderr,
        )
        return 1
    print(f"audit.log: {count} record(s), chain intact", file=sys.stderr)
    return 0


def _tail(records: list[dict[str, object]], count: int) -> list[dict[str, object]]:
    return records[-count:] if count > 0 else records


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


def _run(args: argparse.Namespace) -> int:
    command = list(args.command_line)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise StoreError("run needs a command after --")
    if not args.key:
        raise StoreError("run needs at least one --key NAME[=ENV_VAR]")
    program = shutil.which(command[0])
    if program is None:
        raise StoreError(f"command not found: {command[0][:64]!r}")
    env: dict[bytes, bytes] = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    with open_store(args) as store:
        for spec in args.key:
            name, _, variable = spec.partition("=")
            variable = variable or _env_name(name)
            if not _ENV_NAME.match(variable):
                raise StoreError(f"{variable[:64]!r} is not an environment variable name")
            with store.value(name) as value:
                if b"\x00" in value:
                    raise StoreError(
                        f"key {name!r} holds a NUL byte: it cannot go in the environment"
                    )
                env[variable.encode()] = bytes(value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, command, env)  # noqa: S606 - the user's own command, by design


COMMANDS: dict[str, Handler] = {
    "init": _init,
    "add": _add,
    "rm": _rm,
    "passwd": _passwd,
    "get": _get,
    "list": _list,
    "audit": _audit,
    "run": _run,
    "rotate": _rotate,
}
