"""The gateway's rotate policy (deploy/gateway-self-policy.yaml, "rotate-only") and the
code on either side of it agree: the request form it admits is the one
``core.stamps.rotation_request`` writes, the annotation is ``kube.names``'s, and its
refusal while a rotation is under way carries the text the gateway turns into
``RotationPending``. The policy's behaviour on a real API server is in
tests/e2e/test_service_account_policies.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from secure_keys.core.stamps import rotation_request
from secure_keys.gateway.access.reviews import POLICY_PENDING
from secure_keys.kube.names import ROTATE_ANNOTATION

REPO = Path(__file__).resolve().parents[3]


def _policy() -> dict[str, Any]:
    (policy,) = [
        d
        for d in yaml.safe_load_all((REPO / "deploy/gateway-self-policy.yaml").read_text())
        if d
        and d["kind"] == "ValidatingAdmissionPolicy"
        and d["metadata"]["name"].endswith("gateway-rotate-only")
    ]
    assert isinstance(policy, dict)
    return policy


def test_the_policy_admits_the_form_the_gateway_writes_and_nothing_looser() -> None:
    policy = _policy()
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["apikeys"]
    marks = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "mark"]
    assert marks == [f"'{ROTATE_ANNOTATION}'"]
    first = policy["spec"]["validations"][0]["expression"]
    (pattern,) = re.findall(r"\.matches\(\s*'([^']+)'\)", first)
    for moment in (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime.now(UTC)):
        assert re.fullmatch(pattern, rotation_request(moment, role=True))
        # the form a user's own `secure-keys rotate` writes, which the controller does
        # not space by the grace period, is not the gateway's to write
        assert not re.fullmatch(pattern, rotation_request(moment))
    for other in ("now please", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z-abc-role"):
        assert not re.fullmatch(pattern, other), other


def test_the_pending_refusal_says_what_the_gateway_looks_for() -> None:
    messages = [v["message"] for v in _policy()["spec"]["validations"]]
    pending = [m for m in messages if POLICY_PENDING in m]
    assert len(pending) == 1
    assert "Pending" in _policy()["spec"]["validations"][1]["expression"]
