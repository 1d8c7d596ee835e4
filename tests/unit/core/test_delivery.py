"""Tests of the broker <-> sidecar protocol module (``secure_keys.core.delivery``)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from secure_keys.core import delivery
from secure_keys.core.delivery import (
    ErrorMessage,
    HeartbeatMessage,
    HeldVersions,
    KeyState,
    ProtocolError,
    Refusal,
    StateMessage,
    StreamRequest,
    VersionState,
)
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.sealing import RecipientPrivateKey

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
FP = "hs256:" + "ab" * 16


def _state() -> StateMessage:
    return StateMessage(
        seq=1,
        keys={
            "stripe-live": KeyState(
                file_name="stripe-live",
                format="env",
                env_name="STRIPE_KEY",
                mode="0440",
                current=VersionState(3, FP, None, "c2VhbGVk"),
                previous=VersionState(2, FP, NOW, None),
                lease_expires_at=NOW,
            )
        },
        revoked=("gone",),
        heartbeat_seconds=10,
    )


def test_messages_round_trip() -> None:
    for message in (_state(), HeartbeatMessage(7, NOW), ErrorMessage("PodDeleted", "bye")):
        line = delivery.encode_message(message)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert delivery.parse_message(line) == message


def test_request_round_trip() -> None:
    recipient = RecipientPrivateKey.generate().public()
    request = StreamRequest(("a", "b.c"), recipient, {"a": HeldVersions(3, 2)})
    assert delivery.parse_stream_request(request.to_json()) == request
    assert delivery.parse_refusal(Refusal("KeyNotGranted", "no").to_json()) == Refusal(
        "KeyNotGranted", "no"
    )


def _request(**override: object) -> bytes:
    body: dict[str, object] = {
        "keys": ["a"],
        "recipient": base64.b64encode(RecipientPrivateKey.generate().public().public_key).decode(),
        "have": {},
    }
    body.update(override)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"keys": []}, "keys must be"),
        ({"keys": ["A"]}, "ApiKey name"),
        ({"keys": ["a", "a"]}, "repeat"),
        ({"keys": [f"k{i}" for i in range(65)]}, "keys must be"),
        ({"recipient": "AAAA"}, "recipient is invalid"),
        ({"recipient": base64.b64encode(bytes(32)).decode()}, "low-order"),
        ({"recipient": "not base64!"}, "base64"),
        ({"have": {"b": {"current": 1}}}, "not requested"),
        ({"have": {"a": {"current": 0}}}, "current"),
        ({"have": {"a": {"current": True}}}, "current"),
    ],
)
def test_bad_requests_are_refused(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        delivery.parse_stream_request(_request(**override))


def test_bad_lines_are_refused() -> None:
    good = _state().to_json()
    bad_lines: list[object] = [
        "not json",
        [],
        {"type": "other"},
        {**good, "seq": 0},
        {**good, "revoked": ["stripe-live"]},
    ]
    state = good["keys"]["stripe-live"]
    for member, value in (
        ("fileName", "../x"),
        ("fileName", "k.previous"),
        ("mode", "0644"),
        ("format", "yaml"),
        ("leaseExpiresAt", "yesterday"),
        ("previous", {**state["previous"], "version": 4}),
        ("current", {**state["current"], "fingerprint": "sha:1"}),
    ):
        bad_lines.append({**good, "keys": {"stripe-live": {**state, member: value}}})
    for line in bad_lines:
        with pytest.raises(ProtocolError):
            delivery.parse_message(line if isinstance(line, str) else json.dumps(line))


def test_unknown_members_are_ignored() -> None:
    body = {**HeartbeatMessage(1, NOW).to_json(), "future": 1}
    assert delivery.parse_message(json.dumps(body)) == HeartbeatMessage(1, NOW)


def test_sealed_material_is_bound_to_key_version_and_namespace() -> None:
    private = RecipientPrivateKey.generate()
    sealed = delivery.seal_for_sidecar(
        private.public(), b"sk_live_1", namespace="payments", apikey="stripe", version=3
    )
    opened = delivery.open_delivered(
        private, sealed, namespace="payments", apikey="stripe", version=3
    )
    assert bytes(opened) == b"sk_live_1"
    for namespace, apikey, version in (
        ("other", "stripe", 3),
        ("payments", "x", 3),
        ("payments", "stripe", 2),
    ):
        with pytest.raises(SealedSourceInvalid):
            delivery.open_delivered(
                private, sealed, namespace=namespace, apikey=apikey, version=version
            )
    with pytest.raises(SealedSourceInvalid):
        delivery.open_delivered(
            RecipientPrivateKey.generate(), sealed, namespace="payments", apikey="stripe", version=3
        )
