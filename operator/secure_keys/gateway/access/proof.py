"""Owns checking a review's caller proof: the caller holds the credential the API server
authenticated, so a forged AdmissionReview posted straight to the gateway gets nothing.

The webhook endpoint is on the gateway's TLS port, which pods reach for the broker; the
API server does not authenticate itself to webhooks unless a cluster admin configures
it, so ``userInfo`` alone proves nothing to the gateway. The proof does
(``core.accessreview.CallerProof``):

* ``token``: the bearer token the client authenticates with (a ServiceAccount token, an
  exec plugin's or OIDC token), sealed to the cluster key under ``proof_binding`` (a
  digest of ``proof_message``: the review's namespace, operation, key, version choice,
  recipient key and ``issuedAt``, within ``FRESHNESS``). The gateway asks the API server
  (``TokenReview``, no audience: the API server's own) and requires the user name it
  returns to be ``userInfo``'s. Answers are cached by the token's SHA-256 for
  ``TOKEN_CACHE_SECONDS``.
* ``certificate``: the client certificate and a signature by its key over
  ``proof_message`` (namespace, operation, key, version, recipient key, ``issuedAt``).
  The certificate must be issued directly by a certificate of the cluster's client CA
  bundle (ConfigMap ``kube-system/extension-apiserver-authentication``, ``client-ca-file``:
  what the API server itself trusts; intermediates are not followed), be valid now,
  allow client authentication, and name ``userInfo``'s user as its CN; ``issuedAt``
  within ``FRESHNESS`` of the gateway's clock.

Replaying a seen proof gains nothing: it is bound to the review's recipient key, and the
answer is sealed to that key, whose private half only the real caller has. Rewriting a
seen review (another operation or key: a read turned into a rotate, whose effect needs
no answer) breaks its proof, and so does replaying it after ``FRESHNESS``; an exact
replay within it is refused by the replica that saw it (``ReviewReplayed``), and by any
replica once a rotate it asked for is pending.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_keys.core import accessreview as wire
from secure_keys.gateway.broker.policy import Refusal

TOKENREVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
CLIENT_CA_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
TOKEN_CACHE_SECONDS = 60.0
CA_CACHE_SECONDS = 300.0
FRESHNESS = timedelta(minutes=2)

Request = Callable[..., Awaitable[Any]]
"""``KubeApi.request``: the two API calls this module makes."""


def _refused(message: str) -> Refusal:
    return Refusal("ProofInvalid", message)


class ProofChecker:
    def __init__(self, request: Request, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._request = request
        self._clock = clock
        self._tokens: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._cas: tuple[float, list[x509.Certificate]] | None = None

    async def token_user(self, token: str) -> str | None:
        """The user the API server authenticates ``token`` as, or ``None``."""
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._tokens.get(digest)
        if cached is not None and now - cached[0] < TOKEN_CACHE_SECONDS:
            return cached[1] or None
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        answer = await self._request("POST", TOKENREVIEWS_PATH, body=body)
        status = answer.get("status") or {}
        user = (status.get("user") or {}).get("username") if status.get("authenticated") else None
        self._tokens[digest] = (now, user if isinstance(user, str) else "")
        while len(self._tokens) > 10_000:
            self._tokens.popitem(last=False)
        return user if isinstance(user, str) else None

    async def client_cas(self) -> list[x509.Certificate]:
        now = self._clock()
        if self._cas is not None and now - self._cas[0] < CA_CACHE_SECONDS:
            return self._cas[1]
        namespace, name = CLIENT_CA_CONFIGMAP
        configmap = await self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        bundle = (configmap.get("data") or {}).get("client-ca-file") or ""
        cas = x509.load_pem_x509_certificates(bundle.encode()) if bundle else []
        self._cas = (now, cas)
        return cas

    async def check(
        self,
        proof: wire.CallerProof | None,
        *,
        username: str,
        namespace: str,
        spec: wire.ReviewSpec,
        open_token: Callable[[str, str], Awaitable[bytearray | Refusal]],
        now: datetime,
    ) -> Refusal | None:
        """``None`` if the proof shows the caller is ``username``, else why not.
        ``open_token(sealed, binding)`` opens a sealed token under its binding."""
        if proof is None:
            return _refused(
                "the review carries no proof of the caller's credential (use secure-keys "
                "or KeyManager, which add it)"
            )
        if abs(now.timestamp() - proof.issued_at) > FRESHNESS.total_seconds():
            return _refused("the proof is not fresh (check this machine's clock)")
        if proof.kind == "token":
            binding = wire.proof_binding(namespace, spec, proof.issued_at)
            opened = await open_token(proof.sealed_token, binding)
            if isinstance(opened, Refusal):
                return opened
            try:
                token = opened.decode("ascii")
            except UnicodeDecodeError:
                return _refused("the proof's token is not a token")
            user = await self.token_user(token)
            del token
            if user != username:
                return _refused("the proof's token does not authenticate as the caller")
            return None
        return await self._check_certificate(proof, username, namespace, spec, now)

    async def _check_certificate(
        self,
        proof: wire.CallerProof,
        username: str,
        namespace: str,
        spec: wire.ReviewSpec,
        now: datetime,
    ) -> Refusal | None:
        try:
            chain = x509.load_pem_x509_certificates(proof.certificate.encode())
            signature = base64.b64decode(proof.signature, validate=True)
        except (ValueError, binascii.Error):
            return _refused("the proof's certificate or signature does not parse")
        leaf = chain[0]
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            return _refused("the proof's certificate is not valid now")
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
                return _refused("the proof's certificate is not for client authentication")
        except x509.ExtensionNotFound:
            pass
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != username:
            return _refused("the proof's certificate names another user")
        cas = await self.client_cas()
        if not any(_issued_by(leaf, ca) for ca in cas):
            return _refused("the proof's certificate is not from the cluster's client CA")
        message = wire.proof_message(namespace, spec, proof.issued_at)
        if not _signed(leaf, signature, message):
            return _refused("the proof's signature does not verify")
        return None


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _signed(leaf: x509.Certificate, signature: bytes, message: bytes) -> bool:
    key = leaf.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def utc_now() -> datetime:
    return datetime.now(UTC)
