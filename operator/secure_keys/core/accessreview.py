"""Owns the KeyAccessReview wire format: what a reader asks and what the gateway answers.

A person or a pipeline reads a key by a **server-side dry-run create** of a
``KeyAccessReview`` (``securekeys.io/v1alpha1``) in the key's namespace. The API server
authenticates the caller (client certificate, exec plugin, OIDC, ServiceAccount token),
calls the gateway's mutating webhook with the identity in ``userInfo``, and returns the
object as the gateway patched it; nothing is stored (docs/access.md).

``spec`` (the caller's question):

* ``operation``: ``read`` (one key), ``list`` (the keys the caller may read or list) or
  ``rotate`` (ask for one rotation of a key now, for a caller a KeyRole grants
  ``rotate``: the gateway sets the ApiKey's rotate-requested-at annotation);
* ``key``, and optionally ``version`` or ``previous``, for ``read``; ``key`` for ``rotate``;
* ``recipientKey``: base64 of a 32-byte X25519 public key that exists only in the
  caller's process, for ``read``: the material comes back sealed to it (``rotate`` sends
  one too: it binds the proof and token, and a replayed review is refused by it);
* ``client``: what the caller says it is (``secure-keys-cli/get``), for the audit record;
* ``sealedToken``: the access token from ``secure-keys login`` (any operation), and
  ``sealedCode``: a TOTP code (``confirm``, ``login``). Both are sealed to the cluster's
  recipient key (the controller's, which the gateway opens) for the purpose
  ``access-request``, bound to the review's namespace and to ``recipientKey``
  (``request_binding``): the API server's audit log holds only ciphertext, and a sealed
  value copied into another review (another recipient key) does not open.

``proof`` (every operation): the caller proves to the gateway, not only to the API
server, that it holds the credential the API server authenticated, because the
gateway's webhook endpoint cannot tell an AdmissionReview sent by the API server from
one forged by anyone who can reach it (docs/access.md, "Why the caller proves its
identity twice"). Both kinds cover ``proof_message`` (the namespace, the operation, the
key, the version choice, the recipient key and ``issuedAt``, which must be fresh): a
bearer token is sealed to the cluster key under ``proof_binding`` (a digest of that
message; the gateway runs a TokenReview), so a proof copied from an audit log opens in
no other review, operation or key, and not after a few minutes; a client certificate is
sent with a signature by its private key over the message, which the gateway checks
against the cluster's client CA.

Operations ``enroll`` (start an MFA enrolment: the ``otpauth://`` URI comes back sealed),
``confirm`` (its first code) and ``login`` (a code: an access token comes back sealed)
need a ``recipientKey``, as ``read`` does.

``status`` (the gateway's answer, patched in whole): ``allowed``, ``reason``
(CamelCase), ``message`` (what would grant it, when refused), ``auditId`` (the audit
record's ``<chain>:<seq>``), and ``key`` (one ``AnsweredKey`` with the sealed material),
``keys`` (``ListedKey``s with their rollouts, never material: for ``list``, every key a
role lets the caller read, list or rotate, or the one ``spec.key`` names) and
``rotationRequest`` (the annotation value a granted
``rotate`` set, which the controller echoes in ``status.lastRotationRequest``).

Both sides parse here, strictly and with size limits, into frozen objects. Sealing the
answer uses ``core.sealing`` with the name ``<apikey>.v<version>`` in the key's
namespace, as deliveries to sidecars do: a sealed answer opens only with the caller's
ephemeral private key, and only as that key, version and namespace.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from secure_keys.core.sealing import (
    Recipient,
    RecipientPrivateKey,
    open_sealed,
    seal_to_recipient,
    sealed_name,
)

GROUP = "securekeys.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "KeyAccessReview"
PLURAL = "keyaccessreviews"

Operation = Literal["read", "list", "rotate", "enroll", "confirm", "login"]
OPERATIONS: tuple[Operation, ...] = ("read", "list", "rotate", "enroll", "confirm", "login")
MFA_OPERATIONS = frozenset({"enroll", "confirm", "login"})
MAX_SEALED_INPUT = 8192
"""A sealed TOTP code or access token (a token is under 1 KiB)."""
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_NAME = 253
MAX_CLIENT = 64
MAX_VERSION = 2**31 - 1


class ReviewInvalid(ValueError):
    """A review's spec (or an answer's status) is malformed; the message quotes no input
    beyond a short prefix."""


def _prefix(value: object) -> str:
    return repr(value)[:40]


def _key_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not _NAME.match(value):
        raise ReviewInvalid(f"{where} must be an ApiKey name (got {_prefix(value)})")
    return value


def _recipient(value: object) -> Recipient:
    if not isinstance(value, str) or len(value) > 64:
        raise ReviewInvalid("spec.recipientKey must be base64 of a 32-byte X25519 key")
    try:
        raw = base64.b64decode(value, validate=True)
        return Recipient(raw)
    except (binascii.Error, ValueError) as exc:
        raise ReviewInvalid(f"spec.recipientKey is not a usable X25519 key ({exc})") from None


def request_binding(recipient: Recipient) -> str:
    """The name a client's sealed code or token is bound to: its review's recipient key."""
    return "access-" + recipient.key_id_digest.hex()


def seal_request_secret(
    cluster: Recipient,
    value: bytes | bytearray,
    *,
    namespace: str,
    recipient: Recipient,
    binding: str = "",
) -> str:
    """Seal a TOTP code or token for the gateway (see the module docstring), bound to
    ``binding`` (a proof's ``proof_binding``) or else to the recipient key."""
    return seal_to_recipient(
        cluster,
        value,
        namespace=namespace,
        name=binding or request_binding(recipient),
        purpose="access-request",
    )


def open_request_secret(
    cluster: RecipientPrivateKey,
    sealed: str,
    *,
    namespace: str,
    recipient: Recipient,
    binding: str = "",
) -> bytearray:
    """Open a client's sealed code or token; ``SealedSourceInvalid`` if it is not for
    this namespace and binding (or recipient key), or altered."""
    return open_sealed(
        cluster,
        sealed,
        namespace=namespace,
        name=binding or request_binding(recipient),
        purpose="access-request",
    )


def _sealed_input(value: object, where: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_SEALED_INPUT:
        raise ReviewInvalid(f"{where} must be sealed text of at most {MAX_SEALED_INPUT} bytes")
    return value


ProofKind = Literal["token", "certificate"]
MAX_CERTIFICATE = 16384
_PROOF_DOMAIN = b"securekeys.io/v1/access-proof\x00"


@dataclass(frozen=True)
class CallerProof:
    """The caller's own credential, for the gateway: a sealed bearer token, or a client
    certificate (PEM) with a signature over ``proof_message`` made at ``issued_at``."""

    kind: ProofKind
    sealed_token: str = field(default="", repr=False)
    certificate: str = ""
    signature: str = ""
    issued_at: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.kind == "token":
            return {"kind": "token", "sealedToken": self.sealed_token, "issuedAt": self.issued_at}
        return {
            "kind": "certificate",
            "certificate": self.certificate,
            "signature": self.signature,
            "issuedAt": self.issued_at,
        }


def parse_proof(value: object) -> CallerProof | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ReviewInvalid("spec.proof must be an object")
    kind = value.get("kind")
    issued = value.get("issuedAt")
    if type(issued) is not int or issued <= 0:
        raise ReviewInvalid("spec.proof.issuedAt must be a Unix time")
    if kind == "token":
        token = _sealed_input(value.get("sealedToken"), "spec.proof.sealedToken")
        if not token:
            raise ReviewInvalid("spec.proof.sealedToken is required")
        return CallerProof("token", sealed_token=token, issued_at=issued)
    if kind == "certificate":
        certificate, signature = value.get("certificate"), value.get("signature")
        if not isinstance(certificate, str) or not 0 < len(certificate) <= MAX_CERTIFICATE:
            raise ReviewInvalid("spec.proof.certificate must be PEM text")
        if not isinstance(signature, str) or not 0 < len(signature) <= 2048:
            raise ReviewInvalid("spec.proof.signature must be base64")
        return CallerProof(
            "certificate", certificate=certificate, signature=signature, issued_at=issued
        )
    raise ReviewInvalid("spec.proof.kind must be token or certificate")


def proof_message(namespace: str, spec: ReviewSpec, issued_at: int) -> bytes:
    """What a certificate proof signs: everything that decides the answer and where it
    goes (the recipient key), and when."""
    bound = {
        "namespace": namespace,
        "operation": spec.operation,
        "key": spec.key,
        "version": spec.version,
        "previous": spec.previous,
        "recipientKey": (
            base64.b64encode(spec.recipient.public_key).decode() if spec.recipient else ""
        ),
        "issuedAt": issued_at,
    }
    return _PROOF_DOMAIN + json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()


def proof_binding(namespace: str, spec: ReviewSpec, issued_at: int) -> str:
    """What a token proof is sealed to: a digest of ``proof_message``, so the sealed
    token opens only in a review asking exactly this, issued at this time."""
    return "proof-" + hashlib.sha256(proof_message(namespace, spec, issued_at)).hexdigest()


@dataclass(frozen=True)
class ReviewSpec:
    """What the caller asks: parsed once at the gateway's edge."""

    operation: Operation
    key: str = ""
    version: int | None = None
    previous: bool = False
    recipient: Recipient | None = None
    client: str = ""
    sealed_token: str = field(default="", repr=False)
    sealed_code: str = field(default="", repr=False)
    proof: CallerProof | None = None

    def to_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"operation": self.operation}
        if self.key:
            spec["key"] = self.key
        if self.version is not None:
            spec["version"] = self.version
        if self.previous:
            spec["previous"] = True
        if self.recipient is not None:
            spec["recipientKey"] = base64.b64encode(self.recipient.public_key).decode()
        if self.client:
            spec["client"] = self.client
        if self.sealed_token:
            spec["sealedToken"] = self.sealed_token
        if self.sealed_code:
            spec["sealedCode"] = self.sealed_code
        if self.proof is not None:
            spec["proof"] = self.proof.to_json()
        return spec


def parse_spec(spec: object) -> ReviewSpec:
    """The spec of a review object; raises ``ReviewInvalid``."""
    parsed = _parse_spec(spec)
    proof = parse_proof(spec.get("proof")) if isinstance(spec, Mapping) else None
    if proof is not None and parsed.recipient is None:
        raise ReviewInvalid("spec.proof needs spec.recipientKey (its binding)")
    return dataclasses.replace(parsed, proof=proof)


def _parse_spec(spec: object) -> ReviewSpec:
    if not isinstance(spec, Mapping):
        raise ReviewInvalid("a KeyAccessReview needs a spec")
    operation = spec.get("operation")
    if operation not in OPERATIONS:
        raise ReviewInvalid(
            f"spec.operation must be one of {', '.join(OPERATIONS)} (got {_prefix(operation)})"
        )
    client = spec.get("client", "")
    if not isinstance(client, str) or len(client) > MAX_CLIENT:
        raise ReviewInvalid(f"spec.client must be text of at most {MAX_CLIENT} characters")
    client = "".join(c for c in client if c.isprintable())
    token = _sealed_input(spec.get("sealedToken"), "spec.sealedToken")
    code = _sealed_input(spec.get("sealedCode"), "spec.sealedCode")
    raw_recipient = spec.get("recipientKey")
    if operation == "list":
        recipient = _recipient(raw_recipient) if raw_recipient is not None else None
        if token and recipient is None:
            raise ReviewInvalid("spec.sealedToken needs spec.recipientKey (its binding)")
        only = spec.get("key")
        return ReviewSpec(
            "list",
            key=_key_name(only, "spec.key") if only is not None else "",
            recipient=recipient,
            client=client,
            sealed_token=token,
        )
    if operation in MFA_OPERATIONS:
        if operation != "enroll" and not code:
            raise ReviewInvalid(f"spec.sealedCode is required for {operation}")
        return ReviewSpec(
            operation,
            recipient=_recipient(raw_recipient),
            client=client,
            sealed_token=token,
            sealed_code=code if operation != "enroll" else "",
        )
    key = _key_name(spec.get("key"), "spec.key")
    if operation == "rotate":
        if spec.get("version") is not None or spec.get("previous", False) is not False:
            raise ReviewInvalid("spec.version and spec.previous are for read, not rotate")
        return ReviewSpec(
            "rotate",
            key=key,
            recipient=_recipient(raw_recipient),
            client=client,
            sealed_token=token,
        )
    version = spec.get("version")
    if version is not None and (type(version) is not int or not 1 <= version <= MAX_VERSION):
        raise ReviewInvalid(f"spec.version must be a version number (got {_prefix(version)})")
    previous = spec.get("previous", False)
    if not isinstance(previous, bool):
        raise ReviewInvalid("spec.previous must be true or false")
    if previous and version is not None:
        raise ReviewInvalid("spec.previous and spec.version exclude each other")
    return ReviewSpec(
        "read",
        key=key,
        version=version,
        previous=previous,
        recipient=_recipient(raw_recipient),
        client=client,
        sealed_token=token,
    )


def review_object(spec: ReviewSpec, namespace: str) -> dict[str, Any]:
    """The object a client dry-run creates (a generated name: nothing is stored)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"generateName": f"{spec.operation}-", "namespace": namespace},
        "spec": spec.to_json(),
    }


# --- the answer ------------------------------------------------------------------------


@dataclass(frozen=True)
class AnsweredKey:
    """One version of one key, its material sealed to the caller's ephemeral key."""

    name: str
    version: int
    fingerprint: str
    format: str
    env_name: str
    sealed: str
    expires_at: str
    """Until when the caller may keep it (the granting role's ``ttl``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "format": self.format,
            "envName": self.env_name,
            "sealed": self.sealed,
            "expiresAt": self.expires_at,
        }


@dataclass(frozen=True)
class ListedVersion:
    version: int
    state: str
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "fingerprint": self.fingerprint}


MAX_LISTED_STRAGGLERS = 16


@dataclass(frozen=True)
class ListedRollout:
    """How far a version has reached the pods that consume the key, as the gateways wrote
    it in the ApiKey's ``status.rollout`` (docs/rollout.md): counts and the first pods
    behind, by name."""

    version: int
    consumers: int
    current: int
    stragglers: tuple[str, ...] = ()
    unnamed: int = 0
    rolled_out_at: str = ""

    def to_json(self) -> dict[str, Any]:
        rollout: dict[str, Any] = {
            "version": self.version,
            "consumers": self.consumers,
            "current": self.current,
            "stragglers": list(self.stragglers),
            "unnamedStragglers": self.unnamed,
        }
        if self.rolled_out_at:
            rollout["rolledOutAt"] = self.rolled_out_at
        return rollout


def _listed_rollout(value: object) -> ListedRollout | None:
    if not isinstance(value, Mapping):
        return None
    stragglers = value.get("stragglers") or ()
    if not isinstance(stragglers, list | tuple):
        raise ReviewInvalid("status.keys[].rollout.stragglers is not a list")
    return ListedRollout(
        version=_int(value.get("version"), "rollout.version"),
        consumers=_int(value.get("consumers"), "rollout.consumers"),
        current=_int(value.get("current"), "rollout.current"),
        stragglers=tuple(str(s)[:MAX_NAME] for s in stragglers[:MAX_LISTED_STRAGGLERS]),
        unnamed=_int(value.get("unnamedStragglers", 0), "rollout.unnamedStragglers"),
        rolled_out_at=str(value.get("rolledOutAt") or "")[:64],
    )


@dataclass(frozen=True)
class ListedKey:
    """A key the caller may read, list or rotate: metadata only, never material."""

    name: str
    current_version: int
    versions: tuple[ListedVersion, ...]
    permissions: tuple[str, ...]
    require_mfa: bool
    rollout: ListedRollout | None = None
    """Its rollout, as far as the gateways have written one."""
    last_rotation_request: str = ""
    """The rotate-requested-at value the controller last honoured."""

    def to_json(self) -> dict[str, Any]:
        listed: dict[str, Any] = {
            "name": self.name,
            "currentVersion": self.current_version,
            "versions": [v.to_json() for v in self.versions],
            "permissions": list(self.permissions),
            "requireMFA": self.require_mfa,
        }
        if self.rollout is not None:
            listed["rollout"] = self.rollout.to_json()
        if self.last_rotation_request:
            listed["lastRotationRequest"] = self.last_rotation_request
        return listed


SECRET_NAMES = {"enroll": "mfa-otpauth-uri", "login": "access-token"}
"""What a sealed answer secret is bound to (its name), per operation."""


@dataclass(frozen=True)
class AnsweredSecret:
    """An ``otpauth://`` URI (enroll) or an access token (login), sealed to the
    caller's ephemeral key under the name ``SECRET_NAMES[operation]``."""

    sealed: str
    expires_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"sealed": self.sealed, "expiresAt": self.expires_at}


@dataclass(frozen=True)
class ReviewAnswer:
    allowed: bool
    reason: str
    message: str
    audit_id: str = ""
    key: AnsweredKey | None = None
    keys: tuple[ListedKey, ...] = ()
    secret: AnsweredSecret | None = None
    rotation_request: str = ""

    def to_json(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "allowed": self.allowed,
            "reason": self.reason,
            "message": self.message,
        }
        if self.audit_id:
            status["auditId"] = self.audit_id
        if self.key is not None:
            status["key"] = self.key.to_json()
        if self.keys:
            status["keys"] = [k.to_json() for k in self.keys]
        if self.secret is not None:
            status["secret"] = self.secret.to_json()
        if self.rotation_request:
            status["rotationRequest"] = self.rotation_request
        return status


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ReviewInvalid(f"{where} is missing")
    return value


def _int(value: object, where: str) -> int:
    if type(value) is not int:
        raise ReviewInvalid(f"{where} is not a number")
    return value


def parse_answer(status: object) -> ReviewAnswer:
    """The gateway's answer in a returned review's status; raises ``ReviewInvalid``."""
    if not isinstance(status, Mapping) or not isinstance(status.get("allowed"), bool):
        raise ReviewInvalid(
            "the review came back unanswered: is the gateway's access webhook installed?"
        )
    key = None
    raw_key = status.get("key")
    if isinstance(raw_key, Mapping):
        key = AnsweredKey(
            name=_str(raw_key.get("name"), "status.key.name"),
            version=_int(raw_key.get("version"), "status.key.version"),
            fingerprint=_str(raw_key.get("fingerprint"), "status.key.fingerprint"),
            format=_str(raw_key.get("format"), "status.key.format"),
            env_name=str(raw_key.get("envName") or ""),
            sealed=_str(raw_key.get("sealed"), "status.key.sealed"),
            expires_at=str(raw_key.get("expiresAt") or ""),
        )
    keys = []
    for item in status.get("keys") or ():
        if not isinstance(item, Mapping):
            raise ReviewInvalid("status.keys holds a non-object")
        keys.append(
            ListedKey(
                name=_str(item.get("name"), "status.keys[].name"),
                current_version=_int(item.get("currentVersion", 0), "currentVersion"),
                versions=tuple(
                    ListedVersion(
                        _int(v.get("version"), "version"),
                        str(v.get("state", "")),
                        str(v.get("fingerprint", "")),
                    )
                    for v in item.get("versions") or ()
                    if isinstance(v, Mapping)
                ),
                permissions=tuple(str(p) for p in item.get("permissions") or ()),
                require_mfa=item.get("requireMFA") is True,
                rollout=_listed_rollout(item.get("rollout")),
                last_rotation_request=str(item.get("lastRotationRequest") or "")[:MAX_NAME],
            )
        )
    secret = None
    raw_secret = status.get("secret")
    if isinstance(raw_secret, Mapping):
        secret = AnsweredSecret(
            _str(raw_secret.get("sealed"), "status.secret.sealed"),
            str(raw_secret.get("expiresAt") or ""),
        )
    return ReviewAnswer(
        allowed=status["allowed"],
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
        audit_id=str(status.get("auditId") or ""),
        key=key,
        keys=tuple(keys),
        secret=secret,
        rotation_request=str(status.get("rotationRequest") or "")[:MAX_NAME],
    )


def seal_secret(
    recipient: Recipient, value: bytes | bytearray, *, namespace: str, operation: str
) -> str:
    """Seal an enrolment URI or access token to the caller's ephemeral key."""
    return seal_to_recipient(recipient, value, namespace=namespace, name=SECRET_NAMES[operation])


def open_secret(
    private: RecipientPrivateKey, sealed: str, *, namespace: str, operation: str
) -> bytearray:
    """Open an answered secret (a fresh buffer the caller zeroes)."""
    return open_sealed(private, sealed, namespace=namespace, name=SECRET_NAMES[operation])


def seal_answer(
    recipient: Recipient, plaintext: bytes | bytearray, *, namespace: str, apikey: str, version: int
) -> str:
    """Seal one version to the caller's ephemeral key; the caller zeroes ``plaintext``."""
    return seal_to_recipient(
        recipient, plaintext, namespace=namespace, name=sealed_name(apikey, version)
    )


def open_answer(
    private: RecipientPrivateKey, sealed: str, *, namespace: str, apikey: str, version: int
) -> bytearray:
    """Open a sealed answer (a fresh buffer the caller zeroes); ``SealedSourceInvalid``
    if it was sealed to another key, for another key, version or namespace, or altered."""
    return open_sealed(private, sealed, namespace=namespace, name=sealed_name(apikey, version))
