"""``gateway.access.proof``: a review's caller must hold the credential the API server
authenticated. A certificate proof must come from the cluster's client CA, name the
caller, be fresh and sign this very review; a token proof must authenticate as the
caller, be fresh, and open only in this very review (sealed under its proof binding).
The API server's two answers (the client CA ConfigMap, a TokenReview) are scripted
here; the e2e module runs the same checks against the real one."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secure_keys.core.accessreview import (
    CallerProof,
    ReviewSpec,
    open_request_secret,
    proof_binding,
    proof_message,
    seal_request_secret,
)
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.gateway.access.proof import ProofChecker
from secure_keys.gateway.broker.policy import Refusal
from secure_keys_dev.pki import CertificateAuthority

CLUSTER_CA = CertificateAuthority.generate("cluster-client-ca")
OTHER_CA = CertificateAuthority.generate("someone-elses-ca")
SPEC = ReviewSpec("read", key="stripe", recipient=RecipientPrivateKey.generate().public())
CLUSTER_KEY = RecipientPrivateKey.generate()
"""The controller's recipient key, which the gateway opens sealed tokens with."""


def _checker(token_user: str | None = None) -> ProofChecker:
    async def request(method: str, path: str, **_: Any) -> dict[str, Any]:
        if method == "GET":
            return {"data": {"client-ca-file": CLUSTER_CA.cert_pem.decode()}}
        authenticated = token_user is not None
        return {"status": {"authenticated": authenticated, "user": {"username": token_user}}}

    return ProofChecker(request)


def _certificate_proof(
    ca: CertificateAuthority, user: str, spec: ReviewSpec = SPEC, issued: int | None = None
) -> CallerProof:
    pair = ca.issue_client(user)
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    at = issued if issued is not None else int(time.time())
    signature = key.sign(proof_message("payments", spec, at), ec.ECDSA(hashes.SHA256()))
    return CallerProof(
        "certificate",
        certificate=pair.cert_pem.decode(),
        signature=base64.b64encode(signature).decode(),
        issued_at=at,
    )


def _token_proof(spec: ReviewSpec = SPEC, issued: int | None = None) -> CallerProof:
    at = issued if issued is not None else int(time.time())
    assert spec.recipient is not None
    sealed = seal_request_secret(
        CLUSTER_KEY.public(),
        b"sa-token",
        namespace="payments",
        recipient=spec.recipient,
        binding=proof_binding("payments", spec, at),
    )
    return CallerProof("token", sealed_token=sealed, issued_at=at)


def _check(
    checker: ProofChecker, proof: CallerProof | None, user: str = "alice", spec: ReviewSpec = SPEC
) -> Refusal | None:
    async def open_token(sealed: str, binding: str) -> bytearray | Refusal:
        assert spec.recipient is not None
        try:
            return open_request_secret(
                CLUSTER_KEY, sealed, namespace="payments", recipient=spec.recipient, binding=binding
            )
        except SealedSourceInvalid:
            return Refusal("SealedInputInvalid", "does not open for this review")

    return asyncio.run(
        checker.check(
            proof,
            username=user,
            namespace="payments",
            spec=spec,
            open_token=open_token,
            now=datetime.now(UTC),
        )
    )


def test_the_callers_own_certificate_signing_this_review_passes() -> None:
    assert _check(_checker(), _certificate_proof(CLUSTER_CA, "alice")) is None


def test_no_proof_another_ca_another_user_a_stale_or_moved_signature_fail() -> None:
    checker = _checker()
    other_spec = ReviewSpec("read", key="github", recipient=SPEC.recipient)
    cases = {
        "no proof": None,
        "another CA": _certificate_proof(OTHER_CA, "alice"),
        "another user": _certificate_proof(CLUSTER_CA, "mallory"),
        "stale": _certificate_proof(CLUSTER_CA, "alice", issued=int(time.time()) - 600),
        "another review": _certificate_proof(CLUSTER_CA, "alice", other_spec),
    }
    for case, proof in cases.items():
        refusal = _check(checker, proof)
        assert refusal is not None, case
        assert refusal.reason == "ProofInvalid", case


def test_a_token_proof_must_authenticate_as_the_caller() -> None:
    token = _token_proof()
    assert _check(_checker("alice"), token) is None
    refusal = _check(_checker("mallory"), token)
    assert refusal is not None
    assert "does not authenticate as the caller" in refusal.message
    assert _check(_checker(None), token) is not None


def test_a_token_proof_opens_only_in_its_own_review_and_only_while_fresh() -> None:
    """A review copied from an audit log cannot be rewritten (a read into a rotate, another
    key) nor replayed minutes later: its sealed token opens only under the digest of
    exactly what was asked and when."""
    checker = _checker("alice")
    rotate = ReviewSpec("rotate", key="stripe", recipient=SPEC.recipient)
    other_key = ReviewSpec("read", key="github", recipient=SPEC.recipient)
    seen = _token_proof()
    for spec in (rotate, other_key):
        refusal = _check(checker, seen, spec=spec)
        assert refusal is not None
        assert refusal.reason == "SealedInputInvalid"
    stale = _check(checker, _token_proof(issued=int(time.time()) - 600))
    assert stale is not None
    assert "not fresh" in stale.message
    moved = CallerProof("token", sealed_token=seen.sealed_token, issued_at=seen.issued_at + 1)
    refusal = _check(checker, moved)
    assert refusal is not None
    assert refusal.reason == "SealedInputInvalid"
