"""``gateway.access.proof``: a review's caller must hold the credential the API server
authenticated. A certificate proof must come from the cluster's client CA, name the
caller, be fresh and sign this very review; a token proof must authenticate as the
caller. The API server's two answers (the client CA ConfigMap, a TokenReview) are
scripted here; the e2e module runs the same checks against the real one."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secure_keys.core.accessreview import CallerProof, ReviewSpec, proof_message
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.gateway.access.proof import ProofChecker
from secure_keys.gateway.broker.policy import Refusal
from secure_keys_dev.pki import CertificateAuthority

CLUSTER_CA = CertificateAuthority.generate("cluster-client-ca")
OTHER_CA = CertificateAuthority.generate("someone-elses-ca")
SPEC = ReviewSpec("read", key="stripe", recipient=RecipientPrivateKey.generate().public())


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


def _check(checker: ProofChecker, proof: CallerProof | None, user: str = "alice") -> Refusal | None:
    async def open_token(sealed: str) -> bytearray:
        return bytearray(sealed.encode())  # the sealing is core.accessreview's, tested there

    return asyncio.run(
        checker.check(
            proof,
            username=user,
            namespace="payments",
            spec=SPEC,
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
    token = CallerProof("token", sealed_token="sa-token")
    assert _check(_checker("alice"), token) is None
    refusal = _check(_checker("mallory"), token)
    assert refusal is not None
    assert "does not authenticate as the caller" in refusal.message
    assert _check(_checker(None), token) is not None
