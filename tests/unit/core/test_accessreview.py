"""``core.accessreview``: the KeyAccessReview spec is parsed strictly, and an answer
opens only with the caller's ephemeral key, as the key, version and namespace it names."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from secure_keys.core import accessreview as wire
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.sealing import RecipientPrivateKey, open_sealed

PRIVATE = RecipientPrivateKey.generate()
RECIPIENT_B64 = base64.b64encode(PRIVATE.public().public_key).decode()


def test_a_read_spec_round_trips() -> None:
    spec = wire.ReviewSpec("read", key="stripe", version=3, recipient=PRIVATE.public(), client="x")
    assert wire.parse_spec(spec.to_json()) == spec
    body = wire.review_object(spec, "payments")
    assert body["kind"] == "KeyAccessReview"
    assert body["metadata"] == {"generateName": "read-", "namespace": "payments"}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (None, "needs a spec"),
        ({"operation": "delete"}, "one of read, list, rotate"),
        ({"operation": "rotate", "recipientKey": RECIPIENT_B64}, "spec.key"),
        ({"operation": "rotate", "key": "k"}, "recipientKey"),
        ({"operation": "rotate", "key": "k", "version": 2, "recipientKey": RECIPIENT_B64}, "read"),
        (
            {"operation": "rotate", "key": "k", "previous": True, "recipientKey": RECIPIENT_B64},
            "not rotate",
        ),
        ({"operation": "read", "recipientKey": RECIPIENT_B64}, "spec.key"),
        ({"operation": "read", "key": "../x", "recipientKey": RECIPIENT_B64}, "spec.key"),
        ({"operation": "read", "key": "k"}, "recipientKey"),
        ({"operation": "read", "key": "k", "recipientKey": "AAAA"}, "recipientKey"),
        (
            {"operation": "read", "key": "k", "recipientKey": base64.b64encode(bytes(32)).decode()},
            "low-order",
        ),
        ({"operation": "read", "key": "k", "version": 0, "recipientKey": RECIPIENT_B64}, "version"),
        (
            {"operation": "read", "key": "k", "version": True, "recipientKey": RECIPIENT_B64},
            "version",
        ),
        (
            {
                "operation": "read",
                "key": "k",
                "version": 2,
                "previous": True,
                "recipientKey": RECIPIENT_B64,
            },
            "exclude",
        ),
        ({"operation": "list", "client": "x" * 65}, "client"),
    ],
)
def test_a_malformed_spec_is_refused_saying_what_is_wrong(spec: Any, says: str) -> None:
    with pytest.raises(wire.ReviewInvalid, match=says):
        wire.parse_spec(spec)


def test_an_answer_opens_only_as_the_key_version_and_namespace_it_was_sealed_for() -> None:
    sealed = wire.seal_answer(PRIVATE.public(), b"sk-live-1", namespace="ns", apikey="k", version=2)
    assert wire.open_answer(PRIVATE, sealed, namespace="ns", apikey="k", version=2) == b"sk-live-1"
    for namespace, apikey, version in (("other", "k", 2), ("ns", "j", 2), ("ns", "k", 1)):
        with pytest.raises(SealedSourceInvalid):
            wire.open_answer(PRIVATE, sealed, namespace=namespace, apikey=apikey, version=version)
    with pytest.raises(SealedSourceInvalid):
        wire.open_answer(
            RecipientPrivateKey.generate(), sealed, namespace="ns", apikey="k", version=2
        )


def test_an_unanswered_review_says_the_webhook_is_missing() -> None:
    with pytest.raises(wire.ReviewInvalid, match="access webhook"):
        wire.parse_answer(None)


def test_a_rotate_spec_round_trips_and_its_answer_names_the_request() -> None:
    spec = wire.ReviewSpec("rotate", key="stripe", recipient=PRIVATE.public(), client="x")
    assert wire.parse_spec(spec.to_json()) == spec
    value = "2026-01-01T00:00:00Z-ab"
    answer = wire.ReviewAnswer(True, "RotationRequested", "by r", rotation_request=value)
    assert answer.to_json()["rotationRequest"] == value
    assert wire.parse_answer(answer.to_json()) == answer


def test_an_answer_round_trips() -> None:
    answer = wire.ReviewAnswer(
        True,
        "Granted",
        "granted by KeyRole r",
        audit_id="abc:3",
        key=wire.AnsweredKey("k", 2, "f", "raw", "", "c2VhbGVk", "2025-01-01T00:00:00Z"),
    )
    assert wire.parse_answer(answer.to_json()) == answer


def test_a_sealed_code_or_token_opens_only_in_its_own_review_and_purpose() -> None:
    cluster = RecipientPrivateKey.generate()
    mine, theirs = PRIVATE.public(), RecipientPrivateKey.generate().public()
    sealed = wire.seal_request_secret(cluster.public(), b"123456", namespace="ns", recipient=mine)
    assert wire.open_request_secret(cluster, sealed, namespace="ns", recipient=mine) == b"123456"
    with pytest.raises(SealedSourceInvalid):  # copied into a review with another recipient
        wire.open_request_secret(cluster, sealed, namespace="ns", recipient=theirs)
    with pytest.raises(SealedSourceInvalid):  # or another namespace
        wire.open_request_secret(cluster, sealed, namespace="other", recipient=mine)
    with pytest.raises(SealedSourceInvalid):  # never an ApiKey's sealed source
        open_sealed(cluster, sealed, namespace="ns", name=wire.request_binding(mine))


def test_a_sealed_token_bound_to_one_review_opens_in_no_other() -> None:
    """An MFA token or code lifted from a copied review (its recipient key kept) into a
    rotate, or another key, does not open: it is bound to the review's proof binding."""
    cluster = RecipientPrivateKey.generate()
    read = wire.ReviewSpec("read", key="stripe", recipient=PRIVATE.public())
    issued = 1_800_000_000
    sealed = wire.seal_request_secret(
        cluster.public(),
        b"access-token",
        namespace="ns",
        recipient=PRIVATE.public(),
        binding=wire.proof_binding("ns", read, issued),
    )
    opened = wire.open_request_secret(
        cluster,
        sealed,
        namespace="ns",
        recipient=PRIVATE.public(),
        binding=wire.proof_binding("ns", read, issued),
    )
    assert opened == b"access-token"
    rotate = wire.ReviewSpec("rotate", key="stripe", recipient=PRIVATE.public())
    for spec, at in ((rotate, issued), (read, issued + 1)):
        with pytest.raises(SealedSourceInvalid):
            wire.open_request_secret(
                cluster,
                sealed,
                namespace="ns",
                recipient=PRIVATE.public(),
                binding=wire.proof_binding("ns", spec, at),
            )
    with pytest.raises(SealedSourceInvalid):  # nor under the recipient-only binding
        wire.open_request_secret(cluster, sealed, namespace="ns", recipient=PRIVATE.public())
