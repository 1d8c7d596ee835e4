"""The Helm chart ``charts/secure-keys``, through the real helm (``scripts/build-helm.sh``).

Specified here: the files generated from the chart or for it are what the chart makes
(``deploy/``, the CRD templates from ``crds/``, the README's values table); ``helm lint
--strict`` passes; the helm-unittest suites in ``charts/secure-keys/tests`` pass (each
value's effect); the schema refuses unknown values and wrong types naming the value;
every object carries the standard labels; and each alert and dashboard expression names
only metrics, and labels, that the code exports.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from secure_keys.controller import metrics as controller_metrics
from secure_keys.gateway import metrics as gateway_metrics
from secure_keys.gateway.access.mfa import MFA_SECRET_TYPE
from secure_keys.gateway.certs import GATEWAY_CERTS_TYPE
from secure_keys.kube.blobformat import BLOB_SECRET_TYPE
from secure_keys.kube.keysformat import CONTROLLER_KEYS_TYPE
from secure_keys_dev import chart

HELM = chart.helm_binary()
UNITTEST = HELM.with_name("helm-unittest")
pytestmark = pytest.mark.skipif(
    not HELM.exists(), reason=f"{HELM} is not built (make helm, scripts/build-helm.sh)"
)
ALL_ON = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
    "networkPolicy.enabled=true",
)


def rendered(*values: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(chart.helm_template(values=values)) if d]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own helm
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_the_crd_templates_are_the_canonical_crds() -> None:
    expected = chart.crd_templates()
    assert expected, "no CRDs found in crds/"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path} differs: python -m secure_keys_dev.chart"


def test_a_rendered_crd_is_the_canonical_one_plus_labels_and_keep() -> None:
    canonical = {
        d["metadata"]["name"]: d
        for path in sorted(chart.CRDS.glob("*.yaml"))
        for d in [yaml.safe_load(path.read_text())]
    }
    crds = {d["metadata"]["name"]: d for d in rendered() if d["kind"] == "CustomResourceDefinition"}
    assert crds.keys() == canonical.keys()
    for name, crd in crds.items():
        assert crd["spec"] == canonical[name]["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_deploy_is_rendered_from_the_chart() -> None:
    for path, text in chart.deploy_files().items():
        assert path.read_text() == text, f"{path} differs: python -m secure_keys_dev.chart"
    assert {p.name for p in chart.DEPLOY.glob("*.yaml")} == set(chart.DEPLOYED)


def test_every_value_is_documented_and_the_readme_table_lists_them() -> None:
    values = (chart.CHART / "values.yaml").read_text()
    assert chart.undocumented(values) == []
    readme = chart.README.read_text()
    assert chart.readme_with_table(readme, values) == readme, "python -m secure_keys_dev.chart"


def test_app_version_is_the_package_version() -> None:
    project = tomllib.loads((chart.REPO / "pyproject.toml").read_text())["project"]
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert meta["appVersion"] == project["version"]


def test_helm_lint_strict_passes() -> None:
    result = helm("lint", "--strict", str(chart.CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    result = helm("lint", "--strict", str(chart.CHART), *[f"--set={v}" for v in ALL_ON])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not UNITTEST.exists(), reason=f"{UNITTEST} is not built")
def test_the_template_suites_pass() -> None:
    result = subprocess.run(  # noqa: S603 - our own helm-unittest
        [str(UNITTEST), "--color=false", str(chart.CHART)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Tests:\s+\d+ passed", result.stdout), result.stdout[-2000:]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("gateway.replicas=two", "replicas"),
        ("gateway.replicaCount=2", "replicaCount"),
        ("kms.provider=vault", "provider"),
        ("webhook.failurePolicy=Maybe", "failurePolicy"),
        ("image.digest=latest", "digest"),
        ("bogus=1", "bogus"),
    ],
)
def test_the_schema_refuses_a_bad_value_naming_it(value: str, named: str) -> None:
    result = helm("template", "x", str(chart.CHART), "--set", value)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


def test_every_object_carries_the_standard_labels() -> None:
    for doc in rendered(*ALL_ON):
        labels = doc["metadata"].get("labels") or {}
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "secure-keys", where
        assert labels.get("app.kubernetes.io/instance") == chart.RELEASE, where
        assert labels.get("app.kubernetes.io/version"), where
        if doc["kind"] != "CustomResourceDefinition":
            assert labels.get("app.kubernetes.io/component"), where


def _exported() -> dict[str, set[str]]:
    """Every sample name the code exports, with the label names it carries."""
    names: dict[str, set[str]] = {}
    for module in (controller_metrics, gateway_metrics):
        registry: CollectorRegistry = module.REGISTRY
        assert registry is not None
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            base, kind = metric._name, str(metric._type)
            labels = set(metric._labelnames)
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",),
            }[kind]
            for suffix in suffixes:
                names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


_SELECTOR = re.compile(r"(securekeys_[a-z_]+)(\{[^}]*\})?")


def _check(expr: str, exported: dict[str, set[str]]) -> None:
    found = _SELECTOR.findall(expr)
    assert found, f"no securekeys metric in {expr!r}"
    for name, matchers in found:
        assert name in exported, f"{name} is not exported by the code ({expr!r})"
        for label in re.findall(r"([a-z_]+)\s*=~?", matchers):
            if label != "job":
                assert label in exported[name], f"{name} has no label {label!r}"
    for label in re.findall(r"by \(([a-z_, ]+)\)", expr):
        for part in label.split(","):
            assert any(part.strip() in exported[n] for n, _ in found), f"{part} in {expr!r}"


def test_each_alert_names_metrics_and_labels_the_code_exports() -> None:
    exported = _exported()
    rules = [
        rule
        for doc in rendered("metrics.prometheusRule.enabled=true")
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    alerts = {rule["alert"] for rule in rules}
    assert {
        "SecureKeysKmsUnavailable",
        "SecureKeysApiKeysNotReady",
        "SecureKeysRotationOverdue",
        "SecureKeysWebhookFailing",
        "SecureKeysWebhookRefusing",
        "SecureKeysGatewayReplicaDown",
    } <= alerts
    for rule in rules:
        _check(rule["expr"], exported)


def test_each_dashboard_panel_names_metrics_and_labels_the_code_exports() -> None:
    import json

    exported = _exported()
    dashboard = json.loads((chart.CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 6
    for expr in exprs:
        _check(expr, exported)


def test_the_user_roles_grant_no_plaintext_path_and_aggregate_where_they_fit() -> None:
    roles = {
        d["metadata"]["name"].removeprefix("secure-keys-"): d
        for d in rendered()
        if d["kind"] == "ClusterRole"
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "rbac"
    }
    assert set(roles) == {"key-admin", "key-developer", "key-ci", "key-viewer"}
    for role in roles.values():
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["securekeys.io"], role["metadata"]["name"]
    labels = {n: r["metadata"]["labels"] for n, r in roles.items()}
    assert labels["key-admin"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert labels["key-developer"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["key-viewer"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert not any(k.startswith("rbac.authorization.k8s.io/") for k in labels["key-ci"])


def test_every_authenticated_identity_may_only_dry_run_create_key_access_reviews() -> None:
    """The reader's one Kubernetes permission (the KeyRole is the gate), and the policy
    that keeps a KeyAccessReview from ever being stored."""
    documents = {(d["kind"], d["metadata"]["name"]): d for d in rendered()}
    role = documents["ClusterRole", "secure-keys-key-reader"]
    assert role["rules"] == [
        {"apiGroups": ["securekeys.io"], "resources": ["keyaccessreviews"], "verbs": ["create"]}
    ]
    binding = documents["ClusterRoleBinding", "secure-keys-key-reader"]
    assert [s["name"] for s in binding["subjects"]] == ["system:authenticated"]
    policy = documents["ValidatingAdmissionPolicy", "secure-keys-access-reviews-dry-run"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert [v["expression"] for v in policy["spec"]["validations"]] == ["request.dryRun == true"]
    webhook = documents["MutatingWebhookConfiguration", "secure-keys-gateway"]
    access = next(w for w in webhook["webhooks"] if w["name"] == "access.securekeys.io")
    assert access["failurePolicy"] == "Fail"
    assert access["clientConfig"]["service"]["path"] == "/v1/access"
    assert access["rules"][0]["resources"] == ["keyaccessreviews"]


def test_the_local_kms_secret_is_kept_and_made_once() -> None:
    secrets = [d for d in rendered() if d["kind"] == "Secret"]
    secrets = [s for s in secrets if s["metadata"]["name"] != "secure-keys-gateway-tls"]
    assert [s["metadata"]["name"] for s in secrets] == ["secure-keys-kms-local"]
    assert secrets[0]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert set(secrets[0]["data"]) == {"password", "salt", "created"}
    template = (chart.CHART / "templates" / "kms-local-secret.yaml").read_text()
    assert "lookup" in template  # an upgrade keeps what the install made


def test_the_gateway_tls_secret_is_the_charts_empty_kept_and_of_the_gateways_type() -> None:
    """The gateway creates no certificates Secret (its only `create` on Secrets is the
    namespaced one for MFA enrolments, in gateway-access-rbac.yaml): the chart makes its
    certificates Secret, with no data (an upgrade never touches what the gateway wrote)."""
    (tls,) = [
        d
        for d in rendered()
        if d["kind"] == "Secret" and d["metadata"]["name"] == "secure-keys-gateway-tls"
    ]
    assert tls["type"] == GATEWAY_CERTS_TYPE
    assert "data" not in tls
    assert "stringData" not in tls
    assert tls["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for document in rendered():
        if (
            document["kind"] in ("Role", "ClusterRole")
            and "gateway" in document["metadata"]["name"]
        ):
            for rule in document["rules"]:
                if "secrets" in rule["resources"] and "create" in rule["verbs"]:
                    assert document["kind"] == "Role", document["metadata"]["name"]
                    assert document["metadata"]["name"] == "secure-keys-gateway-access"


def test_the_secret_types_policy_admits_exactly_the_project_types() -> None:
    (policy,) = [
        d
        for d in rendered()
        if d["kind"] == "ValidatingAdmissionPolicy"
        and d["metadata"]["name"] == "secure-keys-secret-types"
    ]
    expression = policy["spec"]["validations"][0]["expression"]
    admitted = set(re.findall(r"'([^']+)'", expression.partition(" in ")[2]))
    assert admitted == {BLOB_SECRET_TYPE, CONTROLLER_KEYS_TYPE, GATEWAY_CERTS_TYPE, MFA_SECRET_TYPE}
    gateway_only = policy["spec"]["validations"][1]["expression"]
    assert "secure-keys-gateway" in gateway_only
    assert set(re.findall(r"'(securekeys\.io/[^']+)'", gateway_only)) == {
        GATEWAY_CERTS_TYPE,
        MFA_SECRET_TYPE,
    }


def test_the_helm_pin_is_v4() -> None:
    gomod = Path(chart.REPO / "tools" / "helm" / "go.mod").read_text()
    assert re.search(r"helm\.sh/helm/v4 v4\.3\.\d+", gomod)
