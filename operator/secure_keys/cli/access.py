"""``secure-keys get``, ``list`` and ``run`` against the cluster: KeyAccessReviews.

Each command makes one server-side dry-run create of a ``KeyAccessReview``
(``core.accessreview``) with the kubeconfig's identity, whatever proves it (client
certificate, exec plugin, token, in-cluster ServiceAccount): the API server
authenticates, the gateway answers in the returned object's status, nothing is stored.
For a read, a fresh X25519 key pair is made in this process for this one request; the
key comes back sealed to it and is opened here into a ``bytearray`` that is zeroed once
written (``get``) or handed to the child's environment (``run``).

What goes where: the key (and only the key) on stdout for ``get``; everything else on
stderr. A refusal is the cluster's answer: exit 1, with the gateway's message (which
says what would grant it).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_keys.cli import kubeapi, login
from secure_keys.core import accessreview as wire
from secure_keys.core.keyformat import KeyFormatError, render
from secure_keys.core.memory import zero
from secure_keys.core.sealing import Recipient, RecipientPrivateKey
from secure_keys.kube.client import CONFIGMAPS, KubeApi, Resource
from secure_keys.kube.names import RECIPIENT_CONFIGMAP, RECIPIENT_CONFIGMAP_KEY

REVIEWS = Resource(wire.GROUP, wire.VERSION, wire.PLURAL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


class AccessRefused(Exception):
    """The gateway answered no: the message is its reason and what would grant it."""

    def __init__(self, answer: wire.ReviewAnswer) -> None:
        super().__init__(f"{answer.reason}: {answer.message}")
        self.answer = answer


class AccessUsageError(ValueError):
    """A usage error of these commands (exit 2)."""


@dataclass(frozen=True)
class ReadKey:
    """A key read from the cluster: its plaintext (the caller zeroes it) and its answer."""

    plaintext: bytearray
    answer: wire.AnsweredKey
    audit_id: str


def _sign(key_pem: bytes, message: bytes) -> bytes:
    """``message`` signed with the client certificate's key (ECDSA or RSA over SHA-256, or
    Ed25519), as the gateway checks it against the certificate."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    private = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(message)
    raise kubeapi.KubeconfigError("the client key's type cannot sign a proof")


async def with_proof(
    api: KubeApi, namespace: str, spec: wire.ReviewSpec, issued: int | None = None
) -> wire.ReviewSpec:
    """``spec`` with the proof of this client's own credential (``core.accessreview``),
    made at ``issued`` (the time its sealed token or code was bound to; default now)."""
    issued = issued if issued is not None else int(time.time())
    if spec.recipient is None:
        spec = dataclasses.replace(spec, recipient=RecipientPrivateKey.generate().public())
    assert spec.recipient is not None  # noqa: S101 - set just above, for mypy
    token, cert_pem, key_pem = await api.client_credential()
    if cert_pem is not None and key_pem is not None:
        signature = _sign(key_pem, wire.proof_message(namespace, spec, issued))
        proof = wire.CallerProof(
            "certificate",
            certificate=cert_pem.decode(),
            signature=base64.b64encode(signature).decode(),
            issued_at=issued,
        )
    elif token:
        document = await api.get(CONFIGMAPS, login.controller_namespace(), RECIPIENT_CONFIGMAP)
        cluster = Recipient.from_json((document.get("data") or {})[RECIPIENT_CONFIGMAP_KEY])
        sealed = wire.seal_request_secret(
            cluster,
            token.encode(),
            namespace=namespace,
            recipient=spec.recipient,
            binding=wire.proof_binding(namespace, spec, issued),
        )
        proof = wire.CallerProof("token", sealed_token=sealed, issued_at=issued)
    else:
        raise kubeapi.KubeconfigError(
            "the kubeconfig has neither a client certificate nor a token to prove who you are"
        )
    return dataclasses.replace(spec, proof=proof)


async def _create_review(
    api: KubeApi, namespace: str, spec: wire.ReviewSpec, issued: int | None
) -> dict[str, Any]:
    spec = await with_proof(api, namespace, spec, issued)
    return await api.request(
        "POST",
        REVIEWS.path(namespace),
        body=wire.review_object(spec, namespace),
        query={"dryRun": "All"},
    )


def review(
    target: kubeapi.Target, namespace: str, spec: wire.ReviewSpec, issued: int | None = None
) -> wire.ReviewAnswer:
    """One KeyAccessReview, answered; raises ``AccessRefused`` if the answer is no.
    ``issued``: the time a sealed token or code in ``spec`` was bound to
    (``login.sealed_token``), which the proof must carry too."""
    returned = kubeapi.run_api(target, lambda api: _create_review(api, namespace, spec, issued))
    answer = wire.parse_answer(returned.get("status"))
    if not answer.allowed:
        raise AccessRefused(answer)
    return answer


def ask(
    target: kubeapi.Target,
    namespace: str,
    spec: wire.ReviewSpec,
    token: login.HeldToken | None = None,
) -> wire.ReviewAnswer:
    """``review`` of ``spec`` now, with the access token (``token``, else the cached one)
    sealed in when the caller holds one."""
    issued = int(time.time())
    return review(
        target, namespace, login.with_token(target, namespace, spec, issued, token), issued
    )


def read_key(
    target: kubeapi.Target,
    namespace: str,
    name: str,
    *,
    version: int | None = None,
    previous: bool = False,
    client: str = "secure-keys-cli",
    token: login.HeldToken | None = None,
) -> ReadKey:
    """Read one key through a review; the plaintext is opened with a key pair made for
    this request only, and the caller zeroes it. ``token`` (an access token held in
    memory, as ``KeyManager`` holds one) is sent instead of the cached one."""
    private = RecipientPrivateKey.generate()
    spec = wire.ReviewSpec(
        "read",
        key=name,
        version=version,
        previous=previous,
        recipient=private.public(),
        client=client,
    )
    answer = ask(target, namespace, spec, token)
    key = answer.key
    if key is None or key.name != name:
        raise wire.ReviewInvalid("the gateway's answer holds no key")
    plaintext = wire.open_answer(
        private, key.sealed, namespace=namespace, apikey=key.name, version=key.version
    )
    return ReadKey(plaintext, key, answer.audit_id)


def request_rotation(
    target: kubeapi.Target,
    namespace: str,
    name: str,
    *,
    client: str = "secure-keys-cli/rotate",
    token: login.HeldToken | None = None,
) -> wire.ReviewAnswer:
    """Ask the gateway for a rotation of ``namespace/name`` as a KeyRole's ``rotate``
    grantee; the answer's ``rotation_request`` is the annotation value it set."""
    spec = wire.ReviewSpec(
        "rotate", key=name, recipient=RecipientPrivateKey.generate().public(), client=client
    )
    return ask(target, namespace, spec, token)


def listed_key(
    target: kubeapi.Target,
    namespace: str,
    name: str,
    *,
    client: str = "secure-keys-cli/rollout",
    token: login.HeldToken | None = None,
) -> wire.ListedKey | None:
    """One key's versions and rollout through a list review, for whoever a KeyRole lets
    read, list or rotate it (no RBAC on ApiKeys needed); ``None``: no role does."""
    spec = wire.ReviewSpec(
        "list", key=name, recipient=RecipientPrivateKey.generate().public(), client=client
    )
    answer = ask(target, namespace, spec, token)
    return next((k for k in answer.keys if k.name == name), None)


def _write_private(path: Path, data: bytearray) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def get(args: argparse.Namespace) -> int:
    if args.previous and args.version is not None:
        raise AccessUsageError("--previous and --version exclude each other")
    target = kubeapi.load_target(args.kubeconfig)
    namespace = args.namespace or target.namespace
    read = read_key(
        target,
        namespace,
        args.name,
        version=args.version,
        previous=args.previous,
        client="secure-keys-cli/get",
    )
    rendered = bytearray()
    try:
        if args.format == "raw":
            rendered += read.plaintext
        else:
            rendered = render(
                args.format,
                read.plaintext,
                apikey=read.answer.name,
                env_name=read.answer.env_name or None,
                version=read.answer.version,
            )
        if args.output is not None:
            _write_private(args.output, rendered)
        else:
            out = sys.stdout.buffer
            out.write(rendered)
            if args.format == "raw" and (args.newline or out.isatty()):
                out.write(b"\n")
            out.flush()
    finally:
        zero(rendered)
        zero(read.plaintext)
    where = f" to {args.output}" if args.output is not None else ""
    print(
        f"{namespace}/{read.answer.name} version {read.answer.version}{where} "
        f"(audit {read.audit_id or '-'})",
        file=sys.stderr,
    )
    return 0


def list_keys(args: argparse.Namespace) -> int:
    target = kubeapi.load_target(args.kubeconfig)
    namespace = args.namespace or target.namespace
    spec = wire.ReviewSpec(
        "list", recipient=RecipientPrivateKey.generate().public(), client="secure-keys-cli/list"
    )
    answer = ask(target, namespace, spec)
    if args.json:
        import json

        print(json.dumps([k.to_json() for k in answer.keys], indent=2))
        return 0
    if not answer.keys:
        print(f"no key in namespace {namespace!r} that you may read or list", file=sys.stderr)
        return 0
    print("NAME\tCURRENT\tVERSIONS\tPERMISSIONS\tFINGERPRINT")
    for key in answer.keys:
        current = next((v for v in key.versions if v.version == key.current_version), None)
        states = ",".join(f"v{v.version}:{v.state}" for v in key.versions if v.state != "Destroyed")
        permissions = ",".join(key.permissions) + (" (MFA)" if key.require_mfa else "")
        fingerprint = current.fingerprint[:24] if current is not None else "-"
        print(f"{key.name}\tv{key.current_version}\t{states}\t{permissions}\t{fingerprint}")
    return 0


def run(args: argparse.Namespace) -> int:
    command = list(args.command_line)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise AccessUsageError("run needs a command after --")
    if not args.key:
        raise AccessUsageError("run needs at least one --key NAME[=ENV_VAR]")
    program = shutil.which(command[0])
    if program is None:
        raise AccessUsageError(f"command not found: {command[0][:64]!r}")
    wanted: list[tuple[str, str]] = []
    for item in args.key:
        name, _, variable = item.partition("=")
        variable = variable or name.upper().replace("-", "_").replace(".", "_")
        if not _ENV_NAME.match(variable):
            raise AccessUsageError(f"{variable[:64]!r} is not an environment variable name")
        wanted.append((name, variable))
    target = kubeapi.load_target(args.kubeconfig)
    namespace = args.namespace or target.namespace
    env: dict[bytes, bytes] = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    for name, variable in wanted:
        read = read_key(target, namespace, name, client="secure-keys-cli/run")
        try:
            if b"\x00" in read.plaintext:
                raise AccessUsageError(
                    f"key {name!r} holds a NUL byte: it cannot be in the environment"
                )
            env[variable.encode()] = bytes(read.plaintext)
        finally:
            zero(read.plaintext)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, command, env)  # noqa: S606 - the user's own command, by design


COMMANDS = {"get": get, "list": list_keys, "run": run}
__all__ = ["COMMANDS", "AccessRefused", "AccessUsageError", "KeyFormatError", "read_key"]
