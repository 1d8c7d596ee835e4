"""The gateway's rollout policy (deploy/gateway-self-policy.yaml, "rollout-only") names
every status field of the ApiKey CRD except the two the gateway writes: a field added to
status later is protected only if it is added to the policy too."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def test_the_policy_keeps_every_controller_status_field_out_of_the_gateways_reach() -> None:
    (crd,) = list(yaml.safe_load_all((REPO / "crds/apikeys.securekeys.io.yaml").read_text()))
    (version,) = crd["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    policies = [
        d
        for d in yaml.safe_load_all((REPO / "deploy/gateway-self-policy.yaml").read_text())
        if d
        and d["kind"] == "ValidatingAdmissionPolicy"
        and d["metadata"]["name"].endswith("gateway-rollout-only")
    ]
    (policy,) = policies
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["apikeys/status"]
    (validation,) = policy["spec"]["validations"]
    guarded = set(re.findall(r"object\.\?status\.\?(\w+) == oldObject", validation["expression"]))
    assert guarded == set(status) - {"rollout", "conditions"}
    assert "c.type != 'RolledOut'" in validation["expression"]
