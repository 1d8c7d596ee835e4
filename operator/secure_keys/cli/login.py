"""``secure-keys mfa enroll``, ``mfa reset``, ``login`` and ``logout``; the token cache.

All go through KeyAccessReviews (``cli/access.py``), so they work with whatever identity
the kubeconfig proves. A TOTP code is read from ``--code-file`` or stdin (a prompt on a
terminal), never from the arguments, and is sent sealed to the cluster's recipient key
(the ConfigMap ``secure-keys-recipient``, readable by every authenticated identity) for
the purpose ``access-request``, bound to this very review (``proof_binding``: its
namespace, operation, key, ephemeral key and the time its proof is made;
``core.accessreview.seal_request_secret``).

The access token is cached in ``$XDG_CONFIG_HOME/secure-keys/tokens/<digest>.json``
(mode 0600 in a 0700 directory; the digest names the API server and the kubeconfig),
with its expiry and the cluster's recipient key, so ``get``, ``list`` and ``run`` send it
(sealed the same way) while it lives. ``logout`` deletes the file; the token itself
stays valid on the gateway until it expires (15 minutes), which the docs say.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from secure_keys.cli import kubeapi
from secure_keys.core import accessreview as wire
from secure_keys.core.memory import zero
from secure_keys.core.sealing import Recipient, RecipientPrivateKey
from secure_keys.kube.names import DEFAULT_CONTROLLER_NAMESPACE

CONTROLLER_NAMESPACE_ENV = "SECUREKEYS_CONTROLLER_NAMESPACE"


def controller_namespace() -> str:
    """Where the cluster's recipient ConfigMap is (``$SECUREKEYS_CONTROLLER_NAMESPACE``)."""
    return os.environ.get(CONTROLLER_NAMESPACE_ENV) or DEFAULT_CONTROLLER_NAMESPACE


# --- the token cache -------------------------------------------------------------------


@dataclass(frozen=True)
class HeldToken:
    """An access token, its expiry, and the cluster key to seal it to."""

    token: str = field(repr=False)
    expires_at: datetime
    cluster: Recipient


CachedToken = HeldToken


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "secure-keys" / "tokens"


def cache_path(target: kubeapi.Target) -> Path:
    digest = hashlib.sha256(f"{target.credentials.server}\0{target.source}".encode()).hexdigest()
    return _cache_dir() / f"{digest[:32]}.json"


def save_token(target: kubeapi.Target, token: str, expires_at: str, cluster: Recipient) -> Path:
    path = cache_path(target)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    temporary = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"token": token, "expiresAt": expires_at, "recipient": cluster.to_json()}, out)
    os.replace(temporary, path)
    return path


def load_token(target: kubeapi.Target, now: datetime) -> CachedToken | None:
    """The cached token while it lives; ``None`` if absent, expired or unreadable."""
    path = cache_path(target)
    try:
        if path.stat().st_mode & 0o077:
            return None  # readable by others: not trusted, not sent
        data = json.loads(path.read_text())
        expires = datetime.fromisoformat(str(data["expiresAt"]).replace("Z", "+00:00"))
        cached = CachedToken(str(data["token"]), expires, Recipient.from_json(data["recipient"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cached if cached.expires_at > now else None


def with_token(
    target: kubeapi.Target,
    namespace: str,
    spec: wire.ReviewSpec,
    issued: int,
    held: HeldToken | None = None,
) -> wire.ReviewSpec:
    """``spec`` carrying ``held`` (else the cached token), sealed for the gateway and bound
    to this very review as its proof made at ``issued`` will be (``proof_binding``): a
    sealed token copied from one review opens in no other. ``spec`` unchanged if none."""
    now = datetime.now(UTC)
    cached = held if held is not None and held.expires_at > now else load_token(target, now)
    if cached is None or spec.recipient is None:
        return spec
    sealed = wire.seal_request_secret(
        cached.cluster,
        cached.token.encode(),
        namespace=namespace,
        recipient=spec.recipient,
        binding=wire.proof_binding(namespace, spec, issued),
    )
    return dataclasses.replace(spec, sealed_token=sealed)


# --- the commands ------------------------------------------------------------------------


def _read_code(code_file: Path | None) -> bytearray:
    if code_file is not None:
        line = code_file.read_text().splitlines()[0] if code_file.read_text() else ""
    elif sys.stdin.isatty():
        line = getpass.getpass("TOTP code: ")
    else:
        line = sys.stdin.readline()
    code = line.strip()
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        raise ValueError("a TOTP code is 6 digits")
    return bytearray(code.encode())


def _cluster_recipient(args: argparse.Namespace) -> Recipient:
    fetched = kubeapi.fetch_recipient(args.kubeconfig, args.controller_namespace)
    return Recipient.from_json(fetched.document)


def _code_review(
    args: argparse.Namespace, target: kubeapi.Target, operation: wire.Operation
) -> tuple[wire.ReviewAnswer, RecipientPrivateKey, Recipient, str]:
    namespace = args.namespace or target.namespace
    cluster = _cluster_recipient(args)
    return code_review(target, namespace, cluster, _read_code(args.code_file), operation)


def code_review(
    target: kubeapi.Target,
    namespace: str,
    cluster: Recipient,
    code: bytearray,
    operation: wire.Operation,
) -> tuple[wire.ReviewAnswer, RecipientPrivateKey, Recipient, str]:
    """A review carrying ``code`` (zeroed here) sealed for the gateway."""
    from secure_keys.cli.access import review

    private = RecipientPrivateKey.generate()
    spec = wire.ReviewSpec(
        operation, recipient=private.public(), client=f"secure-keys-cli/{operation}"
    )
    issued = int(time.time())
    try:
        sealed = wire.seal_request_secret(
            cluster,
            code,
            namespace=namespace,
            recipient=private.public(),
            binding=wire.proof_binding(namespace, spec, issued),
        )
    finally:
        zero(code)
    spec = dataclasses.replace(spec, sealed_code=sealed)
    return review(target, namespace, spec, issued), private, cluster, namespace


def login_in_memory(
    target: kubeapi.Target, namespace: str, controller_namespace: str, code: bytearray
) -> HeldToken:
    """Log in with ``code`` (zeroed here) and return the token without caching it."""
    fetched = kubeapi.fetch_recipient(
        None if target.source == "in-cluster" else Path(target.source), controller_namespace
    )
    cluster = Recipient.from_json(fetched.document)
    answer, private, _, _ = code_review(target, namespace, cluster, code, "login")
    if answer.secret is None:
        raise wire.ReviewInvalid("the gateway's answer holds no token")
    token = wire.open_secret(private, answer.secret.sealed, namespace=namespace, operation="login")
    try:
        text = token.decode("ascii")
    finally:
        zero(token)
    expires = datetime.fromisoformat(answer.secret.expires_at.replace("Z", "+00:00"))
    return HeldToken(text, expires, cluster)


def login(args: argparse.Namespace) -> int:
    target = kubeapi.load_target(args.kubeconfig)
    answer, private, cluster, namespace = _code_review(args, target, "login")
    if answer.secret is None:
        raise wire.ReviewInvalid("the gateway's answer holds no token")
    token = wire.open_secret(private, answer.secret.sealed, namespace=namespace, operation="login")
    try:
        path = save_token(target, token.decode("ascii"), answer.secret.expires_at, cluster)
    finally:
        zero(token)
    print(f"logged in until {answer.secret.expires_at} (token cached in {path})", file=sys.stderr)
    return 0


def logout(args: argparse.Namespace) -> int:
    target = kubeapi.load_target(args.kubeconfig)
    path = cache_path(target)
    try:
        path.unlink()
    except FileNotFoundError:
        print("no cached token", file=sys.stderr)
        return 0
    print("token forgotten (it stays valid on the cluster until it expires)", file=sys.stderr)
    return 0


def enroll(args: argparse.Namespace) -> int:
    from secure_keys.cli.access import review

    target = kubeapi.load_target(args.kubeconfig)
    namespace = args.namespace or target.namespace
    private = RecipientPrivateKey.generate()
    spec = wire.ReviewSpec("enroll", recipient=private.public(), client="secure-keys-cli/enroll")
    answer = review(target, namespace, spec)
    if answer.secret is None:
        raise wire.ReviewInvalid("the gateway's answer holds no enrolment")
    uri = wire.open_secret(private, answer.secret.sealed, namespace=namespace, operation="enroll")
    try:
        text = uri.decode("ascii")
        print("Add this to your authenticator app (it holds the secret; do not share it):")
        print(text)
        if not args.no_qr:
            from secure_keys.cli.qr import print_qr

            print_qr(text)
        sys.stdout.flush()
        del text
    finally:
        zero(uri)
    print("Then enter the code it shows to confirm.", file=sys.stderr)
    confirmed, _, _, _ = _code_review(args, target, "confirm")
    print(f"enrolled ({confirmed.message})", file=sys.stderr)
    return 0


def reset(args: argparse.Namespace) -> int:
    from secure_keys.gateway.access.mfa import secret_name
    from secure_keys.kube.client import SECRETS

    target = kubeapi.load_target(args.kubeconfig)
    name = secret_name(args.user)
    kubeapi.run_api(target, lambda api: api.delete(SECRETS, args.controller_namespace, name))
    print(f'MFA enrolment of "{args.user}" removed (Secret {name})', file=sys.stderr)
    return 0


def mfa(args: argparse.Namespace) -> int:
    return {"enroll": enroll, "reset": reset}[args.mfa_command](args)


COMMANDS = {"login": login, "logout": logout, "mfa": mfa}
